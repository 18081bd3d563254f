"""Training benchmark: wall time and peak memory of the whole pipeline, by size and by stage.

For each size the demo data is generated (not timed), then ``python -m training train --config
examples/demo.toml --data-dir ... --output ...`` runs as a child process: its wall time and peak
resident memory (``wait4``'s ru_maxrss) are measured from outside, and the per-stage seconds
come from the ``timings`` the pipeline records in the bundle's ``manifest.json``. The time not
covered by any stage (interpreter start-up, imports, ...) is shown as "outside stages".

    python -m bench.training [--quick | --full | --smoke] [--sizes 10000,100000]
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

from bench.common import (
    by_size,
    fmt,
    generate_demo_data,
    logged_stages,
    machine_info,
    markdown_table,
    median,
    publish,
    sized_args,
    train_demo_bundle,
    training_available,
)

MODES = {
    "smoke": {"sizes": [3_000], "rounds": 1},
    "quick": {"sizes": [10_000, 100_000], "rounds": 1},
    "full": {"sizes": [10_000, 100_000, 1_000_000], "rounds": 1},
}
#: targets from issue 2 ("Speed"), for 1,000,000 customers
TARGET_SIZE = 1_000_000
TARGET_WALL_S = 90.0
TARGET_PEAK_MB = 4096.0


def read_manifest(model_root: Path) -> dict[str, Any]:
    """The manifest of the bundle ``current`` names under ``model_root``."""
    return json.loads((model_root / "current" / "manifest.json").read_text(encoding="utf-8"))


def _stage_seconds(timings: Any) -> dict[str, float]:
    """The manifest's ``timings`` as {stage: seconds} (nested dicts flattened with '/')."""
    flat: dict[str, float] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                walk(f"{prefix}/{key}" if prefix else str(key), sub)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[prefix] = float(value)

    walk("", timings or {})
    return flat


def stage_figures(manifest: dict[str, Any], log: str) -> tuple[dict[str, float], dict[str, float]]:
    """Seconds and peak RSS per stage: the manifest's ``timings`` (the record), in the order the
    stages ran, plus stages the manifest cannot hold (``export`` writes it) from the log."""
    seconds = _stage_seconds(manifest.get("timings"))
    peaks = _stage_seconds(manifest.get("peak_rss_mb"))
    logged = logged_stages(log)
    order = [name for name, _, _ in logged]
    for name, secs, peak in logged:
        seconds.setdefault(name, secs)
        peaks.setdefault(name, peak)
    rank = {name: i for i, name in enumerate(order)}
    ordered = sorted(seconds, key=lambda n: (rank.get(n.split("/")[0], len(rank)), n))
    return {n: seconds[n] for n in ordered}, {n: peaks[n] for n in ordered if n in peaks}


def bench_size(n: int, rounds: int, scratch: Path) -> dict[str, Any]:
    """Generate ``n`` customers once, train ``rounds`` times, keep the median round."""
    data_dir = scratch / f"data-{n}"
    gen = generate_demo_data(data_dir, n)
    runs = []
    for r in range(rounds):
        model_root = scratch / f"models-{n}-{r}"
        run = train_demo_bundle(data_dir, model_root)
        manifest = read_manifest(model_root)
        stages, peaks = stage_figures(manifest, run.stderr + run.stdout)
        seg = (manifest.get("metrics") or {}).get("segmentation") or {}
        runs.append(
            {
                "wall_s": run.wall_s,
                "max_rss_mb": run.max_rss_mb,
                "stages_s": stages,
                "stage_peak_rss_mb": peaks,
                "k": seg.get("k") or (manifest.get("segments") or {}).get("k"),
                "metrics": _small_metrics(manifest.get("metrics", {})),
            }
        )
        print(
            f"  {n:>9,} customers round {r + 1}/{rounds}: {run.wall_s:6.1f} s, "
            f"peak {run.max_rss_mb:,.0f} MB",
            flush=True,
        )
        shutil.rmtree(model_root, ignore_errors=True)
    shutil.rmtree(data_dir, ignore_errors=True)
    best = sorted(runs, key=lambda x: x["wall_s"])[len(runs) // 2]
    stage_names = list(best["stages_s"])
    return {
        "customers": n,
        "generate_s": gen.wall_s,
        "wall_s": median([x["wall_s"] for x in runs]),
        "max_rss_mb": max(x["max_rss_mb"] for x in runs),
        "stages_s": {s: median([x["stages_s"].get(s, 0.0) for x in runs]) for s in stage_names},
        "stage_peak_rss_mb": best["stage_peak_rss_mb"],
        "k": best["k"],
        "metrics": best["metrics"],
        "rounds": runs,
    }


def _small_metrics(metrics: Any) -> dict[str, Any]:
    """The headline metrics only (segmentation ARI, response AUC, ...): the file stays small."""
    out: dict[str, Any] = {}
    if not isinstance(metrics, dict):
        return out
    for group, values in metrics.items():
        if isinstance(values, dict):
            for key, value in values.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    out[f"{group}.{key}"] = value
        elif isinstance(values, int | float) and not isinstance(values, bool):
            out[group] = values
    return out


def _top_stages(stages: dict[str, float]) -> dict[str, float]:
    """Only top-level stages when the timings are nested (the table stays readable)."""
    top = {k: v for k, v in stages.items() if "/" not in k}
    return top or stages


def evaluate_targets(sizes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 2's targets against the 1,000,000-customer run (absent when it was not run)."""
    row = next((s for s in sizes if s["customers"] == TARGET_SIZE), None)
    wall = row["wall_s"] if row else None
    peak = row["max_rss_mb"] if row else None
    return [
        {
            "name": "training 1,000,000 customers: wall time (s)",
            "target": f"<= {TARGET_WALL_S:g}",
            "measured": wall,
            "met": None if wall is None else wall <= TARGET_WALL_S,
        },
        {
            "name": "training 1,000,000 customers: peak memory (MB)",
            "target": f"<= {TARGET_PEAK_MB:,.0f}",
            "measured": peak,
            "met": None if peak is None else peak <= TARGET_PEAK_MB,
        },
    ]


def markdown(result: dict[str, Any]) -> str:
    """The benchmark's tables: totals, then seconds per stage by size."""
    sizes = result["sizes"]
    if not sizes:
        return "(training not available: training/ or examples/demo.toml missing)"
    stages: list[str] = []
    for s in sizes:
        for name in _top_stages(s["stages_s"]):
            if name not in stages:
                stages.append(name)
    rows = []
    for s in sizes:
        top = _top_stages(s["stages_s"])
        outside = s["wall_s"] - sum(top.values())
        rows.append(
            [
                fmt(s["customers"]),
                fmt(s["wall_s"], 1),
                fmt(s["max_rss_mb"]),
                fmt(s["k"]),
                *[fmt(top.get(name), 2) for name in stages],
                fmt(outside, 2),
            ]
        )
    table = markdown_table(
        ["customers", "wall s", "peak MB", "k", *[f"{n} s" for n in stages], "outside stages s"],
        rows,
    )
    peak_rows = [
        [fmt(s["customers"]), *[fmt(s.get("stage_peak_rss_mb", {}).get(n)) for n in stages]]
        for s in sizes
    ]
    if any(s.get("stage_peak_rss_mb") for s in sizes):
        table += "\n\nPeak RSS of the training process at the end of each stage (MB):\n\n"
        table += markdown_table(["customers", *stages], peak_rows)
    subs = [n for n in dict.fromkeys(k for s in sizes for k in s["stages_s"]) if "/" in n]
    if subs:
        table += "\n\nInside the stages (s):\n\n" + markdown_table(
            ["customers", *subs],
            [[fmt(s["customers"]), *[fmt(s["stages_s"].get(n), 2) for n in subs]] for s in sizes],
        )
    targets = markdown_table(
        ["target", "goal", "measured", "met"],
        [
            [
                t["name"],
                t["target"],
                fmt(t["measured"], 1),
                "n/a" if t["met"] is None else ("yes" if t["met"] else "**no**"),
            ]
            for t in result["targets"]
        ],
    )
    return f"{table}\n\n**Targets (issue 2)**\n\n{targets}"


def main(argv: list[str] | None = None) -> int:
    """Run the training benchmark and write bench/results/training.json."""
    argv = sys.argv[1:] if argv is None else argv
    args, sizes, rounds = sized_args(
        __doc__,
        MODES,
        argv,
        example="10000,100000",
        rounds="training runs per size (median reported)",
    )

    result: dict[str, Any] = {
        "benchmark": "training",
        "machine": machine_info("bench.training", argv),
        "config": "examples/demo.toml",
        "sizes": [],
    }
    if not training_available():
        print("training/ (with __main__.py) or examples/demo.toml missing: nothing to measure")
    else:
        result["sizes"] = by_size("training", sizes, lambda n, d: bench_size(n, rounds, d))
    result["targets"] = evaluate_targets(result["sizes"])
    publish("training", result, markdown(result), args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
