"""Run the fault scenarios and write RELIABILITY.md: ``python -m bench.reliability``.

    python -m bench.reliability                 # every scenario, long versions (~15 min)
    python -m bench.reliability --quick         # short versions (~5 min)
    python -m bench.reliability --only recycling slow_clients

Loopback only; each scenario starts its own gunicorn (and, for the Redis faults, its own
redis-server on a free port; behind a proxy, its own nginx) and stops them by PID. Rate-limit scenarios use the Redis at
REDIS_URL (default 127.0.0.1:6379) under their own key prefix, deleted afterwards.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import prepare_bundle
from bench.reliability import scenarios as sc
from bench.reliability.harness import ROOT

COLUMNS = ("sent", "ok", "failed", "lost", "p50_ms", "p99_ms", "max_ms")

#: a later partial run (recycling and nginx rows), kept beside the full run's table
RECENT = "## Recycling without a gap, and nginx in front (2026-12-06)\n\nMeasured 2026-12-06 10:19-10:21 UTC by `python -m bench.reliability --quick --only recycling slow_clients` (demo bundle; revision d9cbc08; load average 13.0: other helpers' jobs shared both cores, so latencies are inflated; the 1-worker rows' clients are 8 Python threads in one process, which caps their rate). Since this run a worker past its budget keeps serving while the master forks its replacement from a process that already holds the verified bundle (`api/fleet.py`, `api.model.preload`), and stops it only once the replacement is ready, so even a single worker recycles without a gap; nginx (Debian's nginx-light, `deploy/nginx-loopback.conf`) buffers slow clients itself, so even gunicorn's plain gthread worker keeps answering behind it, and nothing is lost through recycles on its kept-alive upstream connections (no 502).\n\n| scenario | load | injected | sent | ok | failed | lost | p50_ms | p99_ms | max_ms | checks |\n|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|\n| slow clients (slow headers) [--worker-class gthread] | 2 closed-loop clients, /predict-segment, 2 workers | 200 connections sending one header line every 2 s for 8 s | 4 | 0 | 0 | 4 | - | - | - | all pass |\n| slow clients (slow headers) | 2 closed-loop clients, /predict-segment, 2 workers | 200 connections sending one header line every 2 s for 8 s | 7,486 | 7,486 | 0 | 0 | 0.8 | 16.2 | 43.4 | all pass |\n| slow clients (slow bodies) | 2 closed-loop clients, /predict-segment, 2 workers | 200 connections sending one body byte every 2 s for 8 s | 4,346 | 4,346 | 0 | 0 | 1.9 | 14.1 | 29.9 | all pass |\n| slow clients (slow headers) behind nginx [--worker-class gthread] | 2 closed-loop clients, /predict-segment, 2 workers, through nginx | 200 connections sending one header line every 2 s for 8 s | 1,189 | 1,189 | 0 | 0 | 12.7 | 30.0 | 42.7 | all pass |\n| worker recycling under load, 2 workers | 4 closed-loop clients for 8 s, 2 workers | GUNICORN_MAX_REQUESTS=300 (+10% jitter) | 7,858 | 7,858 | 0 | 0 | 1.5 | 35.9 | 74.5 | all pass |\n| worker recycling under load, 1 worker | 8 closed-loop clients for 9 s, 1 worker | GUNICORN_MAX_REQUESTS=300 (+10% jitter) | 4,154 | 4,154 | 0 | 0 | 15.8 | 67.0 | 147.0 | all pass |\n| worker recycling under load, 1 worker behind nginx | 8 closed-loop clients for 9 s, 1 worker, through nginx | GUNICORN_MAX_REQUESTS=300 (+10% jitter) | 4,990 | 4,990 | 0 | 0 | 12.5 | 64.5 | 141.2 | all pass |\n\nFeedback while Redis is frozen (`scenarios.feedback_during_redis_freeze`, in the `redis_faults` run; measured 2026-12-06 10:31 UTC on its own, demo bundle, SIGSTOP for 3 s, same busy machine): 813 events sent one after another, 760 acknowledged (202) and all 760 in the stream after the thaw; 53 answered 503 `feedback_unavailable` with Retry-After, none with another status; 3 of those 53 reached Redis anyway (written while it was frozen, applied on the thaw), which is why the answer asks for the same events again and the fold counts each `event_id` once: nothing acknowledged is lost, nothing retried is counted twice.\n\nLatency through recycles and SIGHUP roll-outs with one worker, against no recycling, is in bench/RESULTS.md (\"Recycling and roll-outs with one worker\", `python -m bench.recycling`).\n"


#: gunicorn's own threaded worker, as the service ran before WholeRequestWorker
GTHREAD = ("--worker-class", "gthread")


def _before(result: dict[str, Any]) -> dict[str, Any]:
    """A run of the old configuration: it is expected to show the outage."""
    result["checks"] = {"reproduces the outage (no normal request answered)": result["ok"] == 0}
    return result


def _reference(result: dict[str, Any]) -> dict[str, Any]:
    """The abuse without limits: what the limits are compared with (single customers starve)."""
    result["checks"] = {
        "reference without limits: single customers slowed (p50 > 500 ms) or lost": (
            result["lost"] > 0 or (result["p50_ms"] or 0) > 500
        )
    }
    return result


def plan(root: Path, quick: bool, redis_url: str) -> dict[str, Callable[[], Any]]:
    """Scenario name -> a call that runs it (long or short version)."""
    q = quick
    limits = {
        "RATE_LIMIT_CUSTOMERS_PER_SECOND": "5000",
        "RATE_LIMIT_REQUESTS_PER_SECOND": "200",
    }
    return {
        "slow_clients": lambda: [
            _before(sc.slow_clients(root, slow=200, seconds=8 if q else 20, args=GTHREAD)),
            sc.slow_clients(root, slow=200, seconds=8 if q else 20),
            sc.slow_clients(root, slow=200, seconds=8 if q else 20, body=True),
            # the other answer: a buffering proxy in front of gunicorn's own worker
            sc.slow_clients(root, slow=200, seconds=8 if q else 20, nginx=True, args=GTHREAD),
        ],
        "sighup_bad_current": lambda: sc.sighup_bad_current(root),
        "recycling": lambda: [
            sc.recycling(root, recycles=3 if q else 6, max_requests=300),
            sc.recycling(root, recycles=3 if q else 6, max_requests=300, workers=1, clients=8),
            sc.recycling(
                root, recycles=3 if q else 6, max_requests=300, workers=1, clients=8, nginx=True
            ),
        ],
        "reload_under_load": lambda: sc.reload_under_load(root),
        "bad_bundles": lambda: sc.bad_bundles(root),
        "kill_worker": lambda: sc.kill_worker(root),
        "redis_faults": lambda: [
            *sc.redis_faults(root, fault_seconds=5 if q else 12),
            sc.feedback_during_redis_freeze(root, fault_seconds=5 if q else 12),
        ],
        "batch_abuse": lambda: [
            _reference(sc.batch_abuse(root, redis_url, seconds=8 if q else 20)),
            sc.batch_abuse(root, redis_url, seconds=8 if q else 20, limits=limits),
        ],
        "soak": lambda: sc.soak(root, seconds=30 if q else 300),
        "schemathesis": lambda: sc.schemathesis_fuzz(
            root, cases=200 if q else 2000, redis_url=redis_url
        ),
    }


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def render(results: list[dict[str, Any]], command: str, seconds: float) -> str:
    """RELIABILITY.md from the scenarios' results."""
    lines = [
        "# Reliability: faults injected, what the service did",
        "",
        f"Generated by `{command}` on {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC in "
        f"{seconds / 60:.0f} min ({os.cpu_count()} cores, {platform.machine()}, load average "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} at the end). Scenarios: "
        "`bench/reliability/scenarios.py`; short versions run in `make test` "
        "(`tests/reliability/`). Everything on loopback: a real 2-worker gunicorn "
        "(`gunicorn.conf.py`, 1 thread per worker), closed-loop clients on kept-alive "
        "connections; *failed* = an error status, *lost* = no answer (connection error or "
        "timeout); latencies are of answered requests during the fault window, in ms.",
        "",
        "**Noise.** This machine has 2 cores, shared with other jobs while these ran: compare rows "
        "of one run only, never with bench/RESULTS.md.",
        "",
        "| scenario | load | injected | " + " | ".join(COLUMNS) + " | checks |",
        "|---|---|---|" + "---:|" * len(COLUMNS) + "---|",
    ]
    extras = []
    for r in results:
        checks = r.get("checks", {})
        verdict = (
            "all pass"
            if all(checks.values())
            else "FAILED: " + "; ".join(k for k, ok in checks.items() if not ok)
        )
        cells = [r["scenario"], r["load"], r["injected"], *(_cell(r.get(c)) for c in COLUMNS)]
        lines.append("| " + " | ".join(cells) + f" | {verdict} |")
        more = {
            k: v
            for k, v in r.items()
            if k not in (*COLUMNS, "scenario", "load", "injected", "checks", "versions")
        }
        if more:
            extras.append(f"- {r['scenario']}: " + ", ".join(f"{k} {v}" for k, v in more.items()))
        extras.append(f"  checks: {', '.join(checks)}" if checks else "")
    lines += ["", "Details:", "", *[e for e in extras if e], ""]
    lines += [
        "## Slow clients: the choice of worker model",
        "",
        "Measured 2026-12-02 (noisy, shared machine), 2 normal clients for 12 s, 200 connections "
        "sending one header line every 2 s:",
        "",
        "| worker model | ok with 200 slow connections | p99 ms (without / with) |",
        "|---|---:|---:|",
        "| gthread, 1 thread (before) | 0 of 6 | 24.7 / - |",
        "| gthread, 4 threads | 0 of 6 | 12.6 / - |",
        "| gevent 26.9 | 3,659 | 38.5 / 19.1 |",
        "| `api.worker.WholeRequestWorker` (now) | 6,311 | 17.0 / 22.2 |",
        "",
        "More threads only move the limit; a read timeout alone still lets each slow connection "
        "hold a thread for the whole timeout; gevent survives but changes how CPU-bound requests "
        "share a worker (and a background bundle load would need gevent's thread pool); a "
        "buffering proxy (nginx, in docker-compose.yml) protects that deployment but not "
        "`make run` or a bare container. `WholeRequestWorker` keeps gthread, `GUNICORN_THREADS` "
        "and one `make run` command. Limits: 1,000 connections per worker (gunicorn's "
        "`worker_connections`); beyond that, or for TLS, put a buffering proxy in front.",
        "",
        RECENT,
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the selected scenarios, print each result, write RELIABILITY.md."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short versions of every scenario")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="run only these scenarios")
    ap.add_argument("--model-root", type=Path, help="bundle root to serve (default: a demo one)")
    ap.add_argument("--out", type=Path, default=ROOT / "RELIABILITY.md")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    root = args.model_root
    if root is None:
        root = Path(tempfile.mkdtemp(prefix="segsvc-reliability-bundle-")) / "model_artifacts"
        print(prepare_bundle(root, customers=20_000), flush=True)
    scenarios = plan(root, args.quick, redis_url)
    unknown = set(args.only or ()) - set(scenarios)
    if unknown:
        ap.error(f"unknown scenario(s) {sorted(unknown)}; expected some of {sorted(scenarios)}")
    start = time.monotonic()
    results: list[dict[str, Any]] = []
    for name, run in scenarios.items():
        if args.only and name not in args.only:
            continue
        print(f"==> {name}", flush=True)
        out = run()
        for r in out if isinstance(out, list) else [out]:
            print(r, flush=True)
            results.append(r)
    command = "python -m bench.reliability" + (" --quick" if args.quick else "")
    if args.only:
        command += " --only " + " ".join(args.only)
    args.out.write_text(render(results, command, time.monotonic() - start), encoding="utf-8")
    print(f"wrote {args.out}")
    failed = [r["scenario"] for r in results if not all(r.get("checks", {}).values())]
    if failed:
        print("FAILED: " + "; ".join(failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
