"""HTTP/1.1 persistent connections (``ami_emulator.keep_alive``), as AWS's endpoints keep them:
several requests on one connection, a request body the server leaves unread drained so that the
next request still parses, and the connection closed when HTTP/1.1 says so (RFC 9112 sections
6.3 and 9.3). Raw sockets for the framing; boto3 for what an SDK does."""

from __future__ import annotations

import http.client
import socket
from typing import Any
from urllib.parse import urlsplit

import boto3
from botocore.config import Config

from conftest import Account

CONTROL = "/ami-pipeline-emulator/requests?account_id=123456789012"


def _connect(emulator: str) -> socket.socket:
    url = urlsplit(emulator)
    return socket.create_connection((url.hostname, url.port), timeout=10)


def _exchange(sock: socket.socket, raw: bytes) -> http.client.HTTPResponse:
    """Sends ``raw`` and reads one whole response from ``sock``."""
    sock.sendall(raw)
    resp = http.client.HTTPResponse(sock, method=raw.split(b" ", 1)[0].decode())
    resp.begin()
    resp.read()
    return resp


def _get(path: str = CONTROL, extra: bytes = b"", version: bytes = b"HTTP/1.1") -> bytes:
    return b"GET " + path.encode() + b" " + version + b"\r\nHost: localhost\r\n" + extra + b"\r\n"


class _OneBuffer:
    """Stands in for a socket to ``http.client.HTTPResponse``: every response reads the same
    buffered file (a response closing it does not close it)."""

    def __init__(self, f: object) -> None:
        self._f = f

    def makefile(self, *args: object, **kwargs: object) -> "_OneBuffer":
        return self

    def close(self) -> None:
        pass

    def __getattr__(self, name: str) -> object:
        return getattr(self._f, name)


def _closed(sock: socket.socket) -> bool:
    """Whether the server closed its side (reads end-of-stream, or the connection is reset)."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def _answered_then_closed(emulator: str, raw: bytes, status: int) -> http.client.HTTPResponse:
    """Sends ``raw`` on a new connection: the answer has ``status`` and the server then closes."""
    with _connect(emulator) as sock:
        resp = _exchange(sock, raw)
        assert resp.status == status
        assert _closed(sock)
    return resp


def test_one_connection_serves_many_requests(emulator: str) -> None:
    with _connect(emulator) as sock:
        for _ in range(5):
            resp = _exchange(sock, _get())
            assert resp.status == 200
            assert resp.version == 11
            assert (resp.getheader("Connection") or "").lower() != "close"


def test_a_body_the_server_does_not_read_is_drained_before_the_next_request(emulator: str) -> None:
    # The control route answers a GET without reading its body; the next request on the same
    # connection must still be parsed from its own request line.
    body = b"x" * 200_000
    with _connect(emulator) as sock:
        first = _exchange(sock, _get(extra=b"Content-Length: %d\r\n" % len(body)) + body)
        assert first.status == 200
        second = _exchange(sock, _get())
        assert second.status == 200


def test_a_chunked_body_left_unread_is_drained_to_its_last_chunk(emulator: str) -> None:
    chunked = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    with _connect(emulator) as sock:
        first = _exchange(sock, _get(extra=b"Transfer-Encoding: chunked\r\n") + chunked)
        assert first.status == 200
        assert _exchange(sock, _get()).status == 200


def test_the_connection_closes_when_the_client_asks(emulator: str) -> None:
    resp = _answered_then_closed(emulator, _get(extra=b"Connection: close\r\n"), 200)
    assert resp.getheader("Connection").lower() == "close"


def test_an_http_1_0_request_gets_its_answer_and_a_closed_connection(emulator: str) -> None:
    _answered_then_closed(emulator, _get(version=b"HTTP/1.0"), 200)


def test_head_answers_carry_no_body_and_the_connection_goes_on(emulator: str) -> None:
    with _connect(emulator) as sock:
        head = b"HEAD " + CONTROL.encode() + b" HTTP/1.1\r\nHost: localhost\r\n\r\n"
        resp = _exchange(sock, head)
        # The control route has no HEAD (405, whose app answer has a body): none goes out.
        assert resp.status in (200, 405)
        # Had the server sent a body, it would be read here as the next status line.
        after = _exchange(sock, _get())
        assert after.status == 200


def test_requests_sent_in_one_write_are_answered_in_order(emulator: str) -> None:
    body = b"y" * 1000
    with _connect(emulator) as sock:
        sock.sendall(_get(extra=b"Content-Length: %d\r\n" % len(body)) + body + _get() + _get(path="/nowhere-at-all"))
        # The answers may arrive in one segment: read them through one buffer.
        shared = _OneBuffer(sock.makefile("rb"))
        statuses = []
        for _ in range(3):
            resp = http.client.HTTPResponse(shared, method="GET")  # type: ignore[arg-type]
            resp.begin()
            resp.read()
            statuses.append(resp.status)
        assert statuses[:2] == [200, 200]
        assert statuses[2] != 200


def test_an_expect_100_continue_request_gets_one_interim_answer_then_the_final_one(emulator: str) -> None:
    body = b"z" * 10
    with _connect(emulator) as sock:
        sock.sendall(_get(extra=b"Content-Length: 10\r\nExpect: 100-continue\r\n"))
        # Exactly the interim answer's bytes: a server that does not need the body may send the
        # final answer right after it (RFC 9110 section 10.1.1), so a larger read could take both.
        interim = sock.recv(len(b"HTTP/1.1 100 Continue\r\n\r\n"), socket.MSG_WAITALL)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n", interim
        sock.sendall(body)
        resp = http.client.HTTPResponse(sock, method="GET")
        resp.begin()
        resp.read()
        assert resp.status == 200
        assert _exchange(sock, _get()).status == 200


def test_a_transfer_coding_other_than_chunked_is_refused_and_the_connection_closed(emulator: str) -> None:
    _answered_then_closed(emulator, _get(extra=b"Transfer-Encoding: gzip\r\n") + b"\x1f\x8b", 501)


def test_a_malformed_content_length_is_refused_and_the_connection_closed(emulator: str) -> None:
    _answered_then_closed(emulator, _get(extra=b"Content-Length: ten\r\n"), 400)
    _answered_then_closed(emulator, _get(extra=b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n") + b"0\r\n\r\n", 400)
    _answered_then_closed(emulator, _get(extra=b"Content-Length: 2\r\nContent-Length: 4\r\n") + b"abcd", 400)


def test_boto3_reuses_its_connection_across_calls_and_a_faulted_upload(account: Account) -> None:
    """An S3 PutObject answered by an injected 503 instead of moto: the SDK retries on the same
    pooled connection, the object holds exactly the body sent, and the connection stays open
    for the next calls. (The fault gate reads the body to match its rule; a body the server
    leaves unread is the raw-socket tests' case.)"""
    s3 = account.client("s3", config=Config(retries={"max_attempts": 3, "mode": "standard"}))
    s3.create_bucket(Bucket="keep-alive")
    status, rule = account.control("faults", {"account_id": account.id, "service": "s3",
                                              "action": "PutObject", "status": 503, "code": "SlowDown",
                                              "message": "injected", "count": 1})
    assert status == 200, rule
    body = bytes(range(256)) * 4096
    s3.put_object(Bucket="keep-alive", Key="disk.raw", Body=body)
    assert s3.get_object(Bucket="keep-alive", Key="disk.raw")["Body"].read() == body
    status, counts = account.control(f"requests?account_id={account.id}", method="GET")
    assert counts["requests"]["s3:PutObject"] == 2, counts
    # The pooled connection stays open across calls: the same socket serves the next one.
    pool = next(iter(s3._endpoint.http_session._manager.pools._container.values()))

    def pooled_socket() -> object:
        conns = [c for c in list(pool.pool.queue) if c is not None]
        assert len(conns) == 1, conns
        assert conns[0].sock is not None, "the server closed the connection"
        return conns[0].sock

    first = pooled_socket()
    s3.head_object(Bucket="keep-alive", Key="disk.raw")
    assert pooled_socket() is first


def test_a_plain_boto3_client_is_served_as_before(emulator: str) -> None:
    ec2 = boto3.client("ec2", endpoint_url=emulator, region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    for _ in range(3):
        assert ec2.describe_regions()["Regions"]


def test_the_access_log_has_only_the_requests_not_answered_with_success_unless_all_are_asked() -> None:
    """``keep_alive.errors_only`` (the server's default, ``--access-log errors``): werkzeug's line
    for a 4xx answer, none for a 2xx; the handler as werkzeug has it logs both."""
    import logging
    import threading

    from werkzeug.serving import make_server

    from ami_emulator.keep_alive import KeepAliveRequestHandler, errors_only

    def app(environ: dict, start_response: Any) -> list[bytes]:
        status = "200 OK" if environ["PATH_INFO"] == "/ok" else "400 Bad Request"
        start_response(status, [("Content-Length", "0")])
        return [b""]

    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger = logging.getLogger("werkzeug")
    collect, level = Collect(), logger.level
    logger.addHandler(collect)
    logger.setLevel(logging.INFO)
    try:
        for handler, expected in (
            (errors_only(KeepAliveRequestHandler), ["/bad"]),
            (KeepAliveRequestHandler, ["/ok", "/bad"]),
        ):
            lines.clear()
            server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=handler)
            thread = threading.Thread(target=server.serve_forever, daemon=True)
            thread.start()
            try:
                conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=10)
                for path in ("/ok", "/bad"):
                    conn.request("GET", path)
                    conn.getresponse().read()
                conn.close()
            finally:
                server.shutdown()
                server.server_close()
            logged = [p for p in ("/ok", "/bad") if any(f"GET {p} " in line for line in lines)]
            assert logged == expected, (handler.__name__, lines)
    finally:
        logger.removeHandler(collect)
        logger.setLevel(level)


# Requests for the plain path's comparison with http.server's and werkzeug's own parsing: each
# with whether it takes the plain path. The target, method, version and header block of each
# second group request leaves the plain path for one reason (its comment).
_H = b"Host: emulator.test\r\n"
_PARSING_CASES: list[tuple[bool, bytes]] = [
    (True, b"POST / HTTP/1.1\r\n" + _H + b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 11\r\n\r\nAction=Test"),
    (True, b"GET /ami-pipeline-emulator/requests?account_id=1&a=b/c HTTP/1.1\r\n" + _H + b"\r\n"),
    (True, b"GET /?x= HTTP/1.1\r\n" + _H + b"X-Dup: a\r\nX-Other: 1\r\nx-dup: b\r\n\r\n"),
    (True, b"POST /two-types HTTP/1.1\r\n" + _H + b"Content-Type: text/plain\r\nContent-Type: text/xml\r\nContent-Length: 2\r\n\r\nhi"),
    (True, b"GET /close HTTP/1.1\r\n" + _H + b"Connection: close\r\n\r\n"),
    (True, b"GET /Close HTTP/1.1\r\n" + _H + b"Connection: Close\r\n\r\n"),
    (True, b"GET /keep HTTP/1.1\r\n" + _H + b"Connection: Keep-Alive\r\nconnection: close\r\n\r\n"),
    (True, b"GET /spaces HTTP/1.1\r\n" + _H + b"X-Pad: \t  value with spaces  \r\nX-Empty:\r\nX-Blank:   \r\n\r\n"),
    (True, b"GET /bare-lf HTTP/1.1\r\nHost: emulator.test\nX-A: 1\n\n"),
    (True, b"HEAD /head HTTP/1.1\r\n" + _H + b"\r\n"),
    (True, b"DELETE /x;p=1,2:3@4!$&'()*+ HTTP/1.1\r\n" + _H + b"Content-Length:  3  \r\n\r\nabc"),
    (True, b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
    # 100 Continue
    (False, b"POST /expect HTTP/1.1\r\n" + _H + b"Expect: 100-continue\r\nContent-Length: 4\r\n\r\nbody"),
    # chunked body
    (False, b"POST /chunked HTTP/1.1\r\n" + _H + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
    # underscores: werkzeug drops the field, moto keeps x-amz-meta-* ones
    (False, b"GET /under HTTP/1.1\r\n" + _H + b"X_Under: 1\r\nX-Amz-Meta-My_Key: v\r\n\r\n"),
    # framing errors: two lengths, a length that is not a number
    (False, b"POST /two-lengths HTTP/1.1\r\n" + _H + b"Content-Length: 1\r\nContent-Length: 1\r\n\r\nx"),
    (False, b"POST /bad-length HTTP/1.1\r\n" + _H + b"Content-Length: 1x\r\n\r\nx"),
    # targets http.server, urlsplit or unquote change
    (False, b"GET //double/slash HTTP/1.1\r\n" + _H + b"\r\n"),
    (False, b"GET /a%20b%2F?q=%41 HTTP/1.1\r\n" + _H + b"\r\n"),
    (False, b"GET /frag?x=1#part HTTP/1.1\r\n" + _H + b"\r\n"),
    (False, b"GET http://other.test/absolute HTTP/1.1\r\n" + _H + b"\r\n"),
    (False, b"GET /tab\tin HTTP/1.1\r\n" + _H + b"\r\n"),
    # other request lines: HTTP/1.0, a lower-case method, two spaces
    (False, b"GET /old HTTP/1.0\r\n" + _H + b"\r\n"),
    (False, b"get /lower HTTP/1.1\r\n" + _H + b"\r\n"),
    (False, b"GET  /two-spaces HTTP/1.1\r\n" + _H + b"\r\n"),
    # header blocks the email parser reads: a folded line, a byte outside US-ASCII, a line
    # without a colon, a bare CR, a multipart type
    (False, b"GET /folded HTTP/1.1\r\n" + _H + b"X-Long: one\r\n two\r\n\r\n"),
    (False, b"GET /latin HTTP/1.1\r\n" + _H + b"X-Name: caf\xe9\r\n\r\n"),
    (False, b"GET /no-colon HTTP/1.1\r\n" + _H + b"just words\r\n\r\n"),
    (False, b"GET /bare-cr HTTP/1.1\r\n" + _H + b"X-A: 1\r2\r\n\r\n"),
    (False, b"POST /multi HTTP/1.1\r\n" + _H + b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 0\r\n\r\n"),
    # http.client's limits: 100 header lines, 65,536 bytes a line (both answered 431)
    (False, b"GET /many HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(101)) + b"\r\n"),
    (False, b"GET /long HTTP/1.1\r\n" + _H + b"X-Long: " + b"a" * 66000 + b"\r\n\r\n"),
]


def _parsing_server(plain: bool) -> tuple[Any, list[dict[str, Any]]]:
    """A keep-alive server with the plain path on or off whose handler and app record what each
    request was parsed into (everything but the objects and the client's port)."""
    import sys as _sys

    from werkzeug.serving import make_server

    from ami_emulator.keep_alive import KeepAliveRequestHandler

    seen: list[dict[str, Any]] = []

    class Recording(KeepAliveRequestHandler):
        plain_requests = plain

        def parse_request(self) -> bool:
            self.__dict__.pop("headers", None)  # a failed parse would show the last request's
            ok = super().parse_request()
            headers = getattr(self, "headers", None)
            seen.append(
                {
                    "ok": ok,
                    "plain": self._plain is not None,
                    "command": self.command,
                    "path": getattr(self, "path", None),
                    "version": self.request_version,
                    "requestline": self.requestline,
                    "close": self.close_connection,
                    "headers": None if headers is None else (type(headers), list(headers.raw_items()), headers.get_payload(), [type(d) for d in headers.defects]),
                }
            )
            return ok

        def handle_one_request(self) -> None:
            super().handle_one_request()
            seen.append({"close after": self.close_connection})

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        body = environ["wsgi.input"].read()
        assert environ["wsgi.errors"] is _sys.stderr
        seen.append(
            {
                "environ": {
                    k: v for k, v in environ.items() if k not in ("wsgi.input", "werkzeug.socket", "wsgi.errors", "REMOTE_PORT", "SERVER_PORT")
                },
                "input": type(environ["wsgi.input"]).__name__,
                "socket": type(environ["werkzeug.socket"]).__name__,
                "body": body,
            }
        )
        answer = b"read %d bytes" % len(body)
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(answer)))])
        return [answer]

    return make_server("127.0.0.1", 0, app, threaded=True, request_handler=Recording), seen


def test_plain_requests_are_parsed_as_http_server_werkzeug_and_moto_parse_them() -> None:
    """``KeepAliveRequestHandler.parse_request``'s plain path against the general one (the same
    handler with ``plain_requests = False``): for each request of ``_PARSING_CASES``, the same
    handler state (command, path, version, request line, the ``HTTPMessage`` with its payload and
    defects, ``close_connection`` before and after), the same environ (every key, the body the app
    reads) and the same answer (status, headers but the date, body); and exactly the first group
    took the plain path."""
    import re as _re
    import threading

    observed: dict[bool, list[Any]] = {}
    for plain in (True, False):
        server, seen = _parsing_server(plain)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            results = []
            for _, raw in _PARSING_CASES:
                seen.clear()
                with socket.create_connection(("127.0.0.1", server.server_port), timeout=10) as sock:
                    sock.sendall(raw)
                    resp = http.client.HTTPResponse(sock, method=raw.split(b" ", 1)[0].decode())
                    resp.begin()
                    headers = [(k, _re.sub(r"\d\d:\d\d:\d\d", "T", v) if k == "Date" else v) for k, v in resp.getheaders()]
                    answer = (resp.status, resp.reason, headers, resp.read())
                    # The server's end of the connection closes once it has read the end of
                    # input (or closed after its answer): its records are complete then.
                    sock.shutdown(socket.SHUT_WR)
                    while not _closed(sock):
                        pass
                results.append((list(seen), answer))
            observed[plain] = results
        finally:
            server.shutdown()
            server.server_close()

    took_plain = [[s["plain"] for s in seen if "plain" in s] for seen, _ in observed[True]]
    assert took_plain == [[expected] for expected, _ in _PARSING_CASES]
    assert not any(s.get("plain") for seen, _ in observed[False] for s in seen)
    for (expected, raw), with_plain, general in zip(_PARSING_CASES, observed[True], observed[False]):
        strip = lambda seen: [{k: v for k, v in s.items() if k != "plain"} for s in seen]  # noqa: E731
        assert strip(with_plain[0]) == strip(general[0]), raw[:60]
        assert with_plain[1] == general[1], raw[:60]
    # The plain requests were answered by the app, with their bodies.
    answered = [answer for (expected, _), (_, answer) in zip(_PARSING_CASES, observed[True]) if expected]
    assert [a[0] for a in answered] == [200] * len(answered)
    assert answered[0][3] == b"read 11 bytes"
