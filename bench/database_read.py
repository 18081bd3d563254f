"""Reading a table from PostgreSQL (training.database): rows per second by fetch size.

A table of transactions (customer id, date, numeric amount, integer quantity, text invoice) is
generated inside the server with ``generate_series`` in a schema of its own (dropped
afterwards), then read through :func:`training.database.read_database` with each fetch size in
interleaved rounds; medians are reported with the child-free peak memory of this process.

    python -m bench.database_read [--smoke | --quick | --full] [--url URL] [--results DIR]

``--url`` (default ``PG_TEST_URL`` or postgresql://postgres@127.0.0.1:5432/postgres) must allow
creating a schema. No target in the issues; the figure says whether the reader is a bottleneck
next to training.
"""

from __future__ import annotations

import os
import resource
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from bench.common import fmt, machine_info, markdown_table, mode_parser, publish

MODES = {"smoke": (2_000, 1), "quick": (200_000, 2), "full": (1_000_000, 3)}
FETCH_ROWS = (10_000, 50_000, 200_000)
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def measure(url: str, rows: int, rounds: int) -> list[dict[str, Any]]:
    """Median seconds per fetch size over interleaved rounds, on a generated table."""
    import psycopg

    from training.database import DatabaseSource, read_database

    schema = f"segbench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(
            f"CREATE TABLE {schema}.tx AS SELECT 'C' || (g % 100000)::text AS customer_id, "
            "date '2023-01-01' + (g % 730) AS day, round((random() * 100)::numeric, 2) AS amount, "
            f"(g % 7)::int AS quantity, md5(g::text) AS invoice FROM generate_series(1, {rows}) g"
        )
    times: dict[int, list[float]] = {f: [] for f in FETCH_ROWS}
    try:
        for _ in range(rounds):
            for fetch in FETCH_ROWS:
                source = DatabaseSource(url, table=f"{schema}.tx", fetch_rows=fetch)
                start = time.perf_counter()
                table = read_database(source, ("customer_id",))
                times[fetch].append(time.perf_counter() - start)
                assert len(table.frame) == rows
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
    return [
        {
            "fetch_rows": fetch,
            "rounds_s": times[fetch],
            "median_s": statistics.median(times[fetch]),
            "rows_per_s": rows / statistics.median(times[fetch]),
        }
        for fetch in FETCH_ROWS
    ]


def markdown(result: dict[str, Any]) -> str:
    """The benchmark's table."""
    rows = result["settings"]["rows"]
    return markdown_table(
        ["rows", "fetch_rows", "median s", "rows/s"],
        [[fmt(rows), fmt(r["fetch_rows"]), fmt(r["median_s"], 2), fmt(r["rows_per_s"])]
         for r in result["figures"]],
    ) + f"\n\nPeak memory of the reading process: {fmt(result['peak_rss_mb'])} MB."  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark in the chosen mode and publish its results."""
    argv = sys.argv[1:] if argv is None else argv
    ap = mode_parser(__doc__, list(MODES))
    ap.add_argument("--url", default=os.environ.get("PG_TEST_URL", DEFAULT_URL))
    ap.add_argument("--results", type=Path, default=None, help="folder for database_read.json")
    args = ap.parse_args(argv)
    rows, rounds = MODES[args.mode or "quick"]
    figures = measure(args.url, rows, rounds)
    result = {
        "machine": machine_info("bench.database_read", argv),
        "settings": {"rows": rows, "rounds": rounds, "columns": 5},
        "figures": figures,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    publish("database_read", result, markdown(result), args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
