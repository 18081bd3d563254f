"""Benchmark: the PyFlink stream job and requests by customer id.

Three figures from one run, on Flink's local mini-cluster (parallelism 1) and a local Redis:

* **events/s per core**: a file of generated events (``--events``) is dropped into the watched
  folder of a running, warmed-up job pinned to one core (``taskset``, when there is one); the
  rate is events / (time the last update reached Redis - time the file was renamed in);
* **event -> API latency**: then, one event at a time (``--probes`` files of one line each), the
  time from the file's rename to the new segment being visible through ``/recommend
  {"customer_id"}`` (the Flask app in this process, polled every millisecond); p50 and p99. The
  job's folder monitor interval (``--monitor-ms``) is part of it: files are discovered by
  polling;
* **/recommend by id vs by features**: interleaved rounds of single requests through the same
  app (in-process test client), by id (one Redis read) and with the features in the body.

Run: ``.venv/bin/python -m bench.stream [--events 20000] [--probes 40]`` (needs .venv-stream:
``scripts/stream-venv.sh``). Keys go under a unique prefix and are deleted after.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench.common import ROOT, machine_info, markdown_table, median, publish

sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "stream"))


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> int:
    """Run the job, measure, publish ``bench/results/stream.json``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--probes", type=int, default=40)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--monitor-ms", type=int, default=100)
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--core", default="1", help="core to pin the job to (taskset -c)")
    ap.add_argument("--results", type=Path, help="results folder (default bench/results)")
    args = ap.parse_args(argv)

    import redis
    from bundle_builder import build_bundle
    from event_builder import generate_events, write_events

    from api import create_app
    from scoring import online
    from scoring.activity import Activity, fold_events, parse_event
    from scoring.bundle import load_current

    info = machine_info("bench.stream", argv or sys.argv[1:])
    work = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    model_root = work / "bundles"
    build_bundle(model_root, n=3000, seed=0, version="v1")
    schema = load_current(model_root).schema
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(args.redis_url, socket_timeout=10)
    source = work / "events"
    source.mkdir()
    python = ROOT / ".venv-stream" / "bin" / "python"
    pin = ["taskset", "-c", args.core] if shutil.which("taskset") else []
    log = open(work / "job.log", "ab")  # noqa: SIM115 -- closed at the end
    job = subprocess.Popen(
        [
            *pin,
            str(python),
            "-m",
            "stream.job",
            "--source",
            str(source),
            "--model-root",
            str(model_root),
            "--prefix",
            prefix,
            "--redis-url",
            args.redis_url,
            "--checkpoints",
            str(work / "checkpoints"),
            "--monitor-interval-ms",
            str(args.monitor_ms),
        ],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    counters = online.counters_key(prefix)

    def updates() -> int:
        return int(client.hget(counters, "updates") or 0)

    def writes_of(batch: list[dict]) -> int:
        """Records the job writes: one per event from a customer's first purchase on."""
        state: dict[str, Activity] = {}
        n = 0
        for e in batch:
            a = state.setdefault(e["customer_id"], Activity())
            a.add(parse_event(json.dumps(e)))
            n += a.has_purchase
        return n

    def wait(condition, what: str, seconds: float = 900) -> None:
        deadline = time.monotonic() + seconds
        while not condition():
            if job.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"gave up waiting for {what}; log: {work / 'job.log'}")
            time.sleep(0.005)

    try:
        # Warm up: the JVM, the Python worker and the bundle load happen before measuring.
        warm = generate_events(50, seed=9, prefix="w")
        write_events(source, "warm.jsonl", warm)
        wait(lambda: updates() >= writes_of(warm), "the warm-up")
        time.sleep(1)

        events = generate_events(max(1, args.events // 7), seed=1)[: args.events]
        before = updates()
        folded = fold_events(json.dumps(e) for e in events).activities
        n_writes = writes_of(events)
        start = time.perf_counter()
        write_events(source, "throughput.jsonl", events)
        wait(lambda: updates() >= before + n_writes, "the throughput file")
        rate = len(events) / (time.perf_counter() - start)

        app = create_app(
            {
                "MODEL_ROOT": str(model_root),
                "MODEL_VERSION": "",
                "BUNDLE_HMAC_KEY": "",
                "API_KEYS": "k",
                "ADMIN_API_KEYS": "a",
                "REDIS_URL": args.redis_url,
                "CACHE_PREFIX": prefix,
                "RELOAD_MARKER": "",
                "PROMETHEUS_MULTIPROC_DIR": "",
            }
        )
        http = app.test_client()
        headers = {"X-API-Key": "k"}
        ids = sorted(c for c, a in folded.items() if a.has_purchase)
        latencies = []
        for i in range(args.probes):
            cid = ids[i % len(ids)]
            seq = int(client.hget(online.record_key(prefix, schema, cid), "@seq") or 0)
            event = {
                "customer_id": cid,
                "event_time": folded[cid].last_time + 60 * (i + 1),
                "amount": 10.0,
            }
            t0 = time.perf_counter()
            write_events(source, f"probe-{i}.jsonl", [event])
            key = online.record_key(prefix, schema, cid)
            while True:
                r = http.post("/recommend", json={"customer_id": cid}, headers=headers)
                if int(client.hget(key, "@seq") or 0) > seq and r.status_code == 200:
                    break
                if time.perf_counter() - t0 > 60:
                    raise SystemExit("a probe event never became visible")
                time.sleep(0.001)
            latencies.append((time.perf_counter() - t0) * 1000)

        features = online.decode_record(
            client.hgetall(online.record_key(prefix, schema, ids[0])), schema
        ).features
        bodies = {
            "by id": {"customer_id": ids[0]},
            "by features": {"customer_id": ids[0], **features},
        }
        per_second: dict[str, list[float]] = {k: [] for k in bodies}
        for _ in range(5):
            for name, body in bodies.items():
                n = args.requests // 5
                t = time.perf_counter()
                for _ in range(n):
                    http.post("/recommend", json=body, headers=headers)
                per_second[name].append(n / (time.perf_counter() - t))
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
        job.wait()
        log.close()
        keys = list(client.scan_iter(match=f"{prefix}:*", count=10_000))
        for at in range(0, len(keys), 10_000):
            client.delete(*keys[at : at + 10_000])

    by_id, by_features = median(per_second["by id"]), median(per_second["by features"])
    rows = [
        ["events/s through the job (1 core)", f"{rate:,.0f}"],
        ["event -> API latency p50 (ms)", f"{_percentile(latencies, 0.5):,.0f}"],
        ["event -> API latency p99 (ms)", f"{_percentile(latencies, 0.99):,.0f}"],
        ["/recommend by id (requests/s, in-process)", f"{by_id:,.0f}"],
        ["/recommend by features (requests/s, in-process)", f"{by_features:,.0f}"],
        ["by id / by features", f"{by_id / by_features:.2f}"],
    ]
    table = markdown_table(["what", "measured"], rows)
    result = {
        **info,
        "pinned_core": args.core if pin else None,
        "events": len(events),
        "events_per_second": rate,
        "monitor_interval_ms": args.monitor_ms,
        "latency_ms": latencies,
        "requests_per_second": per_second,
    }
    publish("stream", result, table, args.results)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
