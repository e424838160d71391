"""Speed: EC2 Query requests handed to moto's ``EC2Response`` without the Flask app around it.

moto's server routes every request through a Flask app per service (``create_backend_app`` in
``moto/moto_server/werkzeug_app.py``): Flask pushes an app and a request context, matches the URL
map, builds its request object (in debug mode, with ``debughelpers`` wrapped around the form
parser), calls moto's view (``convert_to_flask_response``: ``normalize_request``, the request
recorder, then ``EC2Response.dispatch(request, request.raw_url, dict(request.headers))``), makes a
``flask.Response`` of the ``(status, headers, body)`` it returns, and runs its after-request
handlers (flask-cors). For EC2, a Query-protocol service whose every action is a form-encoded
``POST /`` (botocore's ``ec2`` model: ``"protocol": "ec2"``, ``requestUri": "/"``), the URL map
has one answer, and measured under ``scripts/bench-cleanup compare`` Flask's part was about a
fifth of the server's time per call (a boto3 loop of DescribeImageAttribute: 0.92-1.07 ms of
server CPU per call through Flask, 0.66-0.83 ms without).

``DirectDispatch`` serves exactly those requests the way the view does, minus Flask: the same
request class as moto's Flask app (moto's ``Request`` with ``from_wsgi_server``), the same
recorder call, the same ``EC2Response.dispatch`` with the same arguments (a botocore
``ClientError`` answered 400 with its message, as the view does), the same ``flask.Response``
built from its answer, plus the one header flask-cors adds to an answer when the request carries
no ``Origin`` (``Access-Control-Allow-Origin: *``, unless the answer has one: moto enables CORS
for every origin, and flask-cors' ``always_send`` sends the wildcard). Everything else goes to the
Flask app as before: other services, other methods or paths, a request with an ``Origin`` or an
``Access-Control-Request-Private-Network`` header (CORS headers that depend on the request), and
every request when moto's ``DISABLE_GLOBAL_CORS`` is set (the Flask path then adds no header).
Any other exception raised by moto propagates as it does through Flask in debug mode (the server
answers 500).

``tests/emulator/test_fast_paths.py`` runs one boto3 workload through a server with this path and
one without, and compares every answer (status, headers, body) with the random ids, dates and
accounts normalized. ``AMI_EMULATOR_DISPATCH=flask`` (``--dispatch flask``) serves every request
through Flask, for comparison.
"""

from __future__ import annotations

import re
from typing import Any

from botocore.exceptions import ClientError
from moto.core.request import Request
from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.sansio.utils import get_current_url
from werkzeug.utils import cached_property

from . import fast_lane

CORS_HEADER = ("Access-Control-Allow-Origin", "*")


# (scheme, host, root path) -> werkzeug's root URL for them. Host names are a few per service
# and region; the bound keeps a flood of odd Host headers from growing it without end.
_ROOT_URLS: dict[tuple[str, str, str], str] = {}
ROOT_URLS_KEPT = 4096


class DirectRequest(Request):
    """moto's request class as its Flask app sets it (``BackendRequest``), minus Flask's mixin.

    Speed: ``root_url`` (which moto's ``raw_url`` reads for every request, through
    ``url_root``) is werkzeug's ``get_current_url(scheme, host, root_path)``, a pure function
    of its three arguments that quotes and then un-quotes them (``uri_to_iri``); its answer is
    kept per argument triple. ``host`` is still werkzeug's own (its ``trusted_hosts`` check
    runs for every request)."""

    from_wsgi_server = True

    @cached_property
    def root_url(self) -> str:
        key = (self.scheme, self.host, self.root_path)
        url = _ROOT_URLS.get(key)
        if url is None:
            url = get_current_url(*key)
            if len(_ROOT_URLS) < ROOT_URLS_KEPT:
                _ROOT_URLS[key] = url
        return url


def _direct(environ: dict[str, Any]) -> bool:
    """A form POST to ``/`` whose CORS headers do not depend on the request: no ``Origin``, and
    no private-network access request (flask-cors answers that one with a header of its own)."""
    return (
        environ.get("REQUEST_METHOD") == "POST"
        and environ.get("PATH_INFO") == "/"
        and "HTTP_ORIGIN" not in environ
        and "HTTP_ACCESS_CONTROL_REQUEST_PRIVATE_NETWORK" not in environ
    )


# Headers whose presence changes what werkzeug's Response sends (its own Content-Length, the
# Location fix-ups of ``get_wsgi_headers``) or how the body is framed.
_SHAPING_HEADERS = frozenset(("content-length", "location", "content-location", "transfer-encoding"))
_NEWLINE = re.compile(r"[\r\n]")


def plain_answer(status: Any, headers: Any, content: Any) -> tuple[str, list[tuple[str, str]], bytes] | None:
    """Speed: what ``flask.Response(response=content, status=status, headers=headers)`` plus the
    CORS header sends to ``start_response`` and as its body, for the plain answers moto's EC2
    handler gives — or None, and the Response object makes it.

    Plain means: a status code werkzeug names, from 200 to 599 but 204 and 304 (no body rules),
    a str or bytes body, and a dict of str names and values without a newline (werkzeug refuses
    those) and without a header that shapes the answer (``_SHAPING_HEADERS``). werkzeug then sends
    the status as ``"<code> <NAME IN CAPITALS>"`` and the headers in the dict's order (moto's EC2
    answers carry ``Content-Type: text/xml``), then ``Content-Type: text/html; charset=utf-8``
    (Flask's default mimetype) only when the dict has no Content-Type, then ``Content-Length``
    of the UTF-8 body, then the CORS header unless one is set and non-empty
    (``DirectDispatch``); the body is the one encoded item. ``tests/emulator/test_fast_paths.py``
    compares this with the Response path for both plain and other answers."""
    if type(status) is not int or not 200 <= status < 600 or status in (204, 304) or status not in HTTP_STATUS_CODES:
        return None
    if type(content) is str:
        data = content.encode()
    elif type(content) is bytes:
        data = content
    else:
        return None
    if type(headers) is not dict:
        return None
    cors = True
    typed = False
    for name, value in headers.items():
        if type(name) is not str or type(value) is not str or _NEWLINE.search(value):
            return None
        lower = name.lower()
        if lower in _SHAPING_HEADERS:
            return None
        if lower == "content-type":
            typed = True
        elif lower == "access-control-allow-origin" and value:
            cors = False
    header_list = list(headers.items())
    if not typed:
        header_list.append(("Content-Type", "text/html; charset=utf-8"))
    header_list.append(("Content-Length", str(len(data))))
    if cors:
        header_list.append(CORS_HEADER)
    return f"{status} {HTTP_STATUS_CODES[status].upper()}", header_list, data


class DirectDispatch:
    """WSGI app: ``dispatcher`` (moto's ``DomainDispatcherApplication``) with EC2's Query
    requests served without Flask."""

    def __init__(self, dispatcher: Any, lane: bool | None = None) -> None:
        from flask import Response
        from moto.ec2.responses import EC2Response
        from moto.moto_server.werkzeug_app import DISABLE_GLOBAL_CORS

        self.dispatcher = dispatcher
        self._ec2 = EC2Response
        self._response = Response
        self._cors = not DISABLE_GLOBAL_CORS
        # The per-image calls of a cleanup set up and answered by ``fast_lane`` (default: on
        # unless AMI_EMULATOR_LANE=off).
        self._lane = fast_lane.enabled() if lane is None else lane

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        app = self.dispatcher.get_application(environ)
        if not self._cors or getattr(app, "service", None) != "ec2" or not _direct(environ):
            return app(environ, start_response)
        from moto.moto_api import recorder

        request = DirectRequest(environ)
        recorder._record_request(request)
        try:
            lane = fast_lane.set_up(self._ec2, request, environ, request.raw_url) if self._lane else None
            if lane is not None:
                result = lane.call_action()
            else:
                # dict(request.headers.items()) is the view's dict(request.headers): each header
                # is yielded once (one environ key each), with the value a lookup by its name
                # gives; without the second pass of a lookup per name.
                result = self._ec2.dispatch(request, request.raw_url, dict(request.headers.items()))
        except ClientError as exc:  # as convert_to_flask_response answers it
            result = 400, {}, exc.response["Error"]["Message"]
        if len(result) == 3:
            status, headers, content = result
        else:
            status, headers, content = 200, {}, result
        plain = plain_answer(status, headers, content)
        if plain is not None:
            status_line, header_list, data = plain
            start_response(status_line, header_list)
            return [data]
        response = self._response(response=content, status=status, headers=headers)
        if not response.headers.get(CORS_HEADER[0]):  # flask-cors leaves one already set
            response.headers.add(*CORS_HEADER)
        return response(environ, start_response)
