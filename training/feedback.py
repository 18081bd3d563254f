"""Folding the feedback stream into Parquet: Redis Stream -> event parts -> a response history.

The service appends every feedback event (``POST /feedback``: impression, click, conversion; and
its own ``holdout`` records for customers it held out of a campaign) to a Redis Stream as one
JSON field. :func:`fold` reads the stream through a consumer group and, batch by batch:

1. drops events whose ``event_id`` is already folded (in an earlier part or earlier in the batch);
2. writes the rest to ``<out>/events/part-<first id>-<last id>.parquet`` through a temporary file
   that is flushed, fsynced and renamed into place (a reader never sees half a file);
3. only then acknowledges the batch (``XACK``).

A crash before step 3 leaves the batch pending in the group: the next run reads this consumer's
pending entries first, finds the ones already written by ``event_id`` and acknowledges them, so
nothing is lost and nothing is counted twice. After the stream is drained it rebuilds
``<out>/responses.parquet`` (temp + rename too): one row per (customer, campaign) with
``responded`` (any event of the outcome type, default conversion) and ``treated`` (1 when an
impression or click of the offer was recorded, 0 when the service held the customer out); pairs
with neither record are left out. The next training reads it as a long history with
``treated_column = "treated"``.
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import redis

log = logging.getLogger(__name__)

EVENTS_DIR = "events"
HISTORY_FILE = "responses.parquet"
COLUMNS = (
    "event_id",
    "customer_id",
    "campaign_id",
    "type",
    "value",
    "timestamp",
    "model_version",
    "stream_id",
)
SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("customer_id", pa.string()),
        ("campaign_id", pa.string()),
        ("type", pa.string()),
        ("value", pa.float64()),
        ("timestamp", pa.string()),
        ("model_version", pa.string()),
        ("stream_id", pa.string()),
    ]
)
#: the stream entry field holding the event JSON (written by api/feedback.py)
FIELD = b"event"
HOLDOUT = "holdout"
#: event types that show the offer was sent
SENT_TYPES = ("impression", "click")


@dataclass
class FoldSummary:
    """What one fold run did."""

    read: int = 0
    written: int = 0
    duplicates: int = 0
    parts: int = 0
    history_rows: int = 0


def ensure_group(client: redis.Redis, stream: str, group: str) -> None:
    """Create the consumer group at the start of the stream (and the stream) if missing."""
    try:
        client.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def folded_ids(out: Path) -> set[str]:
    """Event ids already in the folded parts (the de-duplication set)."""
    folder = out / EVENTS_DIR
    ids: set[str] = set()
    if folder.is_dir():
        for part in sorted(folder.glob("part-*.parquet")):
            ids.update(pq.read_table(part, columns=["event_id"]).column(0).to_pylist())
    return ids


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(table: pa.Table, path: Path) -> None:
    """Write a Parquet file under a temporary name, fsync it, rename it into place."""
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
    try:
        with open(tmp, "wb") as fh:
            pq.write_table(table, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def _event_row(stream_id: str, fields: dict[bytes, bytes]) -> dict[str, Any] | None:
    try:
        event = orjson.loads(fields[FIELD])
    except (KeyError, orjson.JSONDecodeError):
        log.warning("feedback entry %s is not an event; acknowledged and skipped", stream_id)
        return None
    value = event.get("value")
    return {
        "event_id": str(event.get("event_id")),
        "customer_id": str(event.get("customer_id")),
        "campaign_id": str(event.get("campaign_id")),
        "type": str(event.get("type")),
        "value": float(value) if isinstance(value, int | float) else None,
        "timestamp": None if event.get("timestamp") is None else str(event["timestamp"]),
        "model_version": None
        if event.get("model_version") is None
        else str(event["model_version"]),
        "stream_id": stream_id,
    }


def fold(
    client: redis.Redis,
    stream: str,
    out: str | os.PathLike,
    *,
    group: str = "fold",
    consumer: str = "fold",
    batch_size: int = 1000,
    outcome: str = "conversion",
) -> FoldSummary:
    """Drain ``stream`` into ``out`` (see the module docstring); return what was done."""
    out = Path(out)
    (out / EVENTS_DIR).mkdir(parents=True, exist_ok=True)
    # a run killed mid-write leaves its temporary file: never a part, so safe to remove
    for stale in (out / EVENTS_DIR).glob(".tmp-*"):
        stale.unlink()
    ensure_group(client, stream, group)
    known = folded_ids(out)
    summary = FoldSummary()
    # this consumer's pending entries first (a crashed run's unacknowledged batch), then new ones
    for start in ("0", ">"):
        while True:
            reply = client.xreadgroup(group, consumer, {stream: start}, count=batch_size)
            entries = reply[0][1] if reply else []
            if not entries:
                break
            _fold_batch(client, stream, group, out, entries, known, summary)
    summary.history_rows = write_history(out, outcome=outcome)
    return summary


def _fold_batch(
    client: redis.Redis,
    stream: str,
    group: str,
    out: Path,
    entries: list,
    known: set[str],
    summary: FoldSummary,
) -> None:
    ids = [sid.decode() if isinstance(sid, bytes) else str(sid) for sid, _ in entries]
    rows = []
    for sid, (_, fields) in zip(ids, entries, strict=True):
        row = _event_row(sid, fields)
        if row is None:
            continue
        if row["event_id"] in known:
            summary.duplicates += 1
            continue
        known.add(row["event_id"])
        rows.append(row)
    summary.read += len(entries)
    if rows:
        table = pa.Table.from_pylist(rows, schema=SCHEMA)
        write_atomically(table, out / EVENTS_DIR / f"part-{ids[0]}-{ids[-1]}.parquet")
        summary.written += len(rows)
        summary.parts += 1
    # acknowledged only now: the events are on disk (or were already)
    client.xack(stream, group, *ids)


def read_events(out: str | os.PathLike) -> pd.DataFrame:
    """Every folded event, in stream order."""
    folder = Path(out) / EVENTS_DIR
    parts = sorted(folder.glob("part-*.parquet")) if folder.is_dir() else []
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype="string") for c in COLUMNS})
    return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)


def history_from_events(events: pd.DataFrame, outcome: str = "conversion") -> pd.DataFrame:
    """One row per (customer, campaign): responded (any ``outcome`` event) and treated (0 when
    the service recorded the customer as held out of the campaign, 1 otherwise)."""
    if events.empty:
        return pd.DataFrame(
            {
                "customer_id": pd.Series(dtype="string"),
                "campaign_id": pd.Series(dtype="string"),
                "responded": pd.Series(dtype="int8"),
                "treated": pd.Series(dtype="int8"),
            }
        )
    key = ["customer_id", "campaign_id"]
    flags = events.assign(
        responded=(events["type"] == outcome).astype("int8"),
        sent=events["type"].isin(SENT_TYPES).astype("int8"),
        held=(events["type"] == HOLDOUT).astype("int8"),
    )
    grouped = flags.groupby(key, sort=True).agg(
        responded=("responded", "max"), sent=("sent", "max"), held=("held", "max")
    )
    # a pair with neither a send nor a hold-out record has no known exposure: left out
    history = grouped[(grouped["sent"] == 1) | (grouped["held"] == 1)].reset_index()
    history["treated"] = history.pop("sent").astype("int8")
    history = history.drop(columns="held")
    history["responded"] = history["responded"].astype("int8")
    return history


def write_history(out: str | os.PathLike, outcome: str = "conversion") -> int:
    """Rebuild ``<out>/responses.parquet`` from the folded events; return its row count."""
    history = history_from_events(read_events(out), outcome)
    write_atomically(pa.Table.from_pandas(history, preserve_index=False), Path(out) / HISTORY_FILE)
    return len(history)
