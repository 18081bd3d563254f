"""The stream job's event fold (scoring/activity.py) gives training's transaction features.

``training/transactions.py`` is the reference for the RFM features (returns netted, no invoice
column); folding the same rows as events one at a time must give the same numbers.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path

import pandas as pd
import pytest

from scoring.activity import DAY, fold_events
from training.config import TransactionsConfig
from training.transactions import FEATURE_COLUMNS, features_from_transactions

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "stream"))
from event_builder import generate_events


def _as_rows(events: list[dict]) -> pd.DataFrame:
    """Events as a raw transaction table: a return is a row with a negative amount."""
    return pd.DataFrame(
        {
            "customer_id": [e["customer_id"] for e in events],
            "date": [
                dt.datetime.fromtimestamp(e["event_time"], dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
                for e in events
            ],
            "amount": [-e["amount"] if e["returned"] else e["amount"] for e in events],
        }
    )


def test_each_customers_features_equal_trainings_on_the_same_rows():
    events = generate_events(60, seed=5, return_share=0.15)
    folded = fold_events(json.dumps(e) for e in events).activities
    rows = _as_rows(events)
    compared = 0
    for cid, activity in folded.items():
        if not activity.has_purchase:
            continue
        # Training's snapshot is one date for the table; the job's is per customer (the day
        # after the customer's latest event): compare each customer at its own snapshot.
        as_of = dt.datetime.fromtimestamp(activity.as_of * DAY, dt.UTC).strftime("%Y-%m-%d")
        config = TransactionsConfig(path="-", as_of=as_of)
        reference = features_from_transactions(rows[rows["customer_id"] == cid], config).features
        assert len(reference) == 1
        expected = reference.iloc[0]
        ours = activity.features(FEATURE_COLUMNS)
        for name in FEATURE_COLUMNS:
            assert ours[name] == pytest.approx(float(expected[name]), rel=1e-12, abs=1e-9), (
                cid,
                name,
            )
        compared += 1
    assert compared >= 50


def test_features_build_writes_the_stream_jobs_features(tmp_path, tiny_bundle_root, tiny_bundle):
    from training.cli import main

    events = generate_events(30, seed=6)
    folder = tmp_path / "events"
    folder.mkdir()
    (folder / "a.jsonl").write_text("\n".join(json.dumps(e) for e in events[:100]) + "\n{bad\n")
    (folder / "b.jsonl").write_text("\n".join(json.dumps(e) for e in events[100:]) + "\n")
    out = tmp_path / "customers.parquet"
    argv = ["features", "build", "--events", str(folder), "--output", str(out)]
    assert main([*argv, "--bundle", str(tiny_bundle_root)]) == 0
    table = pd.read_parquet(out)
    names = tiny_bundle.schema.input_names
    assert list(table.columns) == ["customer_id", *names]
    folded = fold_events(json.dumps(e) for e in events).activities
    row = table.iloc[0]
    assert row[names].to_dict() == pytest.approx(folded[row["customer_id"]].features(names))
    # one row per customer with a purchase (returns-only customers have no features yet)
    assert len(table) == sum(a.has_purchase for a in folded.values())
