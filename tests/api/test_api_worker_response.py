"""The worker's response writer: gunicorn's bytes, with the head sent together with the body."""

from __future__ import annotations

import io

import pytest
from gunicorn import util
from gunicorn.config import Config
from gunicorn.http import wsgi

from api.worker import OneWriteResponse


class _Sock:
    """Records every ``sendall`` (and ``sendfile``) as one write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def sendfile(self, file, offset=0, count=None) -> None:
        file.seek(offset)
        self.writes.append(file.read(count))


class _Req:
    def __init__(self, method: str = "POST", version: tuple[int, int] = (1, 1)) -> None:
        self.method = method
        self.version = version

    def should_close(self) -> bool:
        return False


def _answer(cls, method, status, headers, pieces, version=(1, 1), file=None):
    sock = _Sock()
    resp = cls(_Req(method, version), sock, Config())
    resp.start_response(status, headers)
    if file is not None:
        resp.write_file(wsgi.FileWrapper(file))
    else:
        for piece in pieces:
            resp.write(piece)
    resp.close()
    return sock.writes


CASES = {
    "json": ("POST", "200 OK", [("Content-Length", "11")], [b'{"ok":true}']),
    "two pieces": ("POST", "200 OK", [("Content-Length", "6")], [b"abc", b"def"]),
    "empty body": ("POST", "200 OK", [("Content-Length", "0")], []),
    "head": ("HEAD", "200 OK", [("Content-Length", "11")], [b'{"ok":true}']),
    "no content": ("POST", "204 No Content", [], []),
    "chunked": ("POST", "200 OK", [("Content-Type", "text/plain")], [b"abc", b"de"]),
    "http/1.0 no length": ("GET", "200 OK", [], [b"abc"]),
}


@pytest.fixture(autouse=True)
def _fixed_date(monkeypatch):
    monkeypatch.setattr(util, "http_date", lambda *a: "Sun, 06 Dec 2026 20:00:00 GMT")
    # the worker keeps this second's date: forget one formatted before the patch
    monkeypatch.setattr("api.worker._date", [None, ""])


@pytest.mark.parametrize("case", CASES)
def test_same_bytes_as_gunicorn(case):
    method, status, headers, pieces = CASES[case]
    version = (1, 0) if "1.0" in case else (1, 1)
    ours = _answer(OneWriteResponse, method, status, headers, pieces, version)
    theirs = _answer(wsgi.Response, method, status, headers, pieces, version)
    assert b"".join(ours) == b"".join(theirs)
    assert b"".join(ours).startswith(b"HTTP/1.")


def test_head_and_body_go_in_one_write():
    writes = _answer(OneWriteResponse, *CASES["json"])
    assert len(writes) == 1
    assert writes[0].endswith(b'\r\n\r\n{"ok":true}')
    # gunicorn's own writer: the head, then the body
    assert len(_answer(wsgi.Response, *CASES["json"])) == 2


def test_a_head_without_body_is_sent_on_close():
    for case in ("empty body", "head", "no content"):
        writes = _answer(OneWriteResponse, *CASES[case])
        assert len(writes) == 1 and writes[0].endswith(b"\r\n\r\n"), case


def test_files_and_chunked_bodies_keep_gunicorns_writes():
    data = b"x" * 100
    file_case = ("GET", "200 OK", [("Content-Length", "100")], [])
    ours = _answer(OneWriteResponse, *file_case, file=io.BytesIO(data))
    theirs = _answer(wsgi.Response, *file_case, file=io.BytesIO(data))
    assert ours == theirs and ours[-1] == data
    assert _answer(OneWriteResponse, *CASES["chunked"]) == _answer(wsgi.Response, *CASES["chunked"])


def test_settled_config_reads_every_setting_as_gunicorns_config_does():
    from api.worker import SettledConfig

    def hook(worker, req):
        return None

    cfg = Config()
    cfg.set("keepalive", 7)
    cfg.set("pre_request", hook)
    settled = SettledConfig(cfg)
    for name in cfg.settings:
        assert getattr(settled, name) == getattr(cfg, name), name
        if not hasattr(Config, name):  # a property stays the property
            assert name in vars(settled), name  # found without Config.__getattr__
    assert settled.pre_request is hook and settled.keepalive == 7
    assert settled.is_ssl == cfg.is_ssl
    settled.set("keepalive", 9)
    assert settled.keepalive == 9 and settled.settings["keepalive"].get() == 9


class _ShortSock(_Sock):
    """``sendmsg`` sends at most ``limit`` bytes (as a send a signal interrupted does)."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.messages = 0

    def sendmsg(self, buffers) -> int:
        self.messages += 1
        data = b"".join(bytes(b) for b in buffers)[: self.limit]
        self.writes.append(data)
        return len(data)


@pytest.mark.parametrize("limit", [0, 10, 200, 10**9])
def test_a_large_body_goes_beside_its_head_as_gunicorn_sends_it(limit):
    from api.worker import JOIN_LIMIT

    body = bytes(range(256)) * (JOIN_LIMIT // 256 + 3)
    case = ("POST", "200 OK", [("Content-Length", str(len(body)))], [body])
    sock = _ShortSock(limit)
    resp = OneWriteResponse(_Req(), sock, Config())
    resp.start_response(*case[1:3])
    resp.write(body)
    resp.close()
    assert b"".join(sock.writes) == b"".join(_answer(wsgi.Response, *case))
    assert sock.messages == 1  # one system call when nothing interrupts it
    if limit >= len(body):
        assert len(sock.writes) == 1
