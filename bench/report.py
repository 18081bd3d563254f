"""Writes the figures section of bench/RESULTS.md from the JSON files in bench/results/.

Only the text between the two markers below is replaced, so the hand-written reading of the
figures (what dominates, what to do next) around them survives a re-run.

    python -m bench.report [--results DIR] [--out bench/RESULTS.md]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from bench import (
    batch_scoring,
    database_read,
    evidence,
    profile_request,
    serving,
    targeting,
    training,
    transactions,
)
from bench.common import RESULTS_DIR, ROOT, fmt, markdown_table

START = "<!-- figures:start (written by python -m bench.report; edits here are overwritten) -->"
END = "<!-- figures:end -->"
SECTIONS = (
    ("serving", "Serving (issues 3 and 12)", serving.markdown),
    ("batch_scoring", "Offline batch scoring", batch_scoring.markdown),
    ("training", "Training (issue 2)", training.markdown),
    ("evidence", "Algorithm comparison and reports (issue 13)", evidence.markdown),
    ("transactions", "Transactions to features and the CLV fit (issue 10)", transactions.markdown),
    ("database_read", "Reading a PostgreSQL table (issue 10)", database_read.markdown),
    ("targeting", "Targeting: rules, control groups, caps (issue 9)", targeting.markdown),
    (
        "targeting_server",
        "Targeting through the server: rules, control groups, caps (issue 9)",
        targeting.server_markdown,
    ),
    ("profile_request", "Profile of one request", profile_request.markdown),
)
TEMPLATE = f"""# Benchmark results

Produced by `make bench` (`bench/run.sh`); how to run and read them: `bench/README.md`.

{START}
{END}
"""


def _load(directory: Path, name: str) -> dict[str, Any] | None:
    path = directory / f"{name}.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def _machine_line(machine: dict[str, Any]) -> str:
    v = machine.get("versions", {})
    libs = ", ".join(
        f"{k} {v[k]}" for k in ("python", "numpy", "scikit-learn", "lightgbm") if k in v
    )
    return (
        f"{machine.get('date')}, {machine.get('cores')} cores ({machine.get('cpu_model')}), "
        f"{machine.get('memory_gb')} GB, load average at start "
        f"{', '.join(str(x) for x in machine.get('load_average_at_start', []))}; {libs}; "
        f"revision {machine.get('git_revision')}; command `{machine.get('command')}`"
    )


def _met(met: bool | None) -> str:
    return "not measured" if met is None else ("met" if met else "**not met**")


def _digits_showing_miss(target: dict[str, Any], digits: int) -> int:
    """More digits when the rounded figure would equal a goal it missed (5.005 shown as 5.00
    against "<= 5" reads as met)."""
    goal = re.search(r"-?\d[\d,]*(?:\.\d+)?", str(target.get("target", "")))
    measured = target.get("measured")
    if target.get("met") is not False or goal is None or not isinstance(measured, float):
        return digits
    bound = float(goal.group().replace(",", ""))
    while digits < 6 and round(measured, digits) == bound:
        digits += 1
    return digits


def figures(directory: Path) -> str:
    """The generated section: a targets summary, then each benchmark's tables."""
    loaded = {name: _load(directory, name) for name, _, _ in SECTIONS}
    targets = []
    for name, default_issue in (
        ("serving", "3"),
        ("batch_scoring", "12"),
        ("training", "2"),
        ("evidence", "13"),
        ("transactions", "10"),
        # issue 9 names requests/s, which users see through the server: those are its rows;
        # the in-process ratios (bench.targeting without --server) stay in their own section
        ("targeting_server" if loaded.get("targeting_server") else "targeting", "9"),
    ):
        data = loaded.get(name)
        for t in (data or {}).get("targets", []):
            issue = t.get("issue", default_issue)
            digits = 2 if isinstance(t["measured"], float) and t["measured"] < 100 else 0
            digits = _digits_showing_miss(t, digits)
            targets.append(
                [f"#{issue}", t["name"], t["target"], fmt(t["measured"], digits), _met(t["met"])]
            )
    parts = ["## Targets at a glance"]
    if targets:
        parts.append(markdown_table(["issue", "target", "goal", "measured", "status"], targets))
    else:
        parts.append("(no results yet: run `make bench`)")
    for name, title, render in SECTIONS:
        data = loaded.get(name)
        parts.append(f"## {title}")
        if data is None:
            parts.append(f"(no `bench/results/{name}.json` yet)")
            continue
        parts.append(f"Measured {_machine_line(data['machine'])}.")
        extra = data.get("settings") or {}
        if extra:
            parts.append(
                "Settings: " + "; ".join(f"{k.replace('_', ' ')}: {v}" for k, v in extra.items())
            )
        parts.append(render(data))
    return "\n\n".join(parts)


def update(out: Path, directory: Path) -> None:
    """Rewrite the figures section of ``out`` (created from a template when absent)."""
    text = out.read_text(encoding="utf-8") if out.is_file() else TEMPLATE
    if START not in text or END not in text:
        text = text.rstrip() + "\n\n" + START + "\n" + END + "\n"
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    out.write_text(f"{head}{START}\n\n{figures(directory)}\n\n{END}{tail}", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    """Update bench/RESULTS.md."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=RESULTS_DIR, help="folder of results JSON")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "RESULTS.md")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    update(args.out, args.results)
    print(f"updated {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
