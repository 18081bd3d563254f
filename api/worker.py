"""The gunicorn worker class: gthread that reads each request whole before a thread takes it.

gunicorn's gthread worker hands a connection to a thread as soon as its first bytes arrive; the
thread then reads the rest of the request with blocking reads and no deadline. A client that
sends one header line every few seconds (slowloris), or a body a byte at a time, holds that
thread for as long as it likes: with one thread per worker, two such connections took the whole
service offline (issue 11). This worker reads the request head and body in its event loop
instead, with non-blocking reads into a buffer, and gives the connection to a thread only when
the request is complete (or certainly malformed or oversized, which the thread then refuses at
once). A request that is not whole within ``GUNICORN_READ_TIMEOUT`` seconds (from the connection,
or from the moment a kept-alive connection has bytes again) is answered 408 and closed. A slow connection then costs a socket and a buffer, not a thread.

With one thread per worker (``GUNICORN_THREADS=1``, the default) a whole request is answered in
the event loop's own thread instead of being handed to a pool of one: the hand-over (a future, a
queue, a thread switch and a wake-up pipe back to the loop) cost more instructions than the
access log and the metrics together (bench/RESULTS.md). The loop then serves one request at a
time, as the one pool thread did; reading stays non-blocking, so slow clients still cost only a
buffer. With more threads the pool is used as gunicorn's gthread does.

A response's head goes out in the same ``sendall`` as the first piece of its body
(:class:`OneWriteResponse`): gunicorn writes them apart, two system calls and two TCP segments on
loopback per small JSON answer, each waking the client. A large body goes in the same system call
as its head (``sendmsg`` of both buffers) instead of being joined to it first.

Written here rather than taken from a library: the usual answers (a buffering proxy in front,
an event-loop worker such as gevent) either add a second program to ``make run`` and the
container, or change how requests share the CPU; the measurements are in RELIABILITY.md. It
leans on gthread internals (``enqueue_req``, ``murder_pending``, ``TConn``, the parser's
``Unreader``) of the pinned gunicorn.
"""

from __future__ import annotations

import contextlib
import errno
import re
import selectors
import threading
import time
from collections import deque
from datetime import datetime
from functools import partial
from typing import Any

from gunicorn import util
from gunicorn.config import Config
from gunicorn.http import message, wsgi
from gunicorn.http.body import Body, LengthReader
from gunicorn.http.parser import RequestParser
from gunicorn.http.unreader import SocketUnreader
from gunicorn.workers.gthread import STOP_KEEPALIVE_LINGER, TConn, ThreadWorker

from api.priority import lower_thread, yielding

#: longest request head read before handing over (gunicorn then answers 431/400 itself)
HEAD_LIMIT = 64 * 1024
_HEAD_END = b"\r\n\r\n"
#: (a header line ends in CR LF: ``$`` of re.M stops before the LF)
_CONTENT_LENGTH = re.compile(rb"^content-length[ \t]*:[ \t]*(\S*)[ \t]*\r?$", re.I | re.M)
_CHUNKED = re.compile(rb"^transfer-encoding[ \t]*:.*chunked", re.I | re.M)
_EXPECT = re.compile(rb"\r\nexpect[ \t]*:[ \t]*100-continue[ \t]*(?=\r\n)", re.I)
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
#: a body at least this long is sent beside its head (``sendmsg``) rather than joined to it: the
#: join copies the whole body once more (a 2.7 MB batch answer), while for a small answer it is
#: cheaper than the buffer list
JOIN_LIMIT = 64 * 1024
#: a request at least this long is handed to the parser in pieces (:class:`HeldUnreader`) and its
#: body read in one step (:class:`WholeBody`): below it, gunicorn's copies cost less than the steps
HOLD_LIMIT = 64 * 1024


def request_complete(buf: bytes | bytearray, body_limit: int) -> bool:
    """True when ``buf`` holds a whole first request, or enough to know it will be refused.

    Refused requests (a head over HEAD_LIMIT, a bad length or chunk size, a body over
    ``body_limit``) go to a thread at once: the parser or the app answers them without waiting
    for more bytes.
    """
    end = buf.find(_HEAD_END)
    if end < 0:
        return len(buf) > HEAD_LIMIT
    head = bytes(buf[:end])
    start = end + len(_HEAD_END)
    if _CHUNKED.search(head):
        return _chunked_complete(buf, start, body_limit)
    length = _body_length(head)
    if length is None:
        return True
    return length < 0 or length > body_limit or len(buf) - start >= length


def _body_length(head: bytes) -> int | None:
    """The Content-Length a request head states (None: none, or not a number)."""
    match = _CONTENT_LENGTH.search(head)
    if match is None:
        return None
    try:
        return int(match.group(1))
    except ValueError:
        return None


def split_request(buf: bytes | bytearray) -> tuple[bytes, ...]:
    """A whole request's bytes as pieces a parser reads one after another: the head, the body of
    the length the head states, and what follows it (a pipelined request), each copied once.

    Any split of the bytes serves gunicorn's parser alike (it reads pieces as it reads a socket's
    chunks): one without a head end, or whose head states no plain length, is one piece.
    """
    end = buf.find(_HEAD_END)
    view = memoryview(buf)
    if end < 0:
        return (bytes(view),)
    start = end + len(_HEAD_END)
    head = bytes(view[:start])
    length = None if _CHUNKED.search(head) else _body_length(head)
    if length is None or length < 0 or len(buf) - start < length:
        return (head, bytes(view[start:]))
    return (head, bytes(view[start : start + length]), bytes(view[start + length :]))


class HeldUnreader(SocketUnreader):
    """gunicorn's socket unreader, serving the pieces of a request read whole before the socket.

    gunicorn's unreader keeps what it holds in a ``BytesIO``: a request given back to it with
    ``unread`` is copied in, copied out for the parser, the body copied back in and out again,
    then into the body's own buffer (about a dozen copies of a 318 KB batch body, bench/RESULTS.md).
    Here the pieces (:func:`split_request`) are handed out as they are: the parser reads the
    head, the body reader asks for exactly the body. Anything given back goes in front of them;
    once they are used up, gunicorn's own reads (its buffer, then the socket) take over.
    """

    held: list[bytes]

    def hold(self, pieces: tuple[bytes, ...]) -> None:
        """Serve ``pieces`` (in order, empty ones skipped) before anything else."""
        self.held = [p for p in reversed(pieces) if p]  # the next piece last: pop() is cheap

    def read(self, size: int | None = None, read_ahead: int | None = None) -> bytes:
        """gunicorn's ``read``, taking from the held pieces first."""
        held = self.held
        if not held or size == 0 or (size is not None and type(size) is not int):
            return super().read(size, read_ahead)
        if size is None or size < 0:
            return held.pop()  # buffered data: gunicorn returns what it holds, up to a chunk
        parts = []
        want = size
        while held and want:
            piece = held.pop()
            if len(piece) > want:
                held.append(piece[want:])
                piece = piece[:want]
            parts.append(piece)
            want -= len(piece)
        if want:
            more = super().read(want, None if read_ahead is None else read_ahead - size + want)
            parts.append(more)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def unread(self, data: bytes) -> None:
        """Give ``data`` back: it is read next."""
        if data:
            self.held.append(bytes(data))

    def take_buffered(self) -> bytes:
        """Everything held and buffered, without touching the socket."""
        held = b"".join(reversed(self.held))
        self.held = []
        return held + super().take_buffered()

    def holds(self) -> bool:
        """Whether any bytes are held or buffered (read from the socket, not yet parsed)."""
        return bool(self.held) or bool(self.buf.getvalue())


class WholeBody(Body):
    """gunicorn's request body, reading the rest of a body of known length in one step.

    gunicorn's ``read()`` gathers the body in a ``BytesIO`` (a copy in, a copy out) in steps of
    at most 1 MiB; asking the length reader for the whole rest at once returns the same bytes,
    for a held body (:class:`HeldUnreader`) without copying it.
    """

    def read(self, size: int | None = None) -> bytes:
        """gunicorn's ``read``; the whole rest of a Content-Length body read at once."""
        reader = self.reader
        if (
            (size is None or (type(size) is int and size < 0))
            and type(reader) is LengthReader
            and self.buf.tell() == 0
        ):
            return self._read_reader(reader.length) if reader.length else b""
        return super().read(size)


def _chunked_complete(buf: bytes | bytearray, pos: int, body_limit: int) -> bool:
    """True when the chunked body from ``pos`` is whole (or malformed, or over the limit)."""
    total = 0
    while True:
        line_end = buf.find(b"\r\n", pos)
        if line_end < 0:
            return len(buf) - pos > 1024  # a chunk-size line that long is malformed
        size_text = bytes(buf[pos:line_end]).split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            return True
        if size == 0:
            # trailers (usually none), then an empty line
            rest = line_end + 2
            return buf.startswith(b"\r\n", rest) or buf.find(_HEAD_END, line_end) >= 0
        total += size
        if total > body_limit:
            return True
        pos = line_end + 2 + size + 2
        if pos > len(buf):
            return False


class SettledConfig(Config):
    """gunicorn's configuration with every setting's value read once, for a worker process.

    gunicorn's ``Config`` serves settings through ``__getattr__``: each of the ~30 reads of a
    request (the parser's limits, ``keepalive``, the hooks, the proxy settings) first fails the
    ordinary attribute look-up, which builds an AttributeError, then calls ``__getattr__``
    (bench/RESULTS.md: about 3.7% of a ``/recommend`` request's instructions). Here the values
    sit in the instance, where the ordinary look-up finds them. A worker's settings do not change
    after the fork (the master re-forks workers to apply new ones); ``set`` keeps the copy
    current all the same. Settings that share their name with one of Config's properties stay
    behind the property, as before.
    """

    def __init__(self, cfg: Config) -> None:
        # Config.__setattr__ refuses setting names: fill the instance dict directly
        self.__dict__.update(cfg.__dict__)
        for name in self.settings:
            self._settle(name)

    def set(self, name: str, value: Any) -> None:
        """gunicorn's ``set``, with the settled value kept current."""
        super().set(name, value)
        self._settle(name)

    def _settle(self, name: str) -> None:
        if not hasattr(Config, name):
            self.__dict__[name] = self.settings[name].get()


def http_date() -> str:
    """gunicorn's ``util.http_date()`` (RFC 7231 date, whole seconds), formatted once a second
    instead of once a response (``email.utils.formatdate``: ~2% of a one-customer request)."""
    now = int(time.time())
    if now != _date[0]:
        _date[0], _date[1] = now, util.http_date(now)
    return _date[1]


_date: list[Any] = [None, ""]


class BodyAwareParser(RequestParser):
    """gunicorn's HTTP/1 parser, except that a body already read to its end is not "drained".

    gunicorn drains what the application left of a body twice per request (before keeping the
    connection alive and before parsing the next request), each time setting and restoring a
    socket timeout: three system calls and a read per request even when the application read
    the whole body, as every endpoint here does. A body whose Content-Length is used up and
    nothing buffered is known to be over; anything else goes through gunicorn's drain.
    """

    def finish_body(self, deadline: float | None = None, max_bytes: int | None = None) -> bool:
        """True at once for a body read to its end; otherwise gunicorn's ``finish_body``."""
        body = getattr(self.mesg, "body", None)
        if (
            body is not None
            and not body.failed
            and type(body.reader) is LengthReader
            and body.reader.length == 0
            and body.buf.tell() == 0
        ):
            return True
        return super().finish_body(deadline, max_bytes)


def remember_trusted_peers() -> None:
    """Remember, per peer address, whether gunicorn's allow lists trust it.

    gunicorn parses the peer's address with ``ipaddress`` on every request to decide whether
    it may set forwarding headers (~2.5% of a one-customer request). The answer depends only on
    the address and the allow list (the networks are computed from the list), so it is kept, for
    at most 4,096 addresses at a time.
    """
    check = message._ip_in_allow_list
    if getattr(check, "remembers", False):
        return
    memo: dict[tuple[str, tuple[str, ...]], bool] = {}

    def ip_in_allow_list(ip_str: str, allow_list: Any, networks: Any) -> bool:
        key = (ip_str, tuple(allow_list))
        known = memo.get(key)
        if known is None:
            if len(memo) >= 4096:
                memo.clear()
            known = memo[key] = check(ip_str, allow_list, networks)
        return known

    ip_in_allow_list.remembers = True  # type: ignore[attr-defined]
    message._ip_in_allow_list = ip_in_allow_list


def send_two(sock: Any, head: bytes, data: bytes) -> None:
    """``sock.sendall(head + data)`` without joining them: one ``sendmsg`` of both buffers, and
    ``sendall`` for whatever it left (a blocking send stops early only on a signal)."""
    sent = sock.sendmsg([head, data])
    if sent < len(head):
        sock.sendall(memoryview(head)[sent:])
        sent = len(head)
    if sent - len(head) < len(data):
        sock.sendall(memoryview(data)[sent - len(head) :])


class OneWriteResponse(wsgi.Response):
    """gunicorn's HTTP/1 response, holding the head back until the body's first bytes.

    The head is then sent with them in one ``sendall`` (one ``sendmsg`` of the two buffers for a
    body of :data:`JOIN_LIMIT` or more). Held until ``close`` when there is no
    body (HEAD, 204, an empty answer); sent at once, as gunicorn does, before ``sendfile`` and
    for chunked bodies.
    """

    _head: bytes | None = None
    _hold = True

    def default_headers(self) -> list[str]:
        """gunicorn's ``default_headers`` (27.0.1), with the Date formatted once a second."""
        if self.upgrade:
            connection = "upgrade"
        elif self.should_close():
            connection = "close"
        else:
            connection = "keep-alive"
        version = self.req.version
        headers = [
            f"HTTP/{version[0]}.{version[1]} {self.status}\r\n",
            f"Server: {self.version}\r\n",
            f"Date: {http_date()}\r\n",
            f"Connection: {connection}\r\n",
        ]
        if self.chunked:
            headers.append("Transfer-Encoding: chunked\r\n")
        return headers

    def send_headers(self) -> None:
        """gunicorn's head, kept back (see the class) instead of written."""
        if self.headers_sent:
            return
        if not self._hold or self.chunked:
            super().send_headers()
            return
        tosend = self.default_headers()
        tosend.extend(["%s: %s\r\n" % (k, v) for k, v in self.headers])  # noqa: UP031 (gunicorn's)
        self._head = util.to_bytestring("%s\r\n" % "".join(tosend), "latin-1")  # noqa: UP031
        self.headers_sent = True

    def _emit_body(self, data: bytes) -> None:
        head = self._head
        if head is None:
            super()._emit_body(data)
            return
        self._head = None
        if len(data) < JOIN_LIMIT:
            self.sock.sendall(head + data)
        else:
            send_two(self.sock, head, data)

    def sendfile(self, respiter: Any) -> bool:
        """gunicorn's sendfile; the head is written before the file, as gunicorn does."""
        self._hold = False
        return super().sendfile(respiter)

    def close(self) -> None:
        """Send a head still held (an answer without body bytes), then gunicorn's close."""
        if not self.headers_sent:
            self.send_headers()
        head = self._head
        if head is not None:
            self._head = None
            self.sock.sendall(head)
        super().close()


class WholeRequestWorker(ThreadWorker):
    """gthread, except that a thread only ever sees a connection with a whole request buffered."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        from api.settings import ServerSettings, Settings

        self.read_timeout = float(ServerSettings.load().GUNICORN_READ_TIMEOUT)
        self.body_limit = Settings.load().MAX_BODY_BYTES
        #: connections whose request is being read, oldest (first deadline) first
        self.reading: deque[TConn] = deque()
        #: one thread: whole requests are answered in the event loop, in arrival order
        #: gunicorn's settings are properties looked up by name: read these once
        self.tls = bool(self.cfg.is_ssl)
        self.inline = self.cfg.threads == 1 and not self.tls
        self._ready: deque[TConn] = deque()
        self._serving = False
        self._metrics: Any = None

    def accept(self, listener: Any) -> None:
        """Accept a connection and start reading its request in the event loop."""
        try:
            client_sock, client_addr = listener.accept()
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        conn = TConn(self.cfg, client_sock, client_addr, listener.getsockname())
        self.enqueue_req(conn)

    def enqueue_req(self, conn: TConn) -> None:
        """Every way a connection reaches a thread passes here: read the request first."""
        if self.tls or getattr(conn, "is_http2", False):
            super().enqueue_req(conn)  # TLS and HTTP/2 keep gunicorn's own path
            return
        if getattr(conn, "segsvc_whole", False):
            conn.segsvc_whole = False
            if self.inline:
                self._ready.append(conn)
                self._serve_ready()
            else:
                super().enqueue_req(conn)
            return
        # Bytes a previous request's body read pulled in already (pipelining) come first.
        held = conn.parser.unreader.take_buffered() if conn.parser is not None else b""
        conn.segsvc_buf = bytearray(held)
        conn.segsvc_deadline = time.monotonic() + self.read_timeout
        if self._complete(conn):
            self._hand_over(conn)
            return
        if conn.sock.getblocking():  # a system call each time: only when it changes anything
            conn.sock.setblocking(False)
        # Usually the request is already there (a kept-alive connection the poller just saw
        # readable, or a new one whose request came with it): read it now rather than after
        # another turn of the event loop.
        state = self._read(conn)
        if state is None:
            return
        if state:
            self._hand_over(conn)
            return
        self.reading.append(conn)
        if self.inline:
            self._watch(conn)
        else:
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, conn))

    def init_process(self) -> None:
        """gunicorn's start-up and run loop, reading settings from a :class:`SettledConfig`; a
        loop that ended cleanly (SIGTERM, recycling, the master gone) marks the worker to leave
        without the interpreter's teardown.

        That teardown frees every object the worker inherited from the master, writing their
        reference counts: about 27,000 pages copied on write and 120 ms of CPU per exit on the
        production-sized bundle (bench/RESULTS.md), on the core whose connections the
        replacement has just taken over. gunicorn.conf.py's ``worker_exit`` skips it with
        ``os._exit`` once gunicorn has logged the exit; the metrics are written by then
        (:meth:`run`) and the log handlers are flushed there. A replacement settles its
        configuration in its idle-priority start-up instead (:meth:`load_wsgi`).
        """
        if not self.segsvc_replacement:
            self._settle()
        super().init_process()
        self.segsvc_exit_fast = True

    def _settle(self) -> None:
        self.cfg = SettledConfig(self.cfg)
        remember_trusted_peers()

    #: set by gunicorn.conf.py's ``post_fork`` in a worker forked to replace one that keeps
    #: serving until this one is ready (recycling, a SIGHUP roll-out)
    segsvc_replacement = False

    def load_wsgi(self) -> None:
        """gunicorn's app load; in a replacement, in a thread at idle priority (api/priority.py).

        The worker it replaces serves from the same core meanwhile: at equal priority the app
        build took the core from it in slices of up to 4 ms, each holding up every request in
        flight. Nothing waits for a replacement (the master stops its predecessor once it is
        ready), so its app is built while the serving worker waits, handing the core back every
        ~0.5 ms of work (``api.priority.yielding``). This thread only waits for the build,
        asleep (it would otherwise wake every 5 ms for the interpreter lock the build holds, at
        normal priority: 21 ms of the serving core over a 7-s build, measured), and then serves,
        at normal priority. The build itself tells the master the worker is alive as it goes: a
        build starved for longer than ``GUNICORN_TIMEOUT`` gets the replacement stopped, and the
        worker it was to replace keeps serving (api/fleet.py tries again later).
        """
        if not self.segsvc_replacement:
            super().load_wsgi()
            return
        failure: list[BaseException] = []
        lowered: list[str | None] = []

        def build() -> None:
            lowered.append(lower_thread())
            try:
                with yielding(on_offer=self.notify):
                    # settled here (~0.7 ms): until now gunicorn's start-up read the plain Config
                    self._settle()
                    super(WholeRequestWorker, self).load_wsgi()
            except BaseException as exc:  # noqa: BLE001 -- raised again in the worker's thread
                failure.append(exc)

        builder = threading.Thread(target=build, name="replacement-start-up", daemon=True)
        builder.start()
        builder.join()
        if failure:
            raise failure[0]
        self.log.info(
            "replacement worker %s: app built at %s",
            self.pid,
            lowered[0] or "normal priority (lowering refused)",
        )

    def run(self) -> None:
        """gthread's event loop; the app's batched metrics are written before the worker exits."""
        from api import metrics  # the app has imported it by now (prometheus_client set up)

        self._metrics = metrics
        try:
            super().run()
        finally:
            metrics.flush_pending()

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        """gthread's wait for events, writing the batched metrics first when nothing is waiting.

        So a scrape of any worker sees every request answered before it, give or take the
        moment between an answer's send and this write (and at most a second's worth while the
        workers are busy without a break).
        """
        metrics = self._metrics
        if metrics is not None and metrics.any_pending():
            try:
                events = self.poller.select(0)
            except InterruptedError:
                events = []
            if events:
                for key, _ in events:
                    key.data(key.fileobj)
                return
            metrics.flush_pending()
        super().wait_for_and_dispatch_events(timeout)

    def _serve_ready(self) -> None:
        """Answer the whole requests waiting, in order, in this (the event loop's) thread.

        A request served here can queue another (pipelined bytes already read): the loop below
        takes it, so the stack does not grow with the number of pipelined requests.
        """
        if self._serving:
            return
        self._serving = True
        try:
            while self._ready:
                conn = self._ready.popleft()
                try:
                    result = self.handle(conn)
                except Exception:  # handle() answers its own errors; never lose the loop
                    self.log.exception("Error handling request")
                    result = False
                self.finish_request(conn, _Done(result))
        finally:
            self._serving = False

    def _complete(self, conn: TConn) -> bool:
        buf = conn.segsvc_buf
        end = buf.find(_HEAD_END)
        # (``find``, not ``in``: ``bytes in bytearray`` first tries the bytes as an integer and
        # builds a TypeError)
        if _EXPECT.search(buf, 0, end + 2 if end >= 0 else 0):
            # The client waits for "100 Continue" before sending the body: say it now, and
            # drop the header so that gunicorn does not say it again.
            conn.segsvc_buf = buf = bytearray(_EXPECT.sub(b"", bytes(buf), count=1))
            with contextlib.suppress(OSError):
                conn.sock.send(_CONTINUE)
        return request_complete(buf, self.body_limit)

    def _read(self, conn: TConn) -> bool | None:
        """Read what the socket has; True when the request is whole, None when the connection
        was closed (and dropped)."""
        sock = conn.sock
        while True:
            try:
                data = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                data = b""
            if not data:
                self._drop(conn)
                return None
            conn.segsvc_buf += data
            if len(data) < 65536:
                break
        return self._complete(conn)

    # ---- one thread: a connection stays on the poller from its first wait to its close --------
    def _watch(self, conn: TConn) -> None:
        """Put ``conn`` on the poller unless it is there already (one thread only)."""
        if not getattr(conn, "segsvc_polled", False):
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_event, conn))
            conn.segsvc_polled = True

    def _unwatch(self, conn: TConn) -> None:
        if getattr(conn, "segsvc_polled", False):
            conn.segsvc_polled = False
            with contextlib.suppress(KeyError, ValueError, OSError):
                self.poller.unregister(conn.sock)

    def _on_event(self, conn: TConn, sock: Any) -> None:
        """A watched connection is readable: a kept-alive one starts its next request, one
        whose request is being read reads on."""
        if getattr(conn, "segsvc_kept", False):
            conn.segsvc_kept = False
            self.keepalived_conns.remove(conn)
            self.enqueue_req(conn)
            return
        if self._read(conn):
            self.reading.remove(conn)
            self._hand_over(conn)

    def finish_request(self, conn: TConn, fs: Any) -> None:
        """gthread's ``finish_request``; with one thread the connection stays on the poller
        between requests instead of leaving it and coming back for every request (two
        ``epoll_ctl`` calls and the selector's bookkeeping each time)."""
        if not self.inline:
            super().finish_request(conn, fs)
            return
        try:
            if fs.result():
                unreader = conn.parser.unreader
                if unreader.holds() if type(unreader) is HeldUnreader else unreader.buf.getvalue():
                    # a body read pulled in the next request's bytes: they are not on the socket
                    self.enqueue_req(conn)
                    return
                conn.sock.setblocking(False)
                conn.set_timeout()
                if not self.alive:
                    conn.timeout = min(conn.timeout, time.monotonic() + STOP_KEEPALIVE_LINGER)
                self.keepalived_conns.append(conn)
                conn.segsvc_kept = True
                self._watch(conn)
            else:
                self._unwatch(conn)
                self.nr_conns -= 1
                conn.close(graceful=True)
        except Exception:  # noqa: BLE001 -- as gthread: close this connection, keep the loop
            self._unwatch(conn)
            self.nr_conns -= 1
            conn.close()

    def _on_readable(self, conn: TConn, sock: Any) -> None:
        state = self._read(conn)
        if state:
            self.poller.unregister(sock)
            self.reading.remove(conn)
            self._hand_over(conn)

    def _hand_over(self, conn: TConn) -> None:
        buf = conn.segsvc_buf
        # a small request is given to gunicorn's unreader as it is (cheaper than the pieces)
        conn.segsvc_pending = bytes(buf) if len(buf) < HOLD_LIMIT else split_request(buf)
        conn.segsvc_buf = bytearray()
        conn.segsvc_whole = True
        conn.data_ready = True
        self.enqueue_req(conn)

    def handle(self, conn: TConn) -> Any:
        """In the thread: give the parser the buffered request, then gunicorn's handling."""
        pending = getattr(conn, "segsvc_pending", None)
        if pending is not None:
            conn.segsvc_pending = None
            # blocking again for the handler: conn.init() sets it on a new connection, gthread's
            # handle() on every request
            conn.init()
            parser = conn.parser
            if type(parser) is RequestParser:
                parser.__class__ = BodyAwareParser
            if parser is not None:
                unreader = parser.unreader
                if type(pending) is bytes:
                    unreader.unread(pending)
                else:
                    if type(unreader) is SocketUnreader and not unreader.buf.getvalue():
                        unreader.__class__ = HeldUnreader
                    if type(unreader) is HeldUnreader:
                        unreader.hold(pending)
                    else:
                        unreader.unread(b"".join(pending))
        return super().handle(conn)

    def handle_request(self, req: Any, conn: TConn) -> bool:
        """gthread's ``handle_request`` (gunicorn 27.0.1), answering with
        :class:`OneWriteResponse`; every other step is gunicorn's."""
        environ: dict[str, Any] = {}
        resp = None
        try:
            self.cfg.pre_request(self, req)
            request_start = datetime.now()
            resp, environ = wsgi.create(
                req, conn.sock, conn.client, conn.server, self.cfg, OneWriteResponse
            )
            environ["wsgi.multithread"] = True
            self.nr += 1
            if self.nr >= self.max_requests:
                if self.alive:
                    self.log.info("Autorestarting worker after current request.")
                    self.alive = False
                resp.force_close()

            if (
                not self.alive
                or not self.cfg.keepalive
                or len(self.keepalived_conns) >= self.max_keepalived
            ):
                resp.force_close()

            body = req.body
            if (
                type(body) is Body
                and type(body.reader) is LengthReader
                and body.reader.length >= HOLD_LIMIT
            ):
                body.__class__ = WholeBody  # a large body is read in one step (see there)
            respiter = self.wsgi(environ, resp.start_response)
            try:
                if isinstance(respiter, environ["wsgi.file_wrapper"]):
                    resp.write_file(respiter)
                else:
                    for item in respiter:
                        resp.write(item)

                resp.close()
            finally:
                request_time = datetime.now() - request_start
                self.log.access(resp, req, environ, request_time)
                if hasattr(respiter, "close"):
                    respiter.close()

            if resp.should_close():
                self.log.debug("Closing connection.")
                return False
        except OSError:
            raise  # gthread's handle() sorts socket errors out
        except (Exception, SystemExit):
            if resp and resp.headers_sent:
                # Timeout abort is SystemExit. If we already started the
                # response, writing a 500 on the same socket corrupts it.
                self.log.exception("Error handling request")
                util.close_graceful(conn.sock)
                raise StopIteration() from None
            raise
        finally:
            try:
                self.cfg.post_request(self, req, environ, resp)
            except Exception:
                self.log.exception("Exception in post_request hook")

        return True

    def _drop(self, conn: TConn, answer: bytes = b"") -> None:
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(conn.sock)
        with contextlib.suppress(ValueError):
            self.reading.remove(conn)
        if answer:
            with contextlib.suppress(OSError):
                conn.sock.send(answer)
        self.nr_conns -= 1
        conn.close()

    def murder_pending(self) -> None:
        """gunicorn's timeouts, plus: a request not whole in time is answered 408 and closed."""
        super().murder_pending()
        now = time.monotonic()
        while self.reading and self.reading[0].segsvc_deadline <= now:
            conn = self.reading[0]
            # only requests that have started get an answer; an idle keep-alive just closes
            self._drop(conn, _timeout_answer() if conn.segsvc_buf else b"")


class _Done:
    """What gthread's ``finish_request`` reads from a finished request's future."""

    __slots__ = ("_result",)

    def __init__(self, result: Any) -> None:
        self._result = result

    def result(self) -> Any:
        """The request handler's answer: keep the connection alive or not."""
        return self._result

    def cancelled(self) -> bool:
        """Never: the request ran."""
        return False


def _timeout_answer() -> bytes:
    from api.errors import protocol_error_response

    return protocol_error_response(408)
