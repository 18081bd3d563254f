"""The worker's per-request shortcuts give gunicorn's answers: a body read to its end is not
drained again, the Date header is formatted once a second, trusted peers are remembered."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
import time

import pytest
from gunicorn import util
from gunicorn.config import Config
from gunicorn.http import message
from gunicorn.http.body import Body, LengthReader
from gunicorn.http.parser import RequestParser

from api.worker import (
    BodyAwareParser,
    HeldUnreader,
    WholeBody,
    http_date,
    remember_trusted_peers,
    split_request,
)

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


# ---- a request read whole, handed to the parser in pieces (HeldUnreader, WholeBody) ------------
BIG = b'{"customers":[' + b",".join([b'{"x":%d}' % i for i in range(30_000)]) + b"]}"
STREAMS = {
    "one with a body": b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    "two pipelined": TWO_REQUESTS,
    "a large body, then a request": (
        b"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(BIG)
        + BIG
        + b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n"
    ),
    "no body": b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n",
    "chunked": (
        b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    ),
    "a leading empty line": b"\r\nPOST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi",
    "no head end yet": b"POST /a HTTP/1.1\r\nHost: x\r\n",
    "a body cut short": b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\nhel",
}


def _requests(parser_class, stream: bytes, held: bool, steps: tuple[int | None, ...]):
    """Each request the parser reads from ``stream`` (given to the socket, or held whole as the
    worker holds it) as (method, path, headers, body read in ``steps``), until it stops."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        if held:
            parser = parser_class(Config(), ours, ("127.0.0.1", 1))
            parser.unreader.__class__ = HeldUnreader
            parser.unreader.hold(split_request(stream))
            stream = b""
        else:
            parser = parser_class(Config(), ours, ("127.0.0.1", 1))
        # held or not, nothing more comes (a thread: the stream outgrows the socket's buffer)
        sender = threading.Thread(target=_send_and_stop, args=(theirs, stream))
        sender.start()
        seen = []
        try:
            while True:
                try:
                    req = next(parser)
                except (StopIteration, Exception) as exc:  # noqa: BLE001 -- compared below
                    seen.append(type(exc).__name__)
                    return seen
                if held and type(req.body) is Body and type(req.body.reader) is LengthReader:
                    req.body.__class__ = WholeBody  # as the worker does for a large body
                parts = [req.body.read(step) for step in steps]
                seen.append((req.method, req.path, req.headers, parts))
        finally:
            ours.close()
            sender.join()


def _send_and_stop(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)


@pytest.mark.parametrize("case", STREAMS)
@pytest.mark.parametrize("steps", [(None,), (3, None), (1, 2, 100_000, None), (-1, None)])
def test_a_request_held_whole_reads_as_from_the_socket(case, steps):
    stream = STREAMS[case]
    theirs = _requests(RequestParser, stream, held=False, steps=steps)
    assert _requests(BodyAwareParser, stream, held=True, steps=steps) == theirs
    assert _requests(BodyAwareParser, stream, held=False, steps=steps) == theirs


def test_split_request_pieces():
    assert split_request(bytearray(STREAMS["one with a body"])) == (
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n",
        b"hello",
        b"",
    )
    _, body, after = split_request(STREAMS["a large body, then a request"])
    assert body == BIG and after.startswith(b"GET /b ")
    assert split_request(STREAMS["no head end yet"]) == (STREAMS["no head end yet"],)
    assert len(split_request(STREAMS["chunked"])) == 2  # no stated length: head, the rest


def test_held_bytes_are_given_back_and_taken_in_order():
    ours, theirs = socket.socketpair()
    with ours, theirs:
        parser = BodyAwareParser(Config(), ours, ("127.0.0.1", 1))
        unreader = parser.unreader
        unreader.__class__ = HeldUnreader
        unreader.hold((b"ab", b"", b"cdef"))
        assert unreader.holds()
        assert unreader.read(3) == b"abc"
        unreader.unread(b"xy")
        assert unreader.read() == b"xy"
        theirs.sendall(b"gh")
        assert unreader.read(3, read_ahead=3) == b"def"
        unreader.unread(b"z")
        assert unreader.take_buffered() == b"z" and not unreader.holds()
        assert unreader.read(2) == b"gh"  # then the socket


def test_the_whole_body_is_the_held_piece_itself():
    stream = STREAMS["a large body, then a request"]
    ours, theirs = socket.socketpair()
    with ours, theirs:
        parser = BodyAwareParser(Config(), ours, ("127.0.0.1", 1))
        parser.unreader.__class__ = HeldUnreader
        pieces = split_request(stream)
        parser.unreader.hold(pieces)
        req = next(parser)
        req.body.__class__ = WholeBody
        assert req.body.read() is pieces[1]  # not copied
        assert parser.finish_body() and next(parser).path == "/b"
