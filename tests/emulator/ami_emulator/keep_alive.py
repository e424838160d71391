"""HTTP/1.1 persistent connections for the emulator's server, as AWS endpoints keep them.

werkzeug's development server (the one ``moto.server`` runs, and ``__main__`` after it) answers
every request with ``Connection: close`` (``werkzeug/serving.py``, ``run_wsgi``: "Always close the
connection. This disables HTTP/1.1 keep-alive connections. They aren't handled well by Python's
http.server because it doesn't know how to drain the stream before the next request line."), and
then waits on the socket for up to 10 ms to discard any unread body. So every request of every
client costs a TCP connection, a new server thread and that drain, which AWS does not impose: its
endpoints keep connections open (HTTP/1.1 persistent connections, RFC 9112 section 9.3) and the
SDKs pool them (botocore's urllib3 pool; the Rust SDK's hyper pool). In a benchmark that makes
ten thousand calls, that per-request cost is the emulator's, not the client's.

``KeepAliveRequestHandler`` serves a request the way werkzeug's ``run_wsgi`` does (the same WSGI
environ, from moto's ``MotoRequestHandler.make_environ``; ``100 Continue``; chunked responses when
the app gives no length; a 500 when the app fails before answering) but keeps the connection
open. The one problem werkzeug names is solved by framing the request body itself: the app reads
it through a ``LimitedStream`` of exactly ``Content-Length`` bytes (or werkzeug's
``DechunkedInput`` for ``Transfer-Encoding: chunked``), and whatever the app left unread is read
to its end before the next request line is parsed, so the next request starts exactly where this
one's body ends. Answers to HEAD, 1xx, 204 and 304 carry no body whatever the app yields. The
connection is closed, as HTTP/1.1 says, when the client asks for it (``Connection: close``, or
HTTP/1.0 without keep-alive: ``BaseHTTPRequestHandler.parse_request``), when the app's answer says
so, when an answer has no length and the client speaks HTTP/1.0, when the body sent does not match
the app's ``Content-Length``, when the request's framing is invalid (400: a malformed or repeated
``Content-Length``, or both headers; 501: a transfer coding other than ``chunked`` alone; RFC 9112
section 6.3), and after any failure mid-response; what the client already sent is read for ~10 ms
first, as werkzeug did, so the close does not reset the connection under the answer.

The requests SDKs send (an origin-form target, HTTP/1.1, a plain header block framed by at most
one ``Content-Length``) are parsed without http.server's general header handling and given
their environ directly, exactly as http.server, werkzeug and moto would
(``KeepAliveRequestHandler.parse_request``); any other request takes their code.

``python -m ami_emulator --connection close`` serves as werkzeug does, for comparison, and
``--plain-requests off`` parses every request with http.server's and werkzeug's code.
"""

from __future__ import annotations

import http.client
import re
import socket
import sys
import time
import traceback
from typing import Any, Callable, Iterable

from moto.core.request import PRESERVED_HEADER_NAMES_ENVIRON_KEY
from moto.moto_server.werkzeug_app import MotoRequestHandler
from werkzeug.exceptions import InternalServerError
from werkzeug.wsgi import LimitedStream

from . import fast_http, request_counts

# Unread request body drained at most: beyond this the connection is closed instead (a client
# that sent a large body the app refused early gets the answer, then a closed connection).
MAX_DRAIN_BYTES = 64 * 1024 * 1024

# An idle persistent connection is closed after this long (a thread per open connection).
IDLE_TIMEOUT_SECONDS = 300


# The Date header's text for the current second (one entry).
_dates: dict[int, str] = {}

# A request line the plain path takes (see ``KeepAliveRequestHandler.parse_request``): a method
# token, an origin-form target of visible US-ASCII without a percent-escape, a fragment or a
# leading "//" (so urlsplit, unquote and werkzeug's encoding dance all leave it as it is), and
# HTTP/1.1, ending in CRLF.
_PLAIN_REQUEST_LINE = re.compile(rb'([A-Z]+) (/(?!/)[!"$&-~]*) HTTP/1\.1\r\n')

# Header fields that take a request off the plain path: each changes what http.server, werkzeug
# or the framing below does with the request (100 Continue, the body's framing).
_NOT_PLAIN_FIELDS = frozenset(("expect", "transfer-encoding"))


class _FramingError(Exception):
    """The request's body framing cannot be trusted: answer ``status`` and close."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def errors_only(handler: type[Any]) -> type[Any]:
    """``handler`` with werkzeug's access log line (``"POST / HTTP/1.1" 200 -``) written only for
    the requests not answered with success: 4xx, 5xx, and a request line that did not parse.
    Speed: the line for every request was 8 % of the emulator's CPU time under
    ``scripts/bench-cleanup compare`` (a py-spy profile: ``WSGIRequestHandler.log_request``), and
    says nothing a test reads (EC2 and the other Query services are all ``POST /``).
    ``--access-log all`` (``AMI_EMULATOR_ACCESS_LOG=all``) logs every request as werkzeug does."""

    class ErrorsOnly(handler):  # type: ignore[misc, valid-type]
        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            if not str(code).startswith(("1", "2", "3")):
                super().log_request(code, size)

    ErrorsOnly.__name__ = ErrorsOnly.__qualname__ = f"ErrorsOnly{handler.__name__}"
    return ErrorsOnly


class KeepAliveRequestHandler(MotoRequestHandler):
    """moto's request handler with HTTP/1.1 persistent connections (see the module docstring)."""

    protocol_version = "HTTP/1.1"
    timeout = IDLE_TIMEOUT_SECONDS
    # Plain requests are parsed and given their environ here (``parse_request``); False: every
    # request goes through http.server's and werkzeug's general code.
    plain_requests = True
    # This request's header fields when it took the plain path, else None.
    _plain: list[tuple[str, str]] | None = None
    # A buffered writer: a response's status line, headers and body leave in one send when
    # ``_Response.write`` flushes (http.server's default, 0, sends the headers and then each
    # body write separately: two system calls and two TCP segments for every answer).
    wbufsize = -1

    def setup(self) -> None:
        super().setup()
        # A body larger than the write buffer leaves in a second send; on a connection that
        # stays open, Nagle's algorithm would hold it back until the client's delayed ACK
        # (~40 ms per request). With one connection per request the close flushed it.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def handle_one_request(self) -> None:
        # The server CPU of each request, for its account's request counts (request_counts).
        request_counts.begin_request()
        start = time.thread_time()
        try:
            super().handle_one_request()
        finally:
            request_counts.end_request(time.thread_time() - start)

    def date_time_string(self, timestamp: float | None = None) -> str:
        # The Date header has a resolution of one second (RFC 9110 section 5.6.7): formatted
        # once per second, not once per answer (http.server formats it with email.utils).
        if timestamp is None:
            timestamp = time.time()
        second = int(timestamp)
        kept = _dates.get(second)
        if kept is None:
            kept = super().date_time_string(second)
            _dates.clear()
            _dates[second] = kept
        return kept

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # http.server writes the error answer and leaves it to the caller; with the buffered
        # writer it must leave now, before any drain and close that follow it.
        super().send_error(code, message, explain)
        self.wfile.flush()

    def handle_expect_100(self) -> bool:
        # The interim answer must leave now: the client holds its body back until it arrives.
        answer = super().handle_expect_100()
        self.wfile.flush()
        return answer

    def parse_request(self) -> bool:
        """``BaseHTTPRequestHandler.parse_request``, with a plain path for the requests SDKs send.

        Speed: http.server's request-line checks, its ``HTTPMessage`` (every lookup goes through
        the email package's header policy) and werkzeug's and moto's ``make_environ`` over it
        made up much of this server's own cost per request: with an app that answers at once,
        0.14 ms of server CPU per request, 0.11 ms with this path; one boto3-signed
        DescribeImageAttribute after another, 0.54 ms each in all, 0.47 ms with it. A request whose line matches ``_PLAIN_REQUEST_LINE`` and whose header block is
        plain (``fast_http.plain_fields``: no folding, no defects, US-ASCII), at most
        ``http.client``'s line and header limits, with no underscore in a field name, no
        ``Expect`` or ``Transfer-Encoding`` and at most one all-digit ``Content-Length``, gets
        exactly what ``parse_request`` would set (command, path, version, request line, the
        same ``HTTPMessage``, ``close_connection`` from ``Connection``), and ``make_environ``
        builds its environ directly. Any other request is parsed by ``parse_request`` itself,
        the header lines already read handed back to it unchanged."""
        self._plain = None
        if not self.plain_requests or self.server.ssl_context is not None:
            return super().parse_request()
        line = _PLAIN_REQUEST_LINE.fullmatch(self.raw_requestline)
        if line is None:
            return super().parse_request()
        lines, complete = _header_lines(self.rfile)
        fields = fast_http.plain_fields(lines) if complete else None
        if fields is None or not _plain_fields(fields):
            real = self.rfile
            self.rfile = _Replay(lines, real)
            try:
                return super().parse_request()
            finally:
                self.rfile = real
        self.command = line.group(1).decode("ascii")
        self.path = line.group(2).decode("ascii")
        self.request_version = "HTTP/1.1"
        self.requestline = self.raw_requestline[:-2].decode("ascii")
        self.headers = fast_http.message_of(fields)
        connection = next((value for name, value in fields if name.lower() == "connection"), "")
        self.close_connection = connection.lower() == "close"
        self._plain = fields
        return True

    def make_environ(self) -> dict[str, Any]:
        if self._plain is not None:
            return self._plain_environ(self._plain)
        encodings = self.headers.get_all("Transfer-Encoding") or []
        lengths = self.headers.get_all("Content-Length") or []
        if encodings:
            # Only "chunked" alone is framed here (werkzeug's DechunkedInput reads exactly the
            # chunks); any other coding cannot be delimited, and a length beside it is refused.
            if [e.strip().lower() for e in ",".join(encodings).split(",")] != ["chunked"]:
                raise _FramingError(f"Transfer-Encoding {', '.join(encodings)!r}", 501)
            if lengths:
                raise _FramingError("both Content-Length and Transfer-Encoding")
        elif len(lengths) > 1:
            raise _FramingError(f"{len(lengths)} Content-Length headers")
        elif lengths and not lengths[0].strip().isdigit():
            raise _FramingError(f"Content-Length {lengths[0]!r}")
        environ = super().make_environ()
        if encodings:
            self._body = environ["wsgi.input"]
            return environ
        self._body = LimitedStream(self.rfile, int(lengths[0]) if lengths else 0)
        environ["wsgi.input"] = self._body
        return environ

    def _plain_environ(self, fields: list[tuple[str, str]]) -> dict[str, Any]:
        """The environ of a plain request (``parse_request``): werkzeug's
        ``WSGIRequestHandler.make_environ`` (for a target no step of it changes, no
        ``Transfer-Encoding`` and no TLS), moto's ``MotoRequestHandler.make_environ`` (no field
        name with an underscore: nothing to preserve) and the body framed by its
        ``Content-Length`` as ``make_environ`` above frames it."""
        if not self.client_address:
            self.client_address = ("<local>", 0)
        elif isinstance(self.client_address, str):
            self.client_address = (self.client_address, 0)
        path, _, query = self.path.partition("?")
        environ: dict[str, Any] = {
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": self.rfile,
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": self.server.multithread,
            "wsgi.multiprocess": self.server.multiprocess,
            "wsgi.run_once": False,
            "werkzeug.socket": self.connection,
            "SERVER_SOFTWARE": self.server_version,
            "REQUEST_METHOD": self.command,
            "SCRIPT_NAME": "",
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "REQUEST_URI": self.path,
            "RAW_URI": self.path,
            "REMOTE_ADDR": self.address_string(),
            "REMOTE_PORT": self.port_integer(),
            "SERVER_NAME": self.server.server_address[0],
            "SERVER_PORT": str(self.server.server_address[1]),
            "SERVER_PROTOCOL": self.request_version,
        }
        length = 0
        for name, value in fields:
            key = name.upper().replace("-", "_")
            if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                key = f"HTTP_{key}"
                if key in environ:
                    value = f"{environ[key]},{value}"
            elif key == "CONTENT_LENGTH":
                length = int(value)
            environ[key] = value
        environ[PRESERVED_HEADER_NAMES_ENVIRON_KEY] = {}
        self._body = LimitedStream(self.rfile, length)
        environ["wsgi.input"] = self._body
        return environ

    def run_wsgi(self) -> None:
        # "Expect: 100-continue" was answered by http.server's parse_request (HTTP/1.1).
        try:
            self.environ = environ = self.make_environ()
        except _FramingError as e:
            self.close_connection = True
            self.send_error(e.status, f"Bad request body framing: {e}")
            _discard_pending(self.connection, self.rfile)
            return
        response = _Response(self)
        try:
            response.run(self.server.app, environ)
            if not response.complete():
                self.close_connection = True
            if not _drain(self._body):
                self.close_connection = True
        except (ConnectionError, socket.timeout):
            self.close_connection = True
        except Exception:  # noqa: BLE001 - as werkzeug: a 500 if nothing was sent, then close
            self.close_connection = True
            if not response.started:
                try:
                    response.reset()
                    response.run(InternalServerError(), environ)
                except Exception:  # noqa: BLE001
                    pass
            print(f"ami_emulator: error on request:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
        if self.close_connection:
            # Unread input at close makes the kernel send a reset, which can destroy the answer
            # before the client reads it; werkzeug read it for 10 ms too.
            _discard_pending(self.connection, self.rfile)


class _Response:
    """One response on a persistent connection: start_response/write as WSGI asks, headers sent
    with the first body bytes, chunked when the app gives no Content-Length."""

    def __init__(self, handler: KeepAliveRequestHandler) -> None:
        self.h = handler
        self.reset()
        self.started = False
        self.chunked = False
        self.no_body = False
        self.length: int | None = None  # the Content-Length the app declared
        self.sent = 0  # body bytes written

    def complete(self) -> bool:
        """Whether the body sent matches its framing (else the connection cannot be reused)."""
        return self.no_body or self.chunked or self.length is None or self.sent == self.length

    def reset(self) -> None:
        self.status: str | None = None
        self.headers: list[tuple[str, str]] | None = None

    def start_response(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
        if exc_info:
            try:
                if self.started:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.headers is not None:
            raise AssertionError("Headers already set")
        self.status, self.headers = status, headers
        return self.write

    def write(self, data: bytes) -> None:
        assert self.status is not None and self.headers is not None, "write() before start_response"
        h = self.h
        if not self.started:
            self.started = True
            code_text, _, message = self.status.partition(" ")
            code = int(code_text)
            h.send_response(code, message)
            keys = set()
            for key, value in self.headers:
                h.send_header(key, value)  # "Connection: close" from the app closes (http.server)
                keys.add(key.lower())
                if key.lower() == "content-length":
                    self.length = int(value) if value.strip().isdigit() else None
                    if self.length is None:
                        h.close_connection = True
            self.no_body = h.command == "HEAD" or 100 <= code < 200 or code in (204, 304)
            if "content-length" not in keys and not self.no_body:
                if h.request_version >= "HTTP/1.1":
                    self.chunked = True
                    h.send_header("Transfer-Encoding", "chunked")
                else:
                    h.close_connection = True  # HTTP/1.0: the body ends with the connection
            if h.close_connection and "connection" not in keys:
                h.send_header("Connection", "close")
            h.end_headers()
        if data and not self.no_body:
            if self.chunked:
                h.wfile.write(b"%x\r\n" % len(data))
            h.wfile.write(data)
            self.sent += len(data)
            if self.chunked:
                h.wfile.write(b"\r\n")
        h.wfile.flush()

    def run(self, app: Callable[..., Iterable[bytes]], environ: dict[str, Any]) -> None:
        result = app(environ, self.start_response)
        try:
            for data in result:
                self.write(data)
            if not self.started:
                self.write(b"")
            if self.chunked:
                self.h.wfile.write(b"0\r\n\r\n")
                self.h.wfile.flush()
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()


def _header_lines(rfile: Any) -> tuple[list[bytes], bool]:
    """A request's header lines as ``http.client._read_headers`` reads them, and whether they
    end as it would return them: False where it would raise (a line over ``_MAXLINE``, more
    than ``_MAXHEADERS`` lines); then the lines read so far, the last one included."""
    lines: list[bytes] = []
    while True:
        line = rfile.readline(http.client._MAXLINE + 1)  # noqa: SLF001 - the limits it reads with
        lines.append(line)
        if len(line) > http.client._MAXLINE or len(lines) > http.client._MAXHEADERS:  # noqa: SLF001
            return lines, False
        if line in (b"\r\n", b"\n", b""):
            return lines, True


def _plain_fields(fields: list[tuple[str, str]]) -> bool:
    """Whether a plain block's fields keep its request on the plain path (``parse_request``)."""
    lengths = 0
    for name, value in fields:
        lower = name.lower()
        if "_" in name or lower in _NOT_PLAIN_FIELDS:
            return False
        if lower == "content-length":
            lengths += 1
            if lengths > 1 or not value.strip().isdigit():
                return False
    return True


class _Replay:
    """The request's input for ``parse_request`` after the plain path read its header lines:
    those lines again, then the connection's input from where they ended."""

    def __init__(self, lines: list[bytes], rfile: Any) -> None:
        self._lines = lines
        self._rfile = rfile

    def readline(self, limit: int = -1) -> bytes:
        if self._lines:
            return self._lines.pop(0)
        return self._rfile.readline(limit)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._rfile, name)


def _discard_pending(connection: socket.socket, rfile: Any) -> None:
    """Before closing: reads whatever the client has already sent, for at most ~10 ms of quiet
    and ``MAX_DRAIN_BYTES``, so the close is a FIN, not a reset."""
    total = 0
    try:
        connection.settimeout(0.01)
        while total <= MAX_DRAIN_BYTES:
            chunk = rfile.read1(1024 * 1024) if hasattr(rfile, "read1") else rfile.read(1024 * 1024)
            if not chunk:
                return
            total += len(chunk)
    except (OSError, ValueError):
        return


def _drain(body: Any) -> bool:
    """Reads what the app left of the request body, up to ``MAX_DRAIN_BYTES``; False when the
    body could not be read to its end (then the connection must close)."""
    total = 0
    try:
        while True:
            chunk = body.read(1024 * 1024)
            if not chunk:
                return True
            total += len(chunk)
            if total > MAX_DRAIN_BYTES:
                return False
    except Exception:  # noqa: BLE001 - a disconnected or malformed body: close
        return False
