"""What the algorithm comparison and the HTML report add to training (issue 13: at most 30%).

For each size the demo data is generated once (not timed); then, interleaved round by round,
``python -m training train`` runs on it twice: once as shipped (``examples/demo.toml``: the
comparison and both reports on) and once bare (the same config with ``[comparison] enabled =
false`` and ``[output] report = false``). Wall time is measured from outside each child; the
``comparison`` and ``report`` stage seconds come from the run's log. Medians over the rounds.

    python -m bench.evidence [--quick | --full | --smoke] [--sizes 100000] [--rounds 3]
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path
from typing import Any

from bench import common
from bench.common import ROOT, fmt, markdown_table, median

MODES = {
    "smoke": {"sizes": [2_000], "rounds": 1},
    "quick": {"sizes": [100_000], "rounds": 3},
    "full": {"sizes": [100_000], "rounds": 5},
}
#: the issue's target: comparison and report add at most this share to training, at this size
TARGET_SIZE = 100_000
TARGET_OVERHEAD = 0.30


def bare_config(folder: Path) -> Path:
    """examples/demo.toml with the comparison and both reports switched off."""
    text = (ROOT / "examples" / "demo.toml").read_text(encoding="utf-8")
    text, replaced = re.subn(r"^\[output\]\s*$", "[output]\nreport = false", text, flags=re.M)
    if not replaced:
        text += "\n[output]\nreport = false\n"
    text += "\n[comparison]\nenabled = false\n"
    path = folder / "demo-bare.toml"
    path.write_text(text, encoding="utf-8")
    return path


def train_once(config: Path, data_dir: Path, model_root: Path) -> dict[str, Any]:
    """One training child: wall seconds and the logged stage seconds."""
    run = common.train_demo_bundle(data_dir, model_root, config=config)
    stages = {name: secs for name, secs, _ in common.logged_stages(run.stderr + run.stdout)}
    shutil.rmtree(model_root, ignore_errors=True)
    return {"wall_s": run.wall_s, "stages_s": stages}


def bench_size(n: int, rounds: int, scratch: Path) -> dict[str, Any]:
    """Generate ``n`` customers, then alternate full and bare training ``rounds`` times."""
    data_dir = scratch / f"data-{n}"
    common.generate_demo_data(data_dir, n)
    configs = {"full": ROOT / "examples" / "demo.toml", "bare": bare_config(scratch)}
    runs: dict[str, list[dict[str, Any]]] = {"full": [], "bare": []}
    for r in range(rounds):
        # alternate which goes first, so a drift in machine load hits both alike
        order = ("full", "bare") if r % 2 == 0 else ("bare", "full")
        for kind in order:
            runs[kind].append(train_once(configs[kind], data_dir, scratch / f"models-{kind}"))
        print(
            f"  {n:>9,} customers round {r + 1}/{rounds}: full {runs['full'][-1]['wall_s']:.1f} s,"
            f" bare {runs['bare'][-1]['wall_s']:.1f} s",
            flush=True,
        )
    shutil.rmtree(data_dir, ignore_errors=True)
    full = median([x["wall_s"] for x in runs["full"]])
    bare = median([x["wall_s"] for x in runs["bare"]])

    def stage(name: str) -> float:
        return median([x["stages_s"].get(name, 0.0) for x in runs["full"]])

    return {
        "customers": n,
        "rounds": rounds,
        "full_wall_s": full,
        "bare_wall_s": bare,
        "overhead": full / bare - 1.0 if bare > 0 else None,
        "comparison_s": stage("comparison"),
        "report_s": stage("report"),
        "training_stages_s": median(
            [sum(v for k, v in x["stages_s"].items() if k not in ("report",)) for x in runs["bare"]]
        ),
        "runs": runs,
    }


def evaluate_targets(sizes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's target, with the measured figure when the target size was run."""
    row = next((s for s in sizes if s["customers"] == TARGET_SIZE), None)
    overhead = None if row is None or row["overhead"] is None else row["overhead"]
    return [
        {
            "name": f"comparison + reports: training time added at {TARGET_SIZE:,} customers (%)",
            "target": f"<= {100 * TARGET_OVERHEAD:.0f}",
            "measured": None if overhead is None else 100.0 * overhead,
            "met": None if overhead is None else overhead <= TARGET_OVERHEAD,
        }
    ]


def markdown(result: dict[str, Any]) -> str:
    """The results as a Markdown table."""
    rows = [
        [
            f"{s['customers']:,}",
            s["rounds"],
            fmt(s["bare_wall_s"], 1),
            fmt(s["full_wall_s"], 1),
            "n/a" if s["overhead"] is None else f"{100 * s['overhead']:+.0f}%",
            fmt(s["comparison_s"], 2),
            fmt(s["report_s"], 2),
        ]
        for s in result["sizes"]
    ]
    table = markdown_table(
        [
            "customers",
            "rounds",
            "bare training s",
            "with comparison + reports s",
            "overhead",
            "comparison stage s",
            "report stage s",
        ],
        rows,
    )
    lines = [table, ""]
    for t in result.get("targets", []):
        measured = "not measured" if t["measured"] is None else f"{t['measured']:.0f}"
        status = "not measured" if t["met"] is None else ("met" if t["met"] else "**not met**")
        lines.append(f"Target (issue 13): {t['name']} {t['target']}: {measured}, {status}.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write bench/results/evidence.json."""
    argv = sys.argv[1:] if argv is None else argv
    args, sizes, rounds = common.sized_args(
        __doc__,
        MODES,
        argv,
        example="100000",
        rounds="interleaved rounds per size (median reported)",
    )
    result: dict[str, Any] = {
        "benchmark": "evidence",
        "machine": common.machine_info("bench.evidence", argv),
        "sizes": [],
    }
    if common.training_available():
        result["sizes"] = common.by_size("evidence", sizes, lambda n, d: bench_size(n, rounds, d))
    result["targets"] = evaluate_targets(result["sizes"])
    common.publish("evidence", result, markdown(result), args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
