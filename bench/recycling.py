"""Recycling benchmark: latency through worker recycles and SIGHUP roll-outs with one worker.

Issue 12 asks that recycling and restarts not stall: with gunicorn's own ``max_requests`` a
single worker stopped, and its replacement loaded the bundle before answering (p99 1.3 s). This
benchmark serves ``/predict-segment`` from one worker of the service (our gunicorn.conf.py,
pinned to core 0; wrk with ``connections`` kept-alive connections pinned to core 1) in three
modes, measured in interleaved rounds (the order reversed every other round):

- ``steady``: no recycling (``GUNICORN_MAX_REQUESTS=0``), nothing injected: the reference;
- ``recycling``: ``GUNICORN_MAX_REQUESTS`` small enough to recycle the worker several times
  during each measurement;
- ``sighup``: no recycling; every ``--sighup-every`` seconds ``current`` flips between two
  copies of the bundle and the master gets SIGHUP (a verified roll-out, swapped in place).

Reported per mode: medians over rounds of requests/s, p50, p99 and max latency (ms), errors
(non-2xx answers and socket errors, summed), and how many recycles or roll-outs happened in each
measurement (from the server log). Each mode starts its own server for each round.

    python -m bench.recycling [--quick | --full | --smoke] [--model-root DIR] [--connections 8]
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import (
    bundle_for,
    fmt,
    machine_info,
    markdown_table,
    median,
    mode_parser,
    publish,
)
from bench.serving import Scenario, build_scenarios, gunicorn_server, wrk_load
from scoring.bundle import load_current, set_current, write_bundle

MODES = {
    # a replacement worker takes a few seconds to boot on a busy 2-core machine: the budget
    # must leave room for it, and each measurement must span several recycles
    "smoke": {"rounds": 1, "duration": 4, "max_requests": 1_000, "sighup_every": 1.5},
    "quick": {"rounds": 2, "duration": 20, "max_requests": 6_000, "sighup_every": 5.0},
    "full": {"rounds": 3, "duration": 30, "max_requests": 8_000, "sighup_every": 6.0},
}
MEASURES = ("steady", "recycling", "sighup")
#: what the master logs once a worker has been replaced (api/fleet.py ``Recycler``)
_RECYCLED = re.compile(r"recycled worker \d+")
_ROLLED_OUT = re.compile(r"SIGHUP: rolling out bundle")
#: the second bundle folder the sighup mode flips ``current`` to
FLIP_VERSION = "recycling-bench-flip"


def _flip_root(model_root: Path, scratch: Path) -> tuple[Path, list[str]]:
    """A writable copy of ``model_root`` holding the bundle twice (two folders, one model)."""
    root = scratch / "flip-root"
    if not root.exists():
        shutil.copytree(model_root, root, symlinks=True)
        first = load_current(root).path.name
        write_bundle(load_current(root), root, version=FLIP_VERSION, make_current=False)
        (root / ".folders").write_text(f"{first}\n{FLIP_VERSION}\n")
    return root, (root / ".folders").read_text().split()


def _sighups(master: int, root: Path, folders: list[str], every: float, stop: threading.Event):
    """Flip ``current`` and SIGHUP the master every ``every`` seconds until ``stop``."""
    i = 0
    while not stop.wait(every):
        i += 1
        set_current(root, folders[i % len(folders)])
        os.kill(master, signal.SIGHUP)


def measure(
    mode: str,
    model_root: Path,
    scenario: Scenario,
    *,
    seconds: float,
    connections: int,
    max_requests: int,
    sighup_every: float,
    scratch: Path,
) -> dict[str, Any]:
    """One measurement of ``mode`` on a fresh one-worker server."""
    root = model_root
    folders: list[str] = []
    if mode == "sighup":
        root, folders = _flip_root(model_root, scratch)
        set_current(root, folders[0])
    log = scratch / f"gunicorn-{mode}.log"
    budget = max_requests if mode == "recycling" else 0
    with gunicorn_server(root, 1, "0", None, log, max_requests=budget) as (port, master):
        wrk_load(port, scenario, connections, 1, "1", scratch)  # warm-up, not counted
        start = log.stat().st_size
        stop = threading.Event()
        flipper = None
        if mode == "sighup":
            flipper = threading.Thread(
                target=_sighups, args=(master, root, folders, sighup_every, stop), daemon=True
            )
            flipper.start()
        try:
            run = wrk_load(port, scenario, connections, seconds, "1", scratch)
        finally:
            stop.set()
            if flipper is not None:
                flipper.join()
        time.sleep(0.2)
        with open(log, "rb") as f:
            f.seek(start)
            text = f.read().decode(errors="replace")
    run["events"] = len((_ROLLED_OUT if mode == "sighup" else _RECYCLED).findall(text))
    return run


def summarise(runs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Medians over rounds per mode, with the p99 ratio to the steady reference."""
    steady_p99 = median([r["p99_ms"] for r in runs["steady"]]) if runs.get("steady") else None
    rows = []
    for mode, rs in runs.items():
        p99 = median([r["p99_ms"] for r in rs])
        rows.append(
            {
                "mode": mode,
                "rounds": len(rs),
                "rps": median([r["rps"] for r in rs]),
                "p50_ms": median([r["p50_ms"] for r in rs]),
                "p99_ms": p99,
                "p99_runs_ms": [round(r["p99_ms"], 2) for r in rs],
                "max_ms": median([r["max_ms"] for r in rs]),
                "max_worst_ms": max(r["max_ms"] for r in rs),
                "errors": sum(r["errors"] for r in rs),
                "events_per_run": [r["events"] for r in rs],
                "p99_vs_steady": p99 / steady_p99 if steady_p99 else None,
            }
        )
    return rows


def markdown(result: dict[str, Any]) -> str:
    """The result as a Markdown table."""
    rows = [
        [
            r["mode"],
            fmt(r["rps"]),
            fmt(r["p50_ms"], 2),
            fmt(r["p99_ms"], 2),
            ", ".join(f"{x:.1f}" for x in r["p99_runs_ms"]),
            fmt(r["max_ms"], 1),
            fmt(r["max_worst_ms"], 1),
            fmt(r["errors"]),
            ", ".join(str(e) for e in r["events_per_run"]),
        ]
        for r in result["rows"]
    ]
    headers = [
        "mode",
        "req/s",
        "p50 ms",
        "p99 ms",
        "p99 per round",
        "max ms (median)",
        "max ms (worst)",
        "errors",
        "recycles / roll-outs per run",
    ]
    return markdown_table(headers, rows)


def main(argv: list[str] | None = None) -> int:
    """Run the recycling benchmark and write bench/results/recycling.json."""
    argv = sys.argv[1:] if argv is None else argv
    ap = mode_parser(__doc__, MODES)
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--duration", type=float, help="seconds per measurement")
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--max-requests", type=int, help="GUNICORN_MAX_REQUESTS in the recycling mode")
    ap.add_argument("--sighup-every", type=float, help="seconds between roll-outs (sighup mode)")
    ap.add_argument("--model-root", type=Path, help="serve this bundle root (default: train one)")
    ap.add_argument("--customers", type=int, default=75_000, help="demo customers to train on")
    ap.add_argument("--results", type=Path, help="results folder (default bench/results)")
    args = ap.parse_args(argv)
    if shutil.which("wrk") is None:
        ap.error("wrk is needed (apt-get install wrk)")
    # recycles and roll-outs are counted from the master's INFO lines
    os.environ["BENCH_LOG_LEVEL"] = "INFO"
    mode = MODES[args.mode or "quick"]
    rounds = args.rounds or mode["rounds"]
    seconds = args.duration or mode["duration"]
    max_requests = args.max_requests or mode["max_requests"]
    sighup_every = args.sighup_every or mode["sighup_every"]
    scratch = Path(tempfile.mkdtemp(prefix="bench-recycling-"))
    try:
        model_root, source = bundle_for(args.model_root, scratch, args.customers)
        scenario = next(
            s for s in build_scenarios({"demo": model_root}, 1) if s.path == "/predict-segment"
        )
        runs: dict[str, list[dict[str, Any]]] = {m: [] for m in MEASURES}
        load_before = os.getloadavg()
        for rnd in range(rounds):
            order = MEASURES if rnd % 2 == 0 else tuple(reversed(MEASURES))
            for m in order:
                run = measure(
                    m,
                    model_root,
                    scenario,
                    seconds=seconds,
                    connections=args.connections,
                    max_requests=max_requests,
                    sighup_every=sighup_every,
                    scratch=scratch,
                )
                print(f"round {rnd + 1} {m}: {run}", flush=True)
                runs[m].append(run)
        result = {
            "benchmark": "recycling",
            "machine": machine_info("bench.recycling", argv),
            "settings": {
                "mode": args.mode or "quick",
                "rounds": rounds,
                "seconds_per_measurement": seconds,
                "connections": args.connections,
                "endpoint": "/predict-segment (one customer)",
                "workers": 1,
                "recycling_max_requests": max_requests,
                "sighup_every_seconds": sighup_every,
                "bundle": source,
                "load_average_before": [round(x, 1) for x in load_before],
                "load_average_after": [round(x, 1) for x in os.getloadavg()],
            },
            "rows": summarise(runs),
        }
        publish("recycling", result, markdown(result), args.results)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
