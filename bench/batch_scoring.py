"""Offline batch scoring benchmark: customers per second through the scoring core and the CLI.

The core: ``ScoringEngine(bundle, threads=t)``, then ``batch_from_frame`` + ``assign`` (segment,
distance, atypical flag) + ``propensities`` for every campaign, on one pandas frame of generated
customers; one and two LightGBM threads measured interleaved (A B A B ...) over several rounds.
The CLI: ``python -m training score --bundle ... --input customers.parquet --output
scores.parquet`` as a child process (interpreter start-up, Parquet in and out included), with
its wall time and peak memory.

    python -m bench.batch_scoring [--quick | --full | --smoke] [--customers N]
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    PYTHON,
    bundle_for,
    child_env,
    demo_customers,
    fmt,
    machine_info,
    markdown_table,
    median,
    mode_parser,
    publish,
    run_child,
    training_available,
)

MODES = {
    "smoke": {"customers": 2_000, "rounds": 1, "cli_rounds": 1},
    "quick": {"customers": 200_000, "rounds": 3, "cli_rounds": 1},
    "full": {"customers": 1_000_000, "rounds": 3, "cli_rounds": 3},
}
THREADS = (1, 2)


def score_core(engine: Any, frame: Any) -> dict[str, float]:
    """Time one pass of the core over ``frame``: batch building, segments, all propensities."""
    t0 = time.perf_counter()
    batch = engine.batch_from_frame(frame)
    t1 = time.perf_counter()
    assignment = engine.assign(batch)
    t2 = time.perf_counter()
    prob = engine.propensities(batch, assignment.segment) if engine.has_response_model else None
    t3 = time.perf_counter()
    if prob is not None and prob.shape != (len(frame), len(engine.campaigns)):
        raise RuntimeError(f"propensities have shape {prob.shape}")
    return {"batch_s": t1 - t0, "assign_s": t2 - t1, "propensities_s": t3 - t2, "total_s": t3 - t0}


def bench_core(model_root: Path, frame: Any, rounds: int) -> dict[str, Any]:
    """Interleaved rounds of the core with 1 and 2 LightGBM threads."""
    from scoring.bundle import load_current
    from scoring.engine import ScoringEngine

    bundle = load_current(model_root)
    engines = {t: ScoringEngine(bundle, threads=t) for t in THREADS}
    n = len(frame)
    runs: dict[int, list[dict[str, float]]] = {t: [] for t in THREADS}
    score_core(engines[1], frame.iloc[: min(n, 1000)])  # warm-up: first-call set-up
    for r in range(rounds):
        for t in THREADS if r % 2 == 0 else tuple(reversed(THREADS)):
            res = score_core(engines[t], frame)
            runs[t].append(res)
            print(
                f"  core threads={t} round {r + 1}/{rounds}: {n / res['total_s']:,.0f} customers/s",
                flush=True,
            )
    rows = []
    for t in THREADS:
        total = median([x["total_s"] for x in runs[t]])
        rows.append(
            {
                "threads": t,
                "customers_per_s": n / total,
                "total_s": total,
                "batch_s": median([x["batch_s"] for x in runs[t]]),
                "assign_s": median([x["assign_s"] for x in runs[t]]),
                "propensities_s": median([x["propensities_s"] for x in runs[t]]),
            }
        )
    return {
        "campaigns": len(bundle.campaigns),
        "segments": bundle.n_segments,
        "pairs_scored": n * len(bundle.campaigns),
        "results": rows,
        "rounds": {str(t): runs[t] for t in THREADS},
    }


def bench_cli(model_root: Path, frame: Any, rounds: int, scratch: Path) -> dict[str, Any] | None:
    """The batch CLI from Parquet to Parquet, timed as a child process."""
    if not training_available():
        return None
    import pandas as pd

    source = scratch / "customers.parquet"
    frame.to_parquet(source, index=False)
    target = scratch / "scores.parquet"
    bundle_dir = (model_root / "current").resolve()
    cmd = [PYTHON, "-m", "training", "score", "--bundle", str(bundle_dir)]
    cmd += ["--input", str(source), "--output", str(target)]
    runs = []
    for r in range(rounds):
        target.unlink(missing_ok=True)
        run = run_child(cmd, env=child_env()).check("python -m training score")
        rows = len(pd.read_parquet(target, columns=None))
        if rows != len(frame):
            raise RuntimeError(f"the CLI wrote {rows} rows for {len(frame)} customers")
        runs.append({"wall_s": run.wall_s, "max_rss_mb": run.max_rss_mb})
        print(
            f"  CLI round {r + 1}/{rounds}: {len(frame) / run.wall_s:,.0f} customers/s, "
            f"peak {run.max_rss_mb:,.0f} MB",
            flush=True,
        )
    wall = median([x["wall_s"] for x in runs])
    return {
        "command": " ".join(["python", *cmd[1:]]).replace(str(scratch), "<tmp>"),
        "customers_per_s": len(frame) / wall,
        "wall_s": wall,
        "max_rss_mb": max(x["max_rss_mb"] for x in runs),
        "output_columns": list(pd.read_parquet(target).columns),
        "rounds": runs,
    }


def markdown(result: dict[str, Any]) -> str:
    """The benchmark's tables."""
    n = result["customers"]
    core = result["core"]
    rows = [
        [
            f"core, LightGBM threads={r['threads']}",
            fmt(r["customers_per_s"]),
            fmt(r["total_s"], 2),
            f"batch {r['batch_s']:.2f} / assign {r['assign_s']:.2f} / "
            f"propensities {r['propensities_s']:.2f}",
            "-",
        ]
        for r in core["results"]
    ]
    cli = result.get("cli")
    if cli:
        rows.append(
            [
                "CLI `python -m training score` (Parquet -> Parquet)",
                fmt(cli["customers_per_s"]),
                fmt(cli["wall_s"], 2),
                "whole process",
                fmt(cli["max_rss_mb"]),
            ]
        )
    head = (
        f"{n:,} generated customers, {core['segments']} segments x {core['campaigns']} campaigns "
        f"({core['pairs_scored']:,} propensities)\n\n"
    )
    table = markdown_table(["path", "customers/s", "seconds", "stages (s)", "peak MB"], rows)
    return head + table + ("" if cli else "\n\n(batch CLI not available: training/ missing)")


def main(argv: list[str] | None = None) -> int:
    """Run the batch-scoring benchmark and write bench/results/batch_scoring.json."""
    argv = sys.argv[1:] if argv is None else argv
    ap = mode_parser(__doc__, MODES)
    ap.add_argument("--customers", type=int, help="customers to score")
    ap.add_argument("--rounds", type=int, help="rounds of the core")
    ap.add_argument("--cli-rounds", type=int, help="rounds of the CLI")
    ap.add_argument("--model-root", type=Path, help="score with this bundle root")
    ap.add_argument("--results", type=Path, help="results folder (default bench/results)")
    args = ap.parse_args(argv)
    mode = MODES[args.mode or "quick"]
    n = args.customers or mode["customers"]

    scratch = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    try:
        # the demo bundle's size (75,000) unless a smoke run asks for less
        model_root, source = bundle_for(args.model_root, scratch, max(5_000, min(n, 75_000)))
        print(f"generating {n:,} customers ...", flush=True)
        frame = demo_customers(n, seed=23)
        result: dict[str, Any] = {
            "benchmark": "batch_scoring",
            "machine": machine_info("bench.batch_scoring", argv),
            "customers": n,
            "bundle": source,
            "core": bench_core(model_root, frame, args.rounds or mode["rounds"]),
            "cli": bench_cli(model_root, frame, args.cli_rounds or mode["cli_rounds"], scratch),
        }
        publish("batch_scoring", result, markdown(result), args.results)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
