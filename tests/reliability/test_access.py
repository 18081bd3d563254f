"""(5) Keys never reach the server log, whatever a client sends; the access checks hold."""

from __future__ import annotations

import socket

import pytest

from bench.reliability.harness import ADMIN_KEY, CUSTOMER, SCORING_KEY, Server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def test_malformed_headers_do_not_log_their_values(tiny_bundle_root):
    with Server(tiny_bundle_root) as server:
        for line in (
            f"X-API-Key {SCORING_KEY}",  # no colon: gunicorn used to log it whole
            f"X-API-Key:\x01{ADMIN_KEY}",  # a control character in the value
            f"Bad Name {SCORING_KEY}: x",
        ):
            out = _raw(
                server.port,
                f"GET /readyz HTTP/1.1\r\nHost: x\r\n{line}\r\n\r\n".encode("latin-1"),
            )
            assert out.startswith(b"HTTP/1.1 400 ") and b'"bad_request"' in out
            assert SCORING_KEY.encode() not in out and ADMIN_KEY.encode() not in out
        out = _raw(server.port, f"GET /{SCORING_KEY} x HTTP/1.1\r\n\r\n".encode())
        assert out.startswith(b"HTTP/1.1 400 ")
        log = server.log()
        assert "Invalid request from ip=127.0.0.1" in log and "bytes withheld" in log
        assert SCORING_KEY not in log and ADMIN_KEY not in log


def test_access_checks(tiny_bundle_root):
    """No key, a wrong key, a key of the other kind: refused, in the envelope."""
    with Server(tiny_bundle_root) as server:
        assert server.call("POST", "/predict-segment", CUSTOMER)[0] == 200
        assert server.call("POST", "/predict-segment", CUSTOMER, key=None)[0] == 401
        assert server.call("POST", "/predict-segment", CUSTOMER, key="wrong")[0] == 401
        assert server.call("POST", "/predict-segment", CUSTOMER, key=ADMIN_KEY)[0] == 403
        assert server.call("POST", "/admin/reload", {}, key=SCORING_KEY)[0] == 403
        status, body, _ = server.call("POST", "/admin/reload", {}, key="wrong")
        assert status == 401 and body["error"]["code"] == "unauthorized"
        assert SCORING_KEY not in server.log() and ADMIN_KEY not in server.log()
