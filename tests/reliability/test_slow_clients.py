"""(1) Slow clients cannot hold a worker's thread: requests are read whole before a thread."""

from __future__ import annotations

import json
import socket

import pytest

from api.worker import HEAD_LIMIT, request_complete
from bench.reliability import scenarios
from bench.reliability.harness import CUSTOMER, SCORING_KEY, Server

HEAD = b"POST /predict-segment HTTP/1.1\r\nHost: x\r\n"


@pytest.mark.parametrize(
    ("buf", "whole"),
    [
        (HEAD, False),
        (HEAD + b"\r\n", True),  # no body
        (HEAD + b"Content-Length: 4\r\n\r\n{}", False),
        (HEAD + b"content-length:4\r\n\r\n{}{}", True),
        (HEAD + b"Content-Length: 4\r\nX-Next: 1\r\n\r\n{}", False),  # not the last header
        (HEAD + b"Content-Length: 4 \r\nX-Next: 1\r\n\r\n{}{}", True),
        (HEAD + b"Content-Length: 99999999\r\n\r\n", True),  # over the limit: refused at once
        (HEAD + b"Content-Length: x\r\n\r\n", True),  # malformed: refused at once
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n", False),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", True),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n2;x=y\r\n{}\r\n0\r\nT: 1\r\n\r\n", True),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", True),  # malformed chunk size
        (b"GET / HTTP/1.1\r\n" + b"X: " + b"a" * HEAD_LIMIT, True),  # head too long
    ],
)
def test_request_complete(buf, whole):
    assert request_complete(buf, body_limit=1 << 20) is whole


def _exchange(port: int, data: bytes, *, wait_for: int = 1, timeout: float = 30) -> bytes:
    """Send ``data`` on one connection and read until ``wait_for`` responses arrived."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while out.count(b"HTTP/1.1 ") < wait_for:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
        return out


@pytest.mark.e2e
@pytest.mark.slow
def test_pipelined_expect_and_chunked_requests_and_a_timeout(tiny_bundle_root):
    body = json.dumps(CUSTOMER).encode()
    request = (
        b"POST /predict-segment HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"X-API-Key: {SCORING_KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    with Server(tiny_bundle_root, env={"GUNICORN_READ_TIMEOUT": "2"}) as server:
        # two requests in one send, the second split across the body of the first
        out = _exchange(server.port, request + request, wait_for=2)
        assert out.count(b"HTTP/1.1 200 OK") == 2
        # Expect: 100-continue is answered by the worker, once, before the body is sent
        head, _, rest = request.partition(b"\r\n\r\n")
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
            s.sendall(head + b"\r\nExpect: 100-continue\r\n\r\n")
            assert s.recv(1024).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
            s.sendall(rest)
            answer = b""
            while b"model_version" not in answer:
                answer += s.recv(65536)
            assert answer.startswith(b"HTTP/1.1 200 OK") and b"100 Continue" not in answer
        # chunked
        chunked = (
            head.replace(f"Content-Length: {len(body)}".encode(), b"Transfer-Encoding: chunked")
            + b"\r\n\r\n"
            + f"{len(body):x}\r\n".encode()
            + body
            + b"\r\n0\r\n\r\n"
        )
        assert _exchange(server.port, chunked).startswith(b"HTTP/1.1 200 OK")
        # a request that never finishes is answered 408 in the envelope and closed
        out = _exchange(server.port, HEAD + b"X-Slow: 1\r\n")
        assert out.startswith(b"HTTP/1.1 408 ") and b'"request_timeout"' in out


@pytest.mark.e2e
@pytest.mark.slow
def test_two_hundred_slow_clients_do_not_starve_the_service(tiny_bundle_root):
    result = scenarios.slow_clients(tiny_bundle_root, slow=200, seconds=8)
    assert all(result["checks"].values()), result
    assert result["ok"] >= 50, result


@pytest.mark.e2e
@pytest.mark.slow
def test_kept_alive_connections_come_and_go(tiny_bundle_root):
    """One thread keeps a connection on the poller between requests (api/worker.py): requests
    in turn on one connection, connections closed by either side, and new connections (which
    reuse the closed ones' descriptors) are all answered."""
    import http.client

    body = json.dumps(CUSTOMER).encode()
    headers = {"Content-Type": "application/json", "X-API-Key": SCORING_KEY}
    with Server(tiny_bundle_root) as server:
        for round_ in range(6):
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
            for i in range(3):
                last = round_ % 2 == 1 and i == 2  # every other round the server closes
                conn.request(
                    "POST",
                    "/predict-segment",
                    body,
                    {**headers, **({"Connection": "close"} if last else {})},
                )
                resp = conn.getresponse()
                assert resp.status == 200 and b"segment_id" in resp.read()
                assert resp.will_close is last
            conn.close()
        # a kept-alive connection left idle while another comes and goes
        idle = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        idle.request("POST", "/predict-segment", body, headers)
        assert idle.getresponse().read()
        other = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        other.request("POST", "/predict-segment", body, headers)
        assert other.getresponse().status == 200
        other.close()
        idle.request("POST", "/predict-segment", body, headers)
        assert idle.getresponse().status == 200
        idle.close()
