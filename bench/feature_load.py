"""Benchmark: bulk-loading customer features into a local Redis (``training features load``).

Interleaved rounds of three writers of the same records (one 8-field HSET per customer):

* ``loader``: :func:`training.feature_store.load_features` (checks + pre-built RESP, pipelined);
* ``redis-py``: the same records through redis-py's non-transactional pipeline, 10,000 per batch
  (what one would write first; the ratio says what the own writer buys);
* ``floor``: the loader's bytes replayed (built once, not timed): Redis's own cost of the same
  commands on this machine, the ceiling of any client.

Beside the rounds, Redis's own ceiling as its tool measures it: ``redis-benchmark`` sending the
same HSET (a typical record's fields and values, keys under the same prefix) on one connection,
pipelined 100 deep (``-c 1 -P 100``), when the tool is installed. The loader is one connection
too: Redis runs commands on one thread, so more connections would not raise its ceiling.

Run: ``.venv/bin/python -m bench.feature_load [--customers 200000] [--rounds 3]
[--redis-url redis://127.0.0.1:6379/0]``. Keys go under a unique prefix and are deleted after.
"""

from __future__ import annotations

import argparse
import csv
import io
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench.common import ROOT, machine_info, markdown_table, median, publish

sys.path.insert(0, str(ROOT / "tests"))


def _delete(client, prefix: str) -> None:
    batch = []
    for key in client.scan_iter(match=f"{prefix}:*", count=10_000):
        batch.append(key)
        if len(batch) >= 10_000:
            client.delete(*batch)
            batch = []
    if batch:
        client.delete(*batch)


def redis_benchmark(url: str, key_start: str, fields: dict[str, str], n: int) -> float | None:
    """Redis's own HSET/s for this record shape (redis-benchmark, -c 1 -P 100), or None."""
    tool = shutil.which("redis-benchmark")
    if tool is None:
        return None
    from urllib.parse import urlparse

    parsed = urlparse(url)
    cmd = [tool, "-h", parsed.hostname or "127.0.0.1", "-p", str(parsed.port or 6379)]
    cmd += ["--dbnum", (parsed.path or "/0").lstrip("/") or "0", "--csv", "-c", "1", "-P", "100"]
    cmd += ["-n", str(n), "-r", "100000000", "HSET", f"{key_start}__rand_int__"]
    for name, value in fields.items():
        cmd += [name, value]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True).stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    return float(rows[-1]["rps"]) if rows else None


def main(argv: list[str] | None = None) -> int:
    """Run the rounds and publish ``bench/results/feature_load.json``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--results", type=Path, help="results folder (default bench/results)")
    args = ap.parse_args(argv)

    import redis
    from bundle_builder import build_bundle, synthetic_customers

    from scoring.bundle import load_current
    from scoring.online import encode_record, key_prefix
    from training.feature_store import RespPipe, _commands, check_table, load_features

    info = machine_info("bench.feature_load", argv or sys.argv[1:])
    root = Path(tempfile.mkdtemp(prefix="bench-features-"))
    build_bundle(root, n=1500, seed=1, version="v1")
    schema = load_current(root).schema
    frame, _ = synthetic_customers(args.customers, seed=3)
    client = redis.Redis.from_url(args.redis_url, socket_timeout=30)
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    records = frame.to_dict("records")

    def loader() -> float:
        # the whole call, table checks included (LoadResult.seconds leaves them out)
        start = time.perf_counter()
        load_features(frame, schema, redis_url=args.redis_url, prefix=prefix)
        return time.perf_counter() - start

    def redis_py() -> float:
        keys = key_prefix(prefix, schema)
        start = time.perf_counter()
        for at in range(0, len(records), 10_000):
            pipe = client.pipeline(transaction=False)
            for r in records[at : at + 10_000]:
                pipe.hset(keys + str(r["customer_id"]), mapping=encode_record(r, schema))
            pipe.execute()
        return time.perf_counter() - start

    columns = check_table(frame, schema, "customer_id")
    prebuilt = [
        _commands(
            columns,
            schema,
            key_prefix(prefix, schema).encode(),
            a,
            min(a + 10_000, len(frame)),
            b"1",
        )
        for a in range(0, len(frame), 10_000)
    ]

    def floor() -> float:
        pipe = RespPipe(args.redis_url)
        start = time.perf_counter()
        for payload, n in prebuilt:
            pipe.send(payload, n)
        pipe.close()
        return time.perf_counter() - start

    writers = {"loader": loader, "redis-py": redis_py, "floor": floor}
    seconds: dict[str, list[float]] = {k: [] for k in writers}
    # a typical record (every field present); redis-benchmark's keys end in 12 random digits
    sample = encode_record(records[0], schema, updated_at=time.time())
    n = args.customers
    ceiling: list[float] = []
    try:
        for _ in range(args.rounds):
            for name, run in writers.items():
                _delete(client, prefix)
                seconds[name].append(run())
            _delete(client, prefix)
            rps = redis_benchmark(args.redis_url, key_prefix(prefix, schema), sample, n)
            if rps is not None:
                ceiling.append(rps)
    finally:
        _delete(client, prefix)
    rate = {k: n / median(v) for k, v in seconds.items()}
    rows = [
        [
            name,
            f"{rate[name]:,.0f}",
            f"{median(seconds[name]):.2f}",
            f"{rate[name] / rate['floor']:.2f}",
        ]
        for name in writers
    ]
    if ceiling:
        rows.append(
            [
                "redis-benchmark -c 1 -P 100, same HSET",
                f"{median(ceiling):,.0f}",
                f"{n / median(ceiling):.2f}",
                f"{median(ceiling) / rate['floor']:.2f}",
            ]
        )
    table = markdown_table(["writer", "customers/s (median)", "seconds", "x floor"], rows)
    result = {
        **info,
        "customers": n,
        "rounds": args.rounds,
        "seconds": seconds,
        "customers_per_second": rate,
        "redis_benchmark_hset_per_second": ceiling,
        "target": 100_000,
    }
    publish("feature_load", result, table, args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
