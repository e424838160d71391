"""Speed: moto's per-request dispatch work that does not depend on the request.

Steps of moto 5.2.5's request path did work per request whose answer never changes while the
server runs (profiled in a cleanup benchmark: together about a sixth of the server's time):

* ``DomainDispatcherApplication.get_backend_for_host`` (``moto/moto_server/werkzeug_app.py``),
  called under the dispatcher's global lock for every request, lists moto's package directory
  (``backends.list_of_moto_modules``: ``os.listdir`` plus an ``isdir`` per entry) and then tries
  every service's URL pattern. Its answer depends on the host name alone (the directory and the
  patterns are fixed), so it is memoized per host here.
* ``BaseResponse._enrich_response`` runs a regular expression over every answer's whole body to
  put the request id between ``<RequestId>`` and ``</RequestId>``; EC2's answers spell it
  ``<requestId>``, so for them (a DescribeImages of thousands of images included) it scanned the
  body for nothing. It is now skipped when the body has no ``<RequestId>`` at all, the one case
  where the expression cannot match (``request_id_in_body``).
* ``MotoRandom.get_random_string`` (every request id, 52 characters, and many resource ids)
  drew one ``choice`` per character; ``random_string`` draws them with one ``choices`` call from
  the same generator (seeded ids stay reproducible) and the same pool.
* ``BaseResponse.call_action`` (``moto/core/responses.py``) asks whether the action is a method
  of the response class with ``action in method_names_from_class(cls)``, which builds the list of
  every function member of the class (``inspect.getmembers``: hundreds of ``getattr`` calls for
  ``EC2Response``). ``method_names_from_class`` here returns a view that answers ``in`` for one
  name the way membership in that list is decided — ``inspect.isfunction(getattr(cls, name))`` —
  and still iterates as the list, so any other use sees the same names.
* ``BaseResponse.call_action`` turns the action's name into the method's with
  ``camelcase_to_underscores`` (``moto/core/utils.py``), a character-by-character loop and a
  pure function of its argument; ``snake_case`` keeps its answers per name (action names are
  a few hundred per service).
* ``BaseResponse.get_current_account`` looks the request's access key up in every account's
  IAM backend (``get_account_id_from``) after the emulator's own attribution did the same for
  the same request; the second lookup takes the first one's answer
  (``faults.account_lookup_kept_per_request``).
* ``BackendDict.__getitem__`` (``moto/core/base_backend.py``), the lookup of a service's
  backend for an account (several per request: the handler, the IAM gate, moto's IAM visit
  record), takes moto's global backend lock, builds a list of every account's id and scans the
  list of every BackendDict in use, comparing with ``__eq__``, on every call, to create the
  account's backend the first time and register the dict for ``reset``. Once that call has
  returned for a dict and the account is in it, both are done; ``backends_kept`` answers the
  next lookups from the dict itself until moto's ``reset`` forgets them
  (``BackendDict.reset`` clears every registered dict and the list).
"""

from __future__ import annotations

import functools
import inspect
import string
import threading
from typing import Any, Callable, Iterator

# Host names are a few per service and region; a bound keeps a flood of odd Host headers from
# growing the memo without end.
HOSTS_KEPT = 4096


class FunctionNames:
    """The names of a class's function members, as ``method_names_from_class`` lists them,
    with an O(1) ``in``."""

    def __init__(self, clazz: Any) -> None:
        self._clazz = clazz

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        try:
            member = getattr(self._clazz, name)
        except AttributeError:
            return False
        return inspect.isfunction(member)

    def _names(self) -> list[str]:
        return [name for name, _ in inspect.getmembers(self._clazz, predicate=inspect.isfunction)]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())


def method_names_from_class(clazz: Any) -> FunctionNames:
    return FunctionNames(clazz)


def request_id_in_body(original: Callable[[dict[str, str], Any], tuple[dict[str, str], Any]]) -> Callable[[dict[str, str], Any], tuple[dict[str, str], Any]]:
    """``_enrich_response`` that leaves a text body without ``<RequestId>`` as it is, with the
    request id still made and put in the headers (the expression needs that tag to match)."""

    @functools.wraps(original)
    def enrich(headers: dict[str, str], body: Any) -> tuple[dict[str, str], Any]:
        if isinstance(body, str) and "<RequestId>" not in body:
            from moto.core import responses

            if "status" in headers:
                headers["status"] = str(headers["status"])
            responses.gen_amzn_requestid_long(headers)
            return headers, body
        return original(headers, body)

    return enrich


def random_string(self: Any, length: int = 20, include_digits: bool = True, lower_case: bool = False) -> str:
    """``MotoRandom.get_random_string``: ``length`` characters drawn uniformly from ASCII letters
    (and digits), from the same seeded generator, with one call."""
    pool = string.ascii_letters + string.digits if include_digits else string.ascii_letters
    text = "".join(self.choices(pool, k=length))
    return text.lower() if lower_case else text


def _memoize_backend_for_host(original: Callable[[Any, str | None], Any]) -> Callable[[Any, str | None], Any]:
    memo: dict[str | None, Any] = {}
    lock = threading.Lock()

    @functools.wraps(original)
    def get_backend_for_host(self: Any, host: str | None) -> Any:
        try:
            return memo[host]
        except KeyError:
            pass
        backend = original(self, host)
        with lock:
            if len(memo) < HOSTS_KEPT:
                memo[host] = backend
        return backend

    return get_backend_for_host


# Set on a BackendDict once moto's own __getitem__ has returned for it: the dict is then in
# BackendDict._instances (only BackendDict.reset takes it out, and the wrapped reset clears this
# mark first).
_REGISTERED = "_ami_emulator_registered"


def backends_kept(backend_dict: Any) -> None:
    """Installs on moto's ``BackendDict`` class the account lookup that skips moto's creation
    and registration steps once both are done (see the module docstring)."""
    from moto.core.base_backend import backend_lock

    original_getitem = backend_dict.__getitem__
    original_reset = backend_dict.reset.__func__

    def __getitem__(self: Any, account_id: str) -> Any:
        if self.__dict__.get(_REGISTERED):
            try:
                return dict.__getitem__(self, account_id)
            except KeyError:
                pass
        answer = original_getitem(self, account_id)
        self.__dict__[_REGISTERED] = True
        return answer

    def reset(cls: Any) -> None:
        with backend_lock:
            for registered in list(backend_dict._instances):
                registered.__dict__.pop(_REGISTERED, None)
            original_reset(cls)

    functools.update_wrapper(__getitem__, original_getitem)
    functools.update_wrapper(reset, original_reset)
    backend_dict.__getitem__ = __getitem__
    backend_dict.reset = classmethod(reset)


_installed = False


# Names converted by ``snake_case``: action names are a few hundred per service; the bound only
# guards against a client that sends endless made-up actions.
NAMES_KEPT = 8192


def snake_case(convert: Callable[[str], str]) -> Callable[[str], str]:
    """``convert`` (moto's ``camelcase_to_underscores``) with its answer kept per string."""
    kept: dict[str, str] = {}

    @functools.wraps(convert)
    def converted(argument: str) -> str:
        if type(argument) is not str:
            return convert(argument)
        answer = kept.get(argument)
        if answer is None:
            answer = convert(argument)
            if len(kept) < NAMES_KEPT:
                kept[argument] = answer
        return answer

    return converted


def install() -> None:
    global _installed
    if _installed:
        return
    import moto.core.responses as responses
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication

    from moto.moto_api._internal.moto_random import MotoRandom

    responses.method_names_from_class = method_names_from_class  # type: ignore[assignment]
    responses.camelcase_to_underscores = snake_case(responses.camelcase_to_underscores)  # type: ignore[assignment]
    import moto.iam.models as iam_models

    from .faults import account_lookup_kept_per_request

    iam_models.get_account_id_from = account_lookup_kept_per_request(iam_models.get_account_id_from)  # type: ignore[assignment]
    responses.BaseResponse._enrich_response = staticmethod(  # type: ignore[method-assign]
        request_id_in_body(responses.BaseResponse._enrich_response)
    )
    MotoRandom.get_random_string = random_string  # type: ignore[method-assign]
    from moto.core.base_backend import BackendDict

    backends_kept(BackendDict)
    DomainDispatcherApplication.get_backend_for_host = _memoize_backend_for_host(  # type: ignore[method-assign]
        DomainDispatcherApplication.get_backend_for_host
    )
    _installed = True
