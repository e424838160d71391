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
