"""Dask engine benchmark: generate N customers as partitioned Parquet, train and batch-score them.

Steps, each a child process: ``python -m training generate --rows-per-file`` (streams one file at
a time), then for each worker count ``python -m training train --engine dask --workers W`` and
``python -m training score --engine dask --workers W``. Wall time is measured from outside;
memory is the peak of the SUM of the resident memory of the child and all its descendants
(scheduler, nannies, workers), sampled every 0.2 s with psutil; per-stage seconds and per-stage
peaks (client, and the sum of the workers' own peaks) come from the bundle's manifest.

    python -m bench.dask_training [--smoke | --quick | --full] [--customers N] [--workers 1,2]

--full is the issue's size (10,000,000 customers, files of 500,000); --quick 1,000,000;
--smoke 20,000 (tests/bench keeps the script working).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import (
    PYTHON,
    ROOT,
    child_env,
    fmt,
    machine_info,
    markdown_table,
    mode_parser,
    publish,
)

MODES = {
    "smoke": {"customers": 20_000, "rows_per_file": 5_000},
    "quick": {"customers": 1_000_000, "rows_per_file": 250_000},
    "full": {"customers": 10_000_000, "rows_per_file": 500_000},
}
#: the issue's goal on this 2-core machine, for 10,000,000 customers end to end
TARGET_CUSTOMERS = 10_000_000
TARGET_WALL_S = 600.0
TARGET_PEAK_MB = 8192.0


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, in MiB (0 once it is gone)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total / 2**20


def run_tree(cmd: list[str], timeout: float = 3600.0) -> dict[str, Any]:
    """Run ``cmd``; its wall time, the peak total RSS of its process tree, and its output."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=child_env(), stdout=out, stderr=err, text=True)
        peak = [0.0]
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], tree_rss_mb(proc.pid))
                stop.wait(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        stop.set()
        sampler.join()
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if code != 0:
        tail = "\n".join(stderr.strip().splitlines()[-25:])
        raise RuntimeError(f"{' '.join(cmd[2:5])} failed with exit code {code}:\n{tail}")
    return {"wall_s": round(wall, 2), "peak_tree_mb": round(peak[0], 1), "stdout": stdout}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and publish bench/results/dask_training.json."""
    ap = mode_parser(__doc__, list(MODES))
    ap.add_argument("--customers", type=int, help="override the mode's number of customers")
    ap.add_argument("--rows-per-file", type=int, help="customers per Parquet file")
    ap.add_argument("--workers", default="1,2", help="worker counts to run (default 1,2)")
    ap.add_argument("--data", type=Path, help="reuse (or keep) the generated data in this folder")
    ap.add_argument("--results", type=Path, help="folder for the JSON (default bench/results)")
    args = ap.parse_args(argv)
    mode = MODES[args.mode or "quick"]
    customers = args.customers or mode["customers"]
    per_file = args.rows_per_file or mode["rows_per_file"]
    workers = [int(w) for w in args.workers.split(",")]
    scratch = Path(tempfile.mkdtemp(prefix="bench-dask-"))
    data = args.data or scratch / "data"
    try:
        generation = None
        if not (data / "customers.parquet").is_dir():
            cmd = [PYTHON, "-m", "training", "-q", "generate", "--out", str(data)]
            cmd += ["--customers", str(customers), "--rows-per-file", str(per_file)]
            generation = run_tree(cmd) | {"customers": customers, "rows_per_file": per_file}
            generation.pop("stdout")
            print(f"generated {customers:,} customers: {generation}", file=sys.stderr)
        runs = []
        for w in workers:
            out = scratch / f"bundles-{w}"
            cmd = [PYTHON, "-m", "training", "-q", "train", "--config"]
            cmd += [str(ROOT / "examples" / "demo_dask.toml"), "--data-dir", str(data)]
            cmd += ["--output", str(out), "--engine", "dask", "--workers", str(w)]
            train = run_tree(cmd)
            manifest = json.loads((out / "current" / "manifest.json").read_text())
            scored = scratch / f"scored-{w}"
            cmd = [PYTHON, "-m", "training", "-q", "score", "--bundle", str(out)]
            cmd += ["--input", str(data / "customers.parquet"), "--output", str(scored)]
            cmd += ["--engine", "dask", "--workers", str(w)]
            score = run_tree(cmd)
            shutil.rmtree(scored, ignore_errors=True)
            run = {
                "workers": w,
                "train_wall_s": train["wall_s"],
                "train_peak_tree_mb": train["peak_tree_mb"],
                "stages_s": manifest["timings"],
                "client_peak_mb": manifest["peak_rss_mb"],
                "workers_peak_mb": manifest["engine"]["workers_peak_rss_mb"],
                "k": manifest["metrics"]["segmentation"]["k"],
                "truth_ari": manifest["metrics"]["segmentation"]["truth_ari"],
                "auc": (manifest["metrics"]["response_model"] or {}).get("auc"),
                "score_wall_s": score["wall_s"],
                "score_peak_tree_mb": score["peak_tree_mb"],
            }
            runs.append(run)
            print(f"{w} worker(s): {run}", file=sys.stderr)
    finally:
        if args.data is None:
            shutil.rmtree(scratch, ignore_errors=True)
    stages = ["prepare", "segmentation", "naming", "response_model", "export"]
    rows = []
    for r in runs:
        rows.append(
            [
                r["workers"],
                fmt(r["train_wall_s"], 1),
                *[fmt(r["stages_s"].get(s), 1) for s in stages],
                fmt(r["train_peak_tree_mb"]),
                fmt(r["score_wall_s"], 1),
                fmt(r["score_peak_tree_mb"]),
                r["k"],
                fmt(r["truth_ari"], 3),
                fmt(r["auc"], 3),
            ]
        )
    headers = ["workers", "train s", *[f"{s} s" for s in stages], "train peak MiB"]
    headers += ["score s", "score peak MiB", "k", "ARI", "AUC"]
    result = {
        "machine": machine_info("bench.dask_training", argv or sys.argv[1:]),
        "customers": customers,
        "rows_per_file": per_file,
        "generation": generation,
        "runs": runs,
        "targets": {
            "customers": TARGET_CUSTOMERS,
            "wall_s": TARGET_WALL_S,
            "peak_mb": TARGET_PEAK_MB,
        },
    }
    publish("dask_training", result, markdown_table(headers, rows), args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
