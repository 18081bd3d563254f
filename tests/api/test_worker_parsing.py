"""The worker's per-request shortcuts give gunicorn's answers: a body read to its end is not
drained again, the Date header is formatted once a second, trusted peers are remembered."""

from __future__ import annotations

import ipaddress
import socket
import time

from gunicorn import util
from gunicorn.config import Config
from gunicorn.http import message
from gunicorn.http.parser import RequestParser

from api.worker import BodyAwareParser, http_date, remember_trusted_peers

TWO_REQUESTS = (
    b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
    b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n"
)


class _CountingSocket:
    """A socket end that counts the timeout changes gunicorn's drain makes."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.timeouts = 0

    def recv(self, n: int) -> bytes:
        return self.sock.recv(n)

    def gettimeout(self):
        return self.sock.gettimeout()

    def settimeout(self, value) -> None:
        self.timeouts += 1
        self.sock.settimeout(value)


def _parse_two(parser_class, read: int):
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(TWO_REQUESTS)
        counting = _CountingSocket(ours)
        parser = parser_class(Config(), counting, ("127.0.0.1", 1))
        first = next(parser)
        body = first.body.read(read)
        kept = parser.finish_body(deadline=time.monotonic() + 5)
        second = next(parser)
        return body, kept, second.path, counting.timeouts


def test_a_body_read_to_its_end_is_not_drained_again():
    body, kept, path, timeouts = _parse_two(BodyAwareParser, 5)
    assert (body, kept, path) == (b"hello", True, "/b")
    assert timeouts == 0
    # gunicorn's own parser: the same requests, with the socket timeout set and restored
    assert _parse_two(RequestParser, 5)[:3] == (b"hello", True, "/b")
    assert _parse_two(RequestParser, 5)[3] > 0


def test_a_body_left_unread_is_drained_as_gunicorn_does():
    for read in (0, 2):
        ours, theirs = _parse_two(BodyAwareParser, read), _parse_two(RequestParser, read)
        assert ours[1:3] == theirs[1:3] == (True, "/b")
        assert ours[3] > 0  # gunicorn's drain ran


def test_the_date_header_is_gunicorns():
    for _ in range(3):
        before = util.http_date(int(time.time()))
        ours = http_date()
        after = util.http_date(int(time.time()))
        assert ours in (before, after)
        time.sleep(0.4)


def test_trusted_peers_are_remembered_with_the_same_answers(monkeypatch):
    original = message._ip_in_allow_list
    calls = []

    def counted(ip_str, allow_list, networks):
        calls.append(ip_str)
        return original(ip_str, allow_list, networks)

    monkeypatch.setattr(message, "_ip_in_allow_list", counted)
    remember_trusted_peers()
    remember_trusted_peers()  # once is enough: no second layer
    cfg = Config()
    allow, networks = cfg.forwarded_allow_ips, cfg.forwarded_allow_networks()
    check = message._ip_in_allow_list
    for ip in ("127.0.0.1", "10.1.2.3", "127.0.0.1", "not an address", "10.1.2.3"):
        assert check(ip, allow, networks) == original(ip, allow, networks), ip
    assert calls == ["127.0.0.1", "10.1.2.3", "not an address"]
    # another allow list: asked anew, and answered for that list
    assert check("10.1.2.3", ["10.0.0.0/8"], [ipaddress.ip_network("10.0.0.0/8")]) is True
    assert calls[-1] == "10.1.2.3" and len(calls) == 4
