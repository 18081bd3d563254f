"""The feedback fold against a real Redis: exactly once, through crashes and duplicates."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import redis

from api.feedback import FeedbackStream
from training.feedback import EVENTS_DIR, fold, history_from_events, read_events

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def client(redis_url):
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


def _events(n: int, start: int = 0) -> list[dict]:
    types = ("impression", "click", "conversion", "holdout")
    return [
        {
            "event_id": f"e{i:06d}",
            "customer_id": f"c{i % 97}",
            "campaign_id": f"camp{i % 3}",
            "type": types[i % 4],
            "value": 1.5 if i % 4 == 2 else None,
            "timestamp": "2026-12-02T10:00:00Z",
            "model_version": "v1",
        }
        for i in range(start, start + n)
    ]


def test_fold_writes_every_event_once_and_acknowledges(client, redis_prefix, tmp_path):
    stream = f"{redis_prefix}:feedback"
    FeedbackStream(client, stream).append(_events(250))
    # a client retry: the same events sent again must not be counted twice
    FeedbackStream(client, stream).append(_events(20, start=100))
    summary = fold(client, stream, tmp_path, batch_size=60)
    assert summary.read == 270 and summary.written == 250 and summary.duplicates == 20
    events = read_events(tmp_path)
    assert events["event_id"].is_unique and len(events) == 250
    assert client.xpending(stream, "fold")["pending"] == 0
    # nothing new: a second run writes nothing
    assert fold(client, stream, tmp_path).written == 0
    history = pd.read_parquet(tmp_path / "responses.parquet")
    assert set(history.columns) == {"customer_id", "campaign_id", "responded", "treated"}
    assert set(history["treated"]) <= {0, 1}


def test_a_batch_written_but_not_acknowledged_is_not_counted_twice(client, redis_prefix, tmp_path):
    stream = f"{redis_prefix}:feedback"
    FeedbackStream(client, stream).append(_events(100))
    # simulate a crash between the rename and the XACK: acknowledge nothing on the first run
    real_xack = client.xack
    client.xack = lambda *a, **k: 0
    fold(client, stream, tmp_path, batch_size=40)
    client.xack = real_xack
    assert client.xpending(stream, "fold")["pending"] == 100
    again = fold(client, stream, tmp_path, batch_size=40)
    assert again.written == 0 and again.duplicates == 100
    assert len(read_events(tmp_path)) == 100
    assert client.xpending(stream, "fold")["pending"] == 0


def test_sigkill_mid_fold_then_rerun_holds_every_event_exactly_once(
    client, redis_prefix, redis_url, tmp_path
):
    stream = f"{redis_prefix}:feedback"
    feed = FeedbackStream(client, stream)
    total = 30_000
    for start in range(0, total, 5000):
        feed.append(_events(5000, start=start))
    out = tmp_path / "folded"
    command = [
        sys.executable, "-m", "training", "-q", "feedback", "fold", "--out", str(out),
        "--redis-url", redis_url, "--stream", stream, "--batch-size", "100",
    ]  # fmt: skip
    proc = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    parts = out / EVENTS_DIR
    # kill as soon as the first parts are on disk, long before 300 batches are done
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if parts.is_dir() and len(list(parts.glob("part-*.parquet"))) >= 3:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the fold finished before it could be killed"
    written_before = len(read_events(out))
    assert 0 < written_before < total
    rerun = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    assert rerun.returncode == 0, rerun.stderr
    events = read_events(out)
    assert len(events) == total
    assert events["event_id"].is_unique
    assert set(events["event_id"]) == {f"e{i:06d}" for i in range(total)}
    assert client.xpending(stream, "fold")["pending"] == 0
    assert not list(parts.glob(".tmp-*")), "a temporary file was left visible"


def test_history_marks_holdouts_as_control_and_drops_unknown_exposure():
    events = pd.DataFrame(
        {
            "customer_id": ["a", "a", "b", "b", "c", "d"],
            "campaign_id": ["x", "x", "x", "x", "x", "x"],
            "type": ["impression", "conversion", "holdout", "conversion", "holdout", "conversion"],
        }
    )
    history = history_from_events(events).set_index("customer_id")
    assert history.loc["a", "treated"] == 1 and history.loc["a", "responded"] == 1
    assert history.loc["b", "treated"] == 0 and history.loc["b", "responded"] == 1
    assert history.loc["c", "treated"] == 0 and history.loc["c", "responded"] == 0
    assert "d" not in history.index
