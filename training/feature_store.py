"""Bulk-load customer features into the online feature store (Redis), for requests by customer id.

``python -m training features load --input customers.parquet`` writes one hash per customer in
the format of :mod:`scoring.online` (key and fields come from there, so the API reads exactly what
is written here). The table is checked against the bundle's feature schema *before* anything is
written: id column present, ids unique and non-empty, every input column present and numeric,
each value within its kind's domain. A failed check writes nothing.

Why our own Redis writer: redis-py packs each command and parses each reply in Python (about
10 µs per 8-field ``HSET``), which caps a load near 80,000 customers/s before Redis does any
work (``bench/feature_load.py`` measures it at a fifth of ours). Redis documents the faster way
for mass insertion: send pre-built protocol (RESP) in large chunks and count the replies (what
``redis-cli --pipe`` does). Here the commands of a chunk are built column-wise with Arrow's
string kernels, :class:`RespPipe` sends a chunk whole on a plain socket while the next one is
built, and counts the replies by their line ends; any error reply stops the load with the
server's message. The sending and reply counting run on a thread (:class:`ChunkSender`: the
socket calls and Arrow's kernels release the GIL), so the client builds chunk i+1 while Redis
works through chunk i and Redis never waits for the client: the load runs at Redis's own pace
(``bench/feature_load.py`` compares it with a replay of the same bytes). Fields an earlier load wrote but this row has no value for are removed
(``HDEL``), so a reload replaces a customer's features; the stream job's ``@`` fields are kept.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from scoring.features import FeatureSchema
from scoring.ids import ids_as_text
from scoring.online import UPDATED_AT, format_number, key_prefix, schema_id
from training.validate import TableError

log = logging.getLogger(__name__)

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_PREFIX = "segsvc"
CHUNK = 10_000


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(value), value)


def command(*args: bytes) -> bytes:
    """One Redis command in RESP (an array of bulk strings)."""
    return b"*%d\r\n" % len(args) + b"".join(_bulk(a) for a in args)


class RedisReplyError(RuntimeError):
    """Redis answered an error to a command of the load."""


class RespPipe:
    """A raw Redis connection that sends pre-built RESP chunks and counts the replies."""

    def __init__(self, url: str, *, timeout: float = 30.0) -> None:
        parsed = urlparse(url)
        if parsed.scheme not in ("redis", ""):
            raise ValueError(f"{url!r}: only redis://host:port/db URLs are supported here")
        self.sock = socket.create_connection(
            (parsed.hostname or "127.0.0.1", parsed.port or 6379), timeout=timeout
        )
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer = b""
        self._pending = 0
        setup: list[bytes] = []
        if parsed.password:
            user = unquote(parsed.username) if parsed.username else None
            args = (
                [b"AUTH"] + ([user.encode()] if user else []) + [unquote(parsed.password).encode()]
            )
            setup.append(command(*args))
        db = (parsed.path or "/0").lstrip("/") or "0"
        if db != "0":
            setup.append(command(b"SELECT", db.encode()))
        if setup:
            self.send(b"".join(setup), len(setup))

    def send(self, payload: bytes, n_commands: int) -> None:
        """Send ``n_commands`` commands as one chunk and wait for every reply."""
        self.write(payload, n_commands)
        self.drain()

    def write(self, payload: bytes, n_commands: int) -> None:
        """Send a chunk without waiting: its replies are read by the next :meth:`drain`."""
        self.sock.sendall(payload)
        self._pending += n_commands

    def drain(self) -> None:
        """Read the replies of every chunk written so far; raise on the first error reply."""
        failed: bytes | None = None
        # Every reply of the commands we send (integers, +OK, errors) is one line.
        buffer = self._buffer
        while self._pending:
            if buffer.count(b"\r\n") == 0:
                data = self.sock.recv(1 << 20)
                if not data:
                    raise ConnectionError("Redis closed the connection during the load")
                buffer += data
            lines = buffer.count(b"\r\n")
            take = min(lines, self._pending)
            cut = _nth_line_end(buffer, take) if take < lines else len(buffer)
            chunk, buffer = buffer[:cut], buffer[cut:]
            self._pending -= take
            if failed is None and (chunk.startswith(b"-") or b"\r\n-" in chunk):
                at = 0 if chunk.startswith(b"-") else chunk.index(b"\r\n-") + 2
                failed = chunk[at : chunk.index(b"\r\n", at)]
        self._buffer = buffer
        if failed is not None:
            raise RedisReplyError(failed[1:].decode("utf-8", "replace"))

    def close(self) -> None:
        """Close the connection."""
        self.sock.close()


def _nth_line_end(buffer: bytes, n: int) -> int:
    at = -2
    for _ in range(n):
        at = buffer.index(b"\r\n", at + 2)
    return at + 2


class ChunkSender:
    """Sends RESP chunks on a :class:`RespPipe` from a thread, reading each chunk's replies.

    :meth:`put` hands a chunk over (blocking while ``depth`` chunks already wait, which bounds
    the memory of a large load); :attr:`confirmed` counts the customers whose replies have all
    been read; :meth:`close` waits for the last reply and raises the first error (an error
    reply of Redis, a lost connection). After an error the remaining chunks are not sent.
    """

    def __init__(self, pipe: RespPipe, *, depth: int = 2) -> None:
        self.pipe = pipe
        self.confirmed = 0
        self.error: BaseException | None = None
        self._queue: queue.Queue[tuple[bytes, int, int] | None] = queue.Queue(maxsize=depth)
        self._thread = threading.Thread(target=self._run, name="feature-load-sender", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self.error is not None:
                continue  # keep taking chunks so put() never blocks; send nothing more
            payload, n_commands, n_customers = item
            try:
                self.pipe.send(payload, n_commands)
            except Exception as exc:  # noqa: BLE001 -- re-raised in the loading thread by put/close
                self.error = exc
                continue
            self.confirmed += n_customers

    def put(self, payload: bytes, n_commands: int, n_customers: int) -> None:
        """Queue a chunk of ``n_commands`` commands for ``n_customers`` customers."""
        if self.error is not None:
            raise self.error
        self._queue.put((payload, n_commands, n_customers))

    def close(self) -> None:
        """Wait until every queued chunk is answered; raise the first error, if any."""
        self._queue.put(None)
        self._thread.join()
        if self.error is not None:
            raise self.error


@dataclass(frozen=True)
class LoadResult:
    """What a load wrote."""

    customers: int
    seconds: float
    schema_id: str
    key_prefix: str

    @property
    def per_second(self) -> float:
        """Customers written per second."""
        return self.customers / self.seconds if self.seconds > 0 else float("inf")


def check_table(frame: pd.DataFrame, schema: FeatureSchema, id_column: str) -> dict[str, Any]:
    """Columns of ``frame`` ready to write: ids as text and each input as float64 or text.

    Raises :class:`TableError` naming the column, the value and what is allowed.
    """
    if id_column not in frame.columns:
        raise TableError(
            f"id column absent (the table has: {', '.join(map(str, frame.columns[:20]))})",
            column=id_column,
        )
    missing = [c for c in [*schema.input_names, *schema.categorical_names] if c not in frame]
    if missing:
        raise TableError(
            f"input columns of the bundle's schema absent: {', '.join(missing)}", column=missing[0]
        )
    ids = ids_as_text(frame[id_column])
    empty = ids.isna() | (ids == "")
    if empty.any():
        raise TableError(f"empty id at row {int(np.argmax(empty.to_numpy()))}", column=id_column)
    dup = ids.duplicated()
    if dup.any():
        pos = int(np.argmax(dup.to_numpy()))
        raise TableError(f"duplicate id {ids.iloc[pos]!r} at row {pos}", column=id_column)
    columns: dict[str, Any] = {"__id__": ids.to_numpy(dtype=object)}
    for spec in schema.inputs:
        raw = frame[spec.name]
        values = pd.to_numeric(raw, errors="coerce")
        bad = values.isna() & raw.notna()
        if bad.any():
            pos = int(np.argmax(bad.to_numpy()))
            raise TableError(
                f"non-numeric value {raw.iloc[pos]!r} for customer {ids.iloc[pos]!r}",
                column=spec.name,
            )
        arr = values.to_numpy(dtype=np.float64, na_value=np.nan)
        if not np.isfinite(arr[~np.isnan(arr)]).all():
            raise TableError("infinite value", column=spec.name)
        if spec.required and np.isnan(arr).any():
            pos = int(np.argmax(np.isnan(arr)))
            raise TableError(
                f"missing value for customer {ids.iloc[pos]!r}; the input is required",
                column=spec.name,
            )
        lo, hi = spec.minimum, spec.maximum
        out = (lo is not None and (arr < lo)) | (hi is not None and (arr > hi))
        if np.any(out):
            pos = int(np.argmax(out))
            allowed = f">= {lo:g}" if hi is None else f"in [{lo:g}, {hi:g}]"
            raise TableError(
                f"value {arr[pos]!r} for customer {ids.iloc[pos]!r}: a {spec.kind} must be "
                f"{allowed}",
                column=spec.name,
            )
        columns[spec.name] = arr
    for spec in schema.categoricals:
        columns[spec.name] = frame[spec.name].astype("string").to_numpy(dtype=object, na_value=None)
    return columns


def _commands(
    columns: dict[str, Any],
    schema: FeatureSchema,
    prefix: bytes,
    start: int,
    stop: int,
    updated_at: bytes,
) -> tuple[bytes, int]:
    """RESP for customers ``start:stop``: one HSET each (+ one HDEL where values are missing).

    Rows with every value are built column-wise by Arrow's string kernels (number formatting
    and concatenation in C++, about 3x faster than per-value Python); the rare rows with a
    missing value take the per-row path below.
    """
    names = [*schema.input_names, *schema.categorical_names]
    values = []
    complete = np.ones(stop - start, dtype=bool)
    for spec in schema.inputs:
        arr = columns[spec.name][start:stop]
        complete &= ~np.isnan(arr)
        values.append(arr)
    for spec in schema.categoricals:
        arr = columns[spec.name][start:stop]
        complete &= np.array([v is not None for v in arr], dtype=bool)
        values.append(arr)
    ids = columns["__id__"][start:stop]
    head = b"*%d\r\n" % (2 + 2 * (len(names) + 1)) + _bulk(b"HSET")
    stamp = _bulk(UPDATED_AT.encode()) + _bulk(updated_at)
    out = [_resp_rows(head, prefix, ids[complete], names, [v[complete] for v in values], stamp)]
    n_commands = int(complete.sum())
    for row in np.flatnonzero(~complete):
        payload, n = _row_commands(prefix, ids[row], names, [v[row] for v in values], stamp)
        out.append(payload)
        n_commands += n
    return b"".join(out), n_commands


def _resp_rows(
    head: bytes, prefix: bytes, ids: np.ndarray, names: list[str], values: list, stamp: bytes
) -> bytes:
    """One HSET per row, every value present, concatenated (Arrow string kernels)."""
    if len(ids) == 0:
        return b""
    key = pc.binary_join_element_wise(prefix.decode(), pa.array(ids, pa.string()), "")
    parts: list[Any] = [head.decode() + "$", _length(key), "\r\n", key, "\r\n"]
    for name, column in zip(names, values, strict=True):
        text = _as_text(column)
        parts += [_bulk(name.encode()).decode() + "$", _length(text), "\r\n", text, "\r\n"]
    parts.append(stamp.decode())
    rows = pc.binary_join_element_wise(*parts, "")
    offsets = np.frombuffer(rows.buffers()[1], dtype=np.int32)[
        rows.offset : rows.offset + len(rows) + 1
    ]
    return rows.buffers()[2].to_pybytes()[offsets[0] : offsets[-1]]


def _as_text(column: np.ndarray) -> pa.Array:
    if column.dtype == np.float64:
        # Arrow writes the shortest text that reads back to the same double ("14" for 14.0).
        return pc.cast(pa.array(column, pa.float64()), pa.string())
    return pa.array([str(v) for v in column], pa.string())


def _length(text: pa.Array) -> pa.Array:
    # RESP bulk lengths count bytes, not characters (ids and categories may be non-ASCII).
    return pc.cast(pc.binary_length(pc.cast(text, pa.binary())), pa.string())


def _row_commands(
    prefix: bytes, cid: str, names: list[str], values: list, stamp: bytes
) -> tuple[bytes, int]:
    """HSET of the values present, HDEL of the missing ones (so a reload replaces them)."""
    key = _bulk(prefix + cid.encode())
    present: list[bytes] = []
    absent: list[bytes] = []
    for name, v in zip(names, values, strict=True):
        if v is None or (isinstance(v, float) and v != v):
            absent.append(_bulk(name.encode()))
            continue
        text = format_number(v) if isinstance(v, float) else str(v)
        present.append(_bulk(name.encode()) + _bulk(text.encode()))
    hset = b"*%d\r\n" % (2 + 2 * (len(present) + 1)) + _bulk(b"HSET") + key
    hdel = b"*%d\r\n" % (2 + len(absent)) + _bulk(b"HDEL") + key + b"".join(absent)
    return hset + b"".join(present) + stamp + hdel, 2


def load_features(
    frame: pd.DataFrame,
    schema: FeatureSchema,
    *,
    redis_url: str = DEFAULT_REDIS_URL,
    prefix: str = DEFAULT_PREFIX,
    id_column: str | None = None,
    chunk: int = CHUNK,
    progress: Callable[[int], None] | None = None,
    clock: Callable[[], float] = time.time,
) -> LoadResult:
    """Check ``frame`` and write every customer's features; ``progress(n)`` after each chunk."""
    id_column = id_column or schema.id_column
    columns = check_table(frame, schema, id_column)
    n = len(frame)
    keys = key_prefix(prefix, schema).encode()
    stamp = format_number(clock()).encode()
    started = time.perf_counter()
    pipe = RespPipe(redis_url)
    reported = 0

    def report() -> None:
        nonlocal reported
        if progress is not None and sender.confirmed > reported:
            done = sender.confirmed
            progress(done - reported)
            reported = done

    try:
        sender = ChunkSender(pipe)
        try:
            for start in range(0, n, chunk):
                stop = min(start + chunk, n)
                payload, n_commands = _commands(columns, schema, keys, start, stop, stamp)
                sender.put(payload, n_commands, stop - start)
                report()
        finally:
            sender.close()
        report()
    finally:
        pipe.close()
    return LoadResult(n, time.perf_counter() - started, schema_id(schema), keys.decode())


def id_column_of(frame: pd.DataFrame, schema: FeatureSchema, given: str | None) -> str:
    """The id column: as given, else the schema's, else ``customer_id``."""
    if given:
        return given
    for candidate in (schema.id_column, "customer_id"):
        if candidate in frame.columns:
            return candidate
    return schema.id_column
