"""Counter values a worker holds until Redis says they changed (server-assisted client caching).

One subscriber connection per worker process (a daemon thread, started on first use, so after
gunicorn's fork) turns on ``CLIENT TRACKING on REDIRECT <its own id> BCAST PREFIX <prefix>:cap:``
and subscribes to ``__redis__:invalidate``: every change of any cap key (the commit script's
``INCR``, an expiry, an operator's ``DEL``), by any client, reaches every worker as a message
naming the key, and the worker drops its value. Read-only cap checks whose counters are all
held answer with no round trip; the others read them and hold the reply.

Why our own and not redis-py's ``cache_config`` (8.1, RESP3): it caches whole commands (one
``MGET`` per customer's key list, dropped whenever any key of it changes, and the campaign-day
key changes with every send), does not cache pre-packed commands (the prefetch's), and learns of
invalidations only when the connection that read the entry is next used or drained from another
thread under the pool lock; ours holds per-key values and has one listener for the worker.

The subscriber speaks RESP2 (redis-py 8 defaults to RESP3, where a redirected client gets
push messages instead of the channel's). Race rule: an invalidation *epoch* counts every
message; a reply is held only if no message arrived between sending its read and holding it
(a change that raced the read may be in the reply or not: conservative, never stale). While the
subscriber is not connected and subscribed, nothing is held and every check reads, as without
it; losing the connection clears every value (changes then go unseen) and the thread connects
again after :data:`RETRY_SECONDS`. A link that dies silently (no reset) is found by a ``PING``
after :data:`HEALTH_SECONDS` of silence, unanswered for as long again: until then held values
may answer (at most about two seconds, the one window in which a change can go unseen longer
than a message's flight). At most ``max_entries`` keys are held (the oldest first out).

The same subscriber keeps the worker's summary of which customers have counters this week
(:mod:`api.cap_summary`, optional): it loads the week's bitmap once subscribed (and again when
the week turns) and marks the customers its messages name; losing the connection clears it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import redis

from api.cap_summary import SeenSummary

log = logging.getLogger(__name__)

CHANNEL = "__redis__:invalidate"
#: seconds between attempts to (re)connect the subscriber
RETRY_SECONDS = 1.0
#: seconds of silence after which the subscriber PINGs; no answer in as long again: lost
HEALTH_SECONDS = 1.0
#: most seconds loading the week's seen-customers bitmap may take (api/cap_summary.py)
LOAD_SECONDS = 10.0


class CapTracker:
    """Per-key counter values of one worker, kept true by Redis's invalidation messages."""

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        *,
        max_entries: int = 65_536,
        on_invalidate: Callable[[list[str] | None], None] | None = None,
        summary: SeenSummary | None = None,
        week: Callable[[], str] | None = None,
    ) -> None:
        self.client = client
        #: keys whose changes are broadcast (the caps' counters)
        self.key_prefix = f"{prefix}:cap:"
        self.max_entries = max_entries
        #: told of each invalidation (keys, or None: all) after the values are dropped
        self.on_invalidate = on_invalidate
        #: which customers may have counters this week (kept by the subscriber), or None
        self.summary = summary
        #: the current ISO week label (the summary's bitmap follows it)
        self.week = week
        if summary is not None and week is None:
            raise ValueError("a summary needs week=, the current ISO week label")
        # ordered, so the oldest entries go first in O(1) each (a dict's list(values)[:n] copies
        # every key: measured 0.73x -> 0.47x of base on cold customers once full)
        self._values: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()
        #: bumped by every invalidation and every connection loss (the race rule)
        self.epoch = 0
        #: True while subscribed with tracking on: only then are values held or used
        self.live = False
        self._pid = -1
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._connection: Any = None

    # ---- the reader's side --------------------------------------------------------------------
    def ensure_started(self) -> None:
        """Start the subscriber thread in this process (once; again after a fork)."""
        if self._pid == os.getpid() and self._thread is not None:
            return
        with self._lock:
            if self._pid == os.getpid() and self._thread is not None:
                return
            # a forked child inherits the parent's values but not its thread: start clean
            self._values = OrderedDict()
            self.live = False
            if self.summary is not None:
                self.summary.clear()
            self._pid = os.getpid()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._run, name="caps-invalidation", daemon=True)
            self._thread.start()

    def get_all(self, keys: Sequence[str]) -> dict[str, int] | None:
        """The held values of every key, or None when any is not held (or not live)."""
        if not self.live:
            return None
        values = self._values
        try:
            return {k: values[k] for k in keys}
        except KeyError:
            return None

    def mark(self) -> int | None:
        """The epoch before sending a read (None: not live, so nothing will be held)."""
        self.ensure_started()
        return self.epoch if self.live else None

    def hold(self, mark: int | None, counts: dict[str, int]) -> None:
        """Hold a read's ``counts`` if no invalidation arrived since ``mark`` (see module doc)."""
        if mark is None:
            return
        with self._lock:
            if not self.live or self.epoch != mark:
                return
            values = self._values
            values.update(counts)
            excess = len(values) - self.max_entries
            for _ in range(excess):  # insertion order: the oldest first
                values.popitem(last=False)

    def drop(self, keys: Iterable[str]) -> None:
        """Forget ``keys`` now (this worker just changed them; the message follows)."""
        with self._lock:
            self.epoch += 1
            for key in keys:
                self._values.pop(key, None)

    def __len__(self) -> int:
        return len(self._values)

    # ---- the subscriber -----------------------------------------------------------------------
    def _invalidate(self, keys: list[str] | None) -> None:
        with self._lock:
            self.epoch += 1
            if keys is None:
                self._values = OrderedDict()
            else:
                for key in keys:
                    self._values.pop(key, None)
        if keys is not None and self.summary is not None:
            self.summary.note(keys)
        if self.on_invalidate is not None:
            self.on_invalidate(keys)

    def _load_summary(self) -> None:
        """Load the current week's bitmap: only from the subscriber thread, once subscribed, so
        every send after the GET arrives as a message read after this (module doc)."""
        summary, week = self.summary, self.week
        if summary is None or week is None:
            return
        label = week()
        # a connection of its own, not the pool's: a bitmap of megabytes may take longer than
        # the requests' short REDIS_TIMEOUT_MS
        pool = self.client.connection_pool
        kwargs = {**pool.connection_kwargs, "protocol": 2, "socket_timeout": LOAD_SECONDS}
        conn = pool.connection_class(**kwargs)
        try:
            conn.connect()
            conn.send_command("GET", summary.key(label))
            raw = conn.read_response()
        finally:
            conn.disconnect()
        summary.load(label, raw)

    def _lost(self) -> None:
        with self._lock:
            self.live = False
            self.epoch += 1
            self._values = OrderedDict()
        if self.summary is not None:
            self.summary.clear()
        if self.on_invalidate is not None:
            self.on_invalidate(None)

    def _connect(self) -> Any:
        pool = self.client.connection_pool
        kwargs = {**pool.connection_kwargs, "protocol": 2, "socket_timeout": None}
        conn = pool.connection_class(**kwargs)
        conn.connect()
        conn.send_command("CLIENT", "ID")
        own_id = conn.read_response()
        conn.send_command(
            "CLIENT", "TRACKING", "on", "REDIRECT", own_id, "BCAST", "PREFIX", self.key_prefix
        )
        conn.read_response()
        conn.send_command("SUBSCRIBE", CHANNEL)
        conn.read_response()  # the subscription's confirmation: tracking is on from here
        return conn

    def _run(self) -> None:
        stop = self._stop
        while not stop.is_set():
            try:
                conn = self._connection = self._connect()
                with self._lock:
                    self.epoch += 1
                    self._values = OrderedDict()
                    self.live = True
                self._load_summary()
                summary, week = self.summary, self.week
                ping_sent = False
                while not stop.is_set():
                    if summary is not None and week is not None and summary.week != week():
                        self._load_summary()  # a new week (at most HEALTH_SECONDS late)
                    if not conn.can_read(timeout=HEALTH_SECONDS):
                        # quiet: a silently dead link would keep stale values, so ask
                        if ping_sent:
                            raise redis.ConnectionError("no answer to PING")
                        conn.send_command("PING")
                        ping_sent = True
                        continue
                    message = conn.read_response()
                    ping_sent = False  # any message proves the link alive
                    if isinstance(message, list) and len(message) == 3 and message[0] == b"message":
                        raw = message[2]
                        self._invalidate(
                            None if raw is None else [k.decode() for k in raw]  # None: flushed
                        )
            except Exception as exc:  # noqa: BLE001 - whatever broke it, the thread must live on
                # (a socket closed by stop() from another thread surfaces as a TypeError)
                if not stop.is_set():
                    # once per outage, not once per retry (Redis down: every second)
                    (log.warning if self.live else log.debug)(
                        "cap invalidations lost (%s): reading Redis every time", exc
                    )
            finally:
                self._lost()
                conn, self._connection = self._connection, None
                if conn is not None:
                    conn.disconnect()
            stop.wait(RETRY_SECONDS)

    def stop(self) -> None:
        """Stop the subscriber (tests): the values are cleared and nothing is held after."""
        self._stop.set()
        conn = self._connection
        if conn is not None:
            with contextlib.suppress(redis.RedisError, OSError):
                conn.disconnect()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._lost()

    def kill_connection(self) -> None:
        """Close the subscriber's socket, as a network failure would (tests)."""
        conn = self._connection
        if conn is not None and conn._sock is not None:
            conn._sock.shutdown(socket.SHUT_RDWR)
