"""The PyFlink job end to end on Flink's local mini-cluster, in its own venv (.venv-stream).

Events for a few thousand customers -> a monitored folder -> the job -> Redis -> the service's
``/recommend {"customer_id"}``: what is served equals the offline scoring of each customer's
accumulated features (folded offline with the same scoring/activity.py). Also: malformed and late
events go to the dead letters and the job goes on; a customer whose behaviour crosses a segment
boundary moves segment (and a change event is recorded); a new bundle reaches the running job
without losing state; and a job killed mid-stream and restarted from its last checkpoint ends
with every event counted exactly once.

Waits are bounded (the job runs beside other work on a 2-core machine) but never timed
assertions: each wait ends as soon as Redis shows the expected state.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
import redis
from bundle_builder import build_bundle
from event_builder import generate_events, write_events

from api import create_app
from scoring import online
from scoring.activity import Activity, fold_events, parse_event
from scoring.bundle import load_current
from scoring.engine import ScoringEngine
from stream.job import latest_checkpoint

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
STREAM_PYTHON = Path(os.environ.get("STREAM_VENV", ROOT / ".venv-stream")) / "bin" / "python"
#: upper bound of every wait (the job on a loaded 2-core machine); a wait ends when satisfied
WAIT_SECONDS = 480


@pytest.fixture(scope="module")
def stream_python() -> Path:
    """The stream venv's interpreter (scripts/stream-venv.sh makes it; `make test` runs that)."""
    if not STREAM_PYTHON.exists():
        pytest.fail(f"{STREAM_PYTHON} missing: run scripts/stream-venv.sh (make test does)")
    return STREAM_PYTHON


@pytest.fixture(scope="module")
def client(redis_url):
    """A client of the test Redis."""
    c = redis.Redis.from_url(redis_url, socket_timeout=10)
    c.ping()
    yield c
    c.close()


class Job:
    """The stream job as a child process group (the launcher, Flink's JVM, Python workers)."""

    def __init__(self, python: Path, log: Path, args: list[str]) -> None:
        self.log = log
        self.proc = subprocess.Popen(
            [str(python), "-m", "stream.job", *args],
            cwd=ROOT,
            stdout=open(log, "ab"),  # noqa: SIM115 -- closed with the process
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def alive(self) -> bool:
        """True while the job process runs."""
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole group: no clean shutdown, as in a crash."""
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=60)

    def tail(self) -> str:
        """The end of the job's log, for failure messages."""
        return self.log.read_text(errors="replace")[-3000:]


def wait_for(what: str, condition, job: Job | None = None, seconds: float = WAIT_SECONDS):
    """Poll ``condition()`` until truthy; fail naming ``what`` (and the job log) at the bound."""
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value:
            return value
        if job is not None and not job.alive():
            pytest.fail(f"the job stopped while waiting for {what}:\n{job.tail()}")
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}" + (f":\n{job.tail()}" if job else ""))
        time.sleep(0.5)


def seqs(client, prefix: str, schema, ids) -> dict[str, int]:
    """Stored @seq of each customer (0 where absent)."""
    pipe = client.pipeline(transaction=False)
    for cid in ids:
        pipe.hget(online.record_key(prefix, schema, cid), "@seq")
    return {cid: int(v or 0) for cid, v in zip(ids, pipe.execute(), strict=True)}


def expected_seqs(activities: dict[str, Activity]) -> dict[str, int]:
    """What @seq each customer with a purchase ends at."""
    return {cid: a.folded for cid, a in activities.items() if a.has_purchase}


def caught_up(client, prefix, schema, expected: dict[str, int]):
    """A condition: every customer's stored @seq has reached the expected one."""

    def check() -> bool:
        stored = seqs(client, prefix, schema, list(expected))
        return all(stored[c] >= n for c, n in expected.items())

    return check


def job_args(source, model_root, prefix, checkpoints, redis_url, *extra) -> list[str]:
    """The job's command line."""
    return [
        "--source",
        str(source),
        "--model-root",
        str(model_root),
        "--prefix",
        prefix,
        "--redis-url",
        redis_url,
        "--checkpoints",
        str(checkpoints),
        "--checkpoint-interval-ms",
        "1000",
        "--monitor-interval-ms",
        "500",
        "--bundle-poll-seconds",
        "1",
        *extra,
    ]


def test_events_to_served_segments(tmp_path, stream_python, client, redis_url, redis_prefix):
    model_root = tmp_path / "bundles"
    build_bundle(model_root, n=3000, seed=0, version="v1")
    engine = ScoringEngine(load_current(model_root))
    schema = engine.schema
    names = schema.input_names
    events = generate_events(2000, seed=1)
    lines = [json.dumps(e) for e in events]
    # One late event (far older than the customer's latest) and four malformed lines.
    late = dict(events[-1], event_time=events[-1]["event_time"] - 10 * 86_400)
    bad = [
        "{not json",
        json.dumps({**events[0], "colour": "red"}),
        json.dumps({**events[0], "amount": -5}),
        json.dumps({**events[0], "event_time": time.time() + 30 * 86_400}),
    ]
    source = tmp_path / "events"
    write_events(source, "part-0.jsonl", [*lines, json.dumps(late), *bad])
    folded = fold_events([*lines, json.dumps(late)]).activities
    expected = expected_seqs(folded)
    assert len(expected) > 1500

    job = Job(
        stream_python,
        tmp_path / "job.log",
        job_args(source, model_root, redis_prefix, tmp_path / "checkpoints", redis_url),
    )
    try:
        wait_for("every event in Redis", caught_up(client, redis_prefix, schema, expected), job)
        # The stored features are the offline fold's, and the service scores them as offline.
        app = create_app(
            {
                "MODEL_ROOT": str(model_root),
                "MODEL_VERSION": "",
                "BUNDLE_HMAC_KEY": "",
                "API_KEYS": "k",
                "ADMIN_API_KEYS": "a",
                "REDIS_URL": redis_url,
                "CACHE_PREFIX": redis_prefix,
                "RELOAD_MARKER": "",
                "PROMETHEUS_MULTIPROC_DIR": "",
                "MAX_BATCH_ITEMS": 1000,
            }
        )
        http = app.test_client()
        ids = sorted(expected)
        offline = engine.recommend(
            engine.batch_from_records([folded[c].features(names) for c in ids]), top_k=3
        )
        served = []
        for at in range(0, len(ids), 1000):
            body = {"customers": [{"customer_id": c} for c in ids[at : at + 1000]], "top_k": 3}
            r = http.post("/recommend", json=body, headers={"X-API-Key": "k"})
            assert r.status_code == 200
            served += r.get_json()["results"]
        for cid, answer, want in zip(ids, served, offline, strict=True):
            assert answer["customer_id"] == cid
            assert answer["segment_id"] == want["segment_id"], cid
            assert [c["campaign_id"] for c in answer["campaigns"]] == [
                c["campaign_id"] for c in want["campaigns"]
            ]
            assert answer["last_scored"]["segment_id"] == want["segment_id"]
        one = http.post("/recommend", json={"customer_id": ids[0]}, headers={"X-API-Key": "k"})
        assert one.get_json()["segment_id"] == offline[0]["segment_id"]

        # Dead letters: one per refused line, with its reason; counted in /metrics.
        letters = client.xrange(online.dead_letters_key(redis_prefix))
        reasons = Counter(e[b"reason"].decode() for _, e in letters)
        assert reasons == Counter(
            {"bad_json": 1, "unknown_field": 1, "negative_amount": 1, "future": 1, "late": 1}
        )
        metrics = http.get("/metrics").get_data(as_text=True)
        assert 'segsvc_stream_dead_letters_total{reason="late"} 1' in metrics
        n_changes = client.xlen(online.changes_key(redis_prefix))
        assert f"segsvc_stream_segment_changes_total {n_changes}" in metrics

        # A customer whose behaviour crosses a segment boundary moves segment.
        mover = next(c for c in ids if int(c[1:]) % 3 == 2 and offline[ids.index(c)]["segment_id"])
        before = offline[ids.index(mover)]["segment_id"]
        last = folded[mover].last_time
        burst = [
            {
                "customer_id": mover,
                "event_time": last + 3600 * (i + 1),
                "amount": 3000.0,
                "product": f"v{i}",
                "channel": "mobile",
            }
            for i in range(40)
        ]
        write_events(source, "part-1.jsonl", burst)
        target = {mover: folded[mover].folded + 40}
        wait_for("the burst in Redis", caught_up(client, redis_prefix, schema, target), job)
        moved = http.post("/recommend", json={"customer_id": mover}, headers={"X-API-Key": "k"})
        assert moved.get_json()["segment_id"] != before
        changes = [
            e
            for _, e in client.xrange(online.changes_key(redis_prefix))
            if e[b"customer_id"].decode() == mover
        ]
        assert changes[-1][b"from"] == str(before).encode()
        assert changes[-1][b"to"] == str(moved.get_json()["segment_id"]).encode()

        # A new bundle reaches the running job; the customer's state (its count) is kept.
        build_bundle(model_root, n=3000, seed=4, version="v2")
        keeper = ids[0]
        key = online.record_key(redis_prefix, schema, keeper)
        count = int(float(client.hget(key, "order_count")))
        step = {
            "customer_id": keeper,
            "event_time": folded[keeper].last_time + 60,
            "amount": 5.0,
        }
        time.sleep(2)  # past the job's 1 s bundle poll, so the next event sees v2
        write_events(source, "part-2.jsonl", [step])
        target = {keeper: folded[keeper].folded + 1}
        wait_for("the event after the reload", caught_up(client, redis_prefix, schema, target), job)
        record = client.hgetall(key)
        assert record[b"@model_version"] == b"v2"
        assert int(float(record[b"order_count"])) == count + 1
    finally:
        job.kill()


def _writes_offline(lines, engine) -> tuple[int, int]:
    """(record writes, segment changes incl. first assignments) scoring each event as it comes."""
    names = engine.schema.input_names
    state: dict[str, Activity] = {}
    segment: dict[str, int] = {}
    writes = changes = 0
    for line in lines:
        event = parse_event(line)
        activity = state.setdefault(event.customer_id, Activity())
        activity.add(event)
        if not activity.has_purchase:
            continue
        writes += 1
        s = engine.predict_segment_one(activity.features(names))["segment_id"]
        if segment.get(event.customer_id) != s:
            changes += 1
            segment[event.customer_id] = s
    return writes, changes


def test_killed_mid_stream_and_restarted_counts_every_event_once(
    tmp_path, stream_python, client, redis_url, redis_prefix
):
    model_root = tmp_path / "bundles"
    build_bundle(model_root, n=3000, seed=0, version="v1")
    engine = ScoringEngine(load_current(model_root))
    schema = engine.schema
    first = [json.dumps(e) for e in generate_events(500, seed=2)]
    second = [
        json.dumps(dict(e, customer_id="k" + e["customer_id"]))
        for e in generate_events(1500, seed=3)
    ]
    source = tmp_path / "events"
    checkpoints = tmp_path / "checkpoints"
    args = job_args(source, model_root, redis_prefix, checkpoints, redis_url)
    log = tmp_path / "job.log"

    write_events(source, "part-0.jsonl", first)
    job = Job(stream_python, log, args)
    try:
        done_first = expected_seqs(fold_events(first).activities)
        wait_for(
            "the first file in Redis", caught_up(client, redis_prefix, schema, done_first), job
        )
        # A checkpoint taken after the first file, then the second file, then a crash.
        mark = latest_checkpoint(checkpoints)
        wait_for(
            "a checkpoint after the first file", lambda: latest_checkpoint(checkpoints) != mark, job
        )
        write_events(source, "part-1.jsonl", second)
        updates_first = int(client.hget(online.counters_key(redis_prefix), "updates"))
        wait_for(
            "the job to be inside the second file",
            lambda: int(client.hget(online.counters_key(redis_prefix), "updates")) > updates_first,
            job,
        )
    finally:
        job.kill()
    killed_at = int(client.hget(online.counters_key(redis_prefix), "updates"))

    everything = fold_events([*first, *second]).activities
    expected = expected_seqs(everything)
    restarted = Job(stream_python, log, [*args, "--restore", "latest"])
    try:
        wait_for(
            "every event after the restart",
            caught_up(client, redis_prefix, schema, expected),
            restarted,
        )
    finally:
        restarted.kill()
    restored_from = log.read_text().split("restoring from ")[-1].split("\n")[0]
    assert "chk-" in restored_from, restored_from
    # Exactly once in the stored features: each customer's counts equal the offline fold's.
    names = schema.input_names
    for cid, activity in everything.items():
        if not activity.has_purchase:
            continue
        stored = online.decode_record(
            client.hgetall(online.record_key(redis_prefix, schema, cid)), schema
        )
        assert stored.features == pytest.approx(activity.features(names)), cid
    # ... and so do the writes and segment changes: none lost, none repeated by the replay.
    counters = client.hgetall(online.counters_key(redis_prefix))
    n_updates, n_changes = _writes_offline([*first, *second], engine)
    assert int(counters[b"updates"]) == n_updates
    assert killed_at < n_updates  # the crash really was mid-stream
    assert int(counters[b"segment_changes"]) == n_changes
    assert client.xlen(online.changes_key(redis_prefix)) == n_changes
