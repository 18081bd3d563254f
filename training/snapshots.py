"""Replaying a transaction history into one bundle per month, each matched to the one before.

:func:`replay` trains a bundle for every snapshot date (``[data.transactions] as_of``), with
``segmentation.previous`` set to the previous snapshot's bundle so ids and names follow the
segments (:mod:`training.resegment`). k is searched on the first snapshot and then fixed (unless
the config fixes it), so that month-to-month changes are the customers', not the choice of k.
Every snapshot is promoted; the gate's verdict is kept in each manifest and in the table.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import pandas as pd

from training.config import ConfigError, TrainConfig
from training.load import read_transactions
from training.pipeline import train
from training.transactions import parse_dates

log = logging.getLogger(__name__)

FREQUENCIES = {"month": "MS", "quarter": "QS"}


@dataclass(frozen=True)
class Snapshot:
    """One replayed snapshot: its date, bundle and what changed since the previous one."""

    as_of: str
    version: str
    path: str
    sizes: list[int]
    names: list[str]
    #: the manifest's resegmentation entry (None for the first snapshot)
    resegmentation: dict[str, Any] | None


def snapshot_dates(
    config: TrainConfig, every: str = "month", start: str | None = None, end: str | None = None
) -> list[pd.Timestamp]:
    """Snapshot dates: month (or quarter) starts from ``start`` to ``end``.

    Defaults: the first month start at least two months after the first transaction, and the
    day after the last one.
    """
    tx = config.data.transactions
    if tx is None:
        raise ConfigError("snapshots: the config needs [data.transactions]")
    if every not in FREQUENCIES:
        raise ConfigError(f"snapshots: every={every!r}; expected one of {', '.join(FREQUENCIES)}")
    frame, _, _ = read_transactions(tx)
    if tx.date_column not in frame.columns:
        raise ConfigError(f"data.transactions.date_column: {tx.date_column!r} is absent")
    days = parse_dates(frame[tx.date_column], tx.date_format).dropna().dt.normalize()
    if days.empty:
        raise ConfigError(f"snapshots: no readable date in {tx.date_column!r}")
    first = pd.Timestamp(start) if start else days.min() + pd.DateOffset(months=2)
    last = pd.Timestamp(end) if end else days.max() + pd.Timedelta(days=1)
    dates = list(pd.date_range(first, last, freq=FREQUENCIES[every]))
    if start and (not dates or dates[0] != first):
        dates.insert(0, first)
    if not dates:
        raise ConfigError(f"snapshots: no {every} start between {first.date()} and {last.date()}")
    return dates


def replay(
    config: TrainConfig, every: str = "month", start: str | None = None, end: str | None = None
) -> list[Snapshot]:
    """Train one bundle per snapshot date, each matched to the previous one."""
    dates = snapshot_dates(config, every, start, end)
    tx = config.data.transactions
    seg = config.segmentation
    previous = seg.previous
    k = seg.k
    out = []
    for i, as_of in enumerate(dates):
        log.info("snapshot %d of %d: as of %s", i + 1, len(dates), as_of.date())
        fixed = {} if k is None else {"k": k, "k_min": min(k, seg.k_min), "k_max": k}
        snapshot_config = dataclasses.replace(
            config,
            name=f"{config.name}-{as_of:%Y-%m-%d}",
            data=dataclasses.replace(
                config.data, transactions=dataclasses.replace(tx, as_of=str(as_of.date()))
            ),
            segmentation=dataclasses.replace(seg, previous=previous, **fixed),
        )
        result = train(snapshot_config, force=True)
        k = result.segmentation.k if k is None else k
        previous = str(result.path)
        out.append(
            Snapshot(
                as_of=str(as_of.date()),
                version=result.bundle.version,
                path=str(result.path),
                sizes=[int(p["size"]) for p in result.bundle.profiles],
                names=list(result.bundle.segment_names),
                resegmentation=result.bundle.manifest.get("resegmentation"),
            )
        )
    return out


def snapshot_table(snapshots: list[Snapshot]) -> str:
    """How segment sizes, migrations and drift evolved, one line per snapshot."""
    if not snapshots:
        return "no snapshots"
    names = snapshots[-1].names
    lines = ["segments: " + "; ".join(f"{i} = {n}" for i, n in enumerate(names))]
    header = f"{'as of':<10}  {'customers':>9}  {'sizes by segment id':<40}  {'stayed':>6}  "
    lines.append(header + f"{'new':>6}  {'max PSI':>7}  changes")
    for snap in snapshots:
        reseg = snap.resegmentation or {}
        migration = reseg.get("migration") or {}
        retention = migration.get("retention")
        psi_values = reseg.get("psi") or {}
        top = max(psi_values.items(), key=lambda kv: kv[1]) if psi_values else None
        matching = reseg.get("matching") or {}
        changes = [f"new segment {i}" for i in matching.get("new_segments", [])]
        changes += [f"{v['name']} vanished" for v in matching.get("vanished_segments", [])]
        changes += [
            f"{p['previous_name']} {p['previous_id']}->{p['new_id']}"
            for p in matching.get("pairs", [])
            if p["previous_id"] != p["new_id"]
        ]
        gate = reseg.get("gate") or {}
        if gate.get("forced"):
            changes.append("gate would refuse: " + gate["tripped"][0])
        lines.append(
            f"{snap.as_of:<10}  {sum(snap.sizes):>9,}  {' '.join(f'{s:,}' for s in snap.sizes):<40}  "
            + (f"{100 * retention:5.1f}%" if retention is not None else f"{'-':>6}")
            + f"  {migration.get('customers_new', sum(snap.sizes)):>6,}  "
            + (f"{top[1]:7.3f}" if top else f"{'-':>7}")
            + f"  {', '.join(changes) or '-'}"
        )
    return "\n".join(lines)
