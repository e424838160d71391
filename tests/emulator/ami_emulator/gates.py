"""The chain of checks every AWS API request passes before moto sees it ("gates").

``faults.FaultMiddleware`` attributes each request (account, service, action, region, caller) and
then asks the gates, in a fixed order, whether one of them answers it instead of moto:

  1. ``rate_limits``  EC2 request throttling (``RequestLimitExceeded``), opt-in per account
  2. ``api_rules``    parameter rules of the AWS API reference that moto does not enforce
  3. ``iam``          the caller's IAM policies (``UnauthorizedOperation`` / ``AccessDenied``)
  4. ``faults``       injected faults (``ami_emulator.faults``)

The order is AWS's as far as it is observable: a throttled request is refused before it is
looked at; a malformed request is refused whatever the caller may do; authorization comes
before the operation runs. A gate is ``fn(ctx) -> Response | None``; the first non-None answer
is sent and the request never reaches moto (no side effect) -- unless the answer is marked with
``after_moto``: then the middleware lets moto serve the request first (its side effect happens),
drops moto's answer and sends the gate's (``faults`` rules with ``after: true``; see
``served_first``). Modules register their gate with
``register(name, fn)`` when they are installed; unknown names are refused so the order stays
explicit here.

Control endpoints and reset hooks are registered the same way, in ``control``.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import parse_qs

from werkzeug.wrappers import Request, Response
from werkzeug.wsgi import get_input_stream

ORDER = ("rate_limits", "api_rules", "iam", "faults")

_LOCK = threading.Lock()
_GATES: dict[str, Callable[["RequestContext"], Response | None]] = {}

_SCOPE = re.compile(r"Credential=([^/,\s]+)/\d{8}/([a-z0-9-]+)/([a-z0-9-]+)/aws4_request")


@dataclass
class RequestContext:
    """One AWS API request as the gates see it. ``body()`` buffers the request body once and
    puts it back for moto; ``params()`` is the flat query/form parameter map of query-protocol
    requests (EC2, SNS, STS, IAM): ``{"TagSpecification.1.ResourceType": ["image"], ...}``."""

    environ: dict[str, Any]
    account: str
    service: str | None
    action: str | None
    _body: bytes | None = None
    _params: dict[str, list[str]] | None = field(default=None, repr=False)

    @property
    def method(self) -> str:
        return str(self.environ.get("REQUEST_METHOD", "GET")).upper()

    @property
    def region(self) -> str:
        """The SigV4 credential scope's region, else moto's default us-east-1."""
        match = _SCOPE.search(self.environ.get("HTTP_AUTHORIZATION", "") or "")
        return match.group(2) if match else "us-east-1"

    @property
    def access_key(self) -> str | None:
        match = _SCOPE.search(self.environ.get("HTTP_AUTHORIZATION", "") or "")
        if match:
            return match.group(1)
        query_key = parse_qs(self.environ.get("QUERY_STRING", "")).get("AWSAccessKeyId")
        return query_key[0] if query_key else None

    @property
    def principal_arn(self) -> str | None:
        """The role ARN behind the access key (STS AssumeRole keys), or None for plain keys."""
        key = self.access_key
        if not key:
            return None
        from moto.iam.models import iam_backends
        from moto.utilities.utils import PARTITION_NAMES

        try:
            account = iam_backends[self.account]
        except KeyError:
            return None
        for partition in PARTITION_NAMES:
            entry = account[partition].access_keys.get(key)
            if entry is not None:
                return getattr(entry, "role_arn", None)
        return None

    def body(self) -> bytes:
        if self._body is None:
            import io

            data = read_body(self.environ)
            self.environ["wsgi.input"] = io.BytesIO(data)
            self._body = data
        return self._body

    def params(self) -> dict[str, list[str]]:
        if self._params is None:
            merged = parse_qs(self.environ.get("QUERY_STRING", ""), keep_blank_values=True)
            content_type = str(self.environ.get("CONTENT_TYPE", ""))
            if self.method == "POST" and "x-www-form-urlencoded" in content_type:
                for key, values in parse_qs(self.body().decode("utf-8", "replace"), keep_blank_values=True).items():
                    merged.setdefault(key, []).extend(values)
            self._params = merged
        return self._params

    def param(self, name: str) -> str | None:
        values = self.params().get(name)
        return values[0] if values else None


def read_body(environ: dict[str, Any]) -> bytes:
    """The request body, read as ``werkzeug.Request(environ).get_data(cache=False,
    parse_form_data=False)`` reads it (``Request.stream``: ``get_input_stream`` with the class's
    ``max_content_length``), without making the request object."""
    return get_input_stream(environ, max_content_length=Request.max_content_length).read()


# Attribute on a gate's Response: moto serves the request first, then this answer replaces moto's.
_SERVE_FIRST_ATTR = "ami_emulator_serve_first"


def after_moto(response: Response) -> Response:
    """Mark a gate's answer as one sent *after* moto served the request (the request takes
    effect, moto's answer is dropped, this one is sent instead)."""
    setattr(response, _SERVE_FIRST_ATTR, True)
    return response


def served_first(response: Response) -> bool:
    """Whether the middleware must let moto serve the request before sending ``response``."""
    return bool(getattr(response, _SERVE_FIRST_ATTR, False))


def register(name: str, gate: Callable[[RequestContext], Response | None]) -> None:
    if name not in ORDER:
        raise ValueError(f"unknown gate {name!r}; the order is fixed in gates.ORDER: {ORDER}")
    with _LOCK:
        _GATES[name] = gate


def run(ctx: RequestContext) -> Response | None:
    """The first gate's answer in ``ORDER``, or None to let moto serve the request."""
    for name in ORDER:
        gate = _GATES.get(name)
        if gate is None:
            continue
        answer = gate(ctx)
        if answer is not None:
            return answer
    return None
