"""Instructions per request, counted by valgrind's callgrind in a real gunicorn worker.

Requests per second on a shared machine move with whatever else runs on it; the number of
instructions a worker executes per request does not. This benchmark starts each server the
serving benchmark compares (the bare floor: plain Flask under gunicorn's sync worker; the
service: our gunicorn.conf.py, access log, metrics and API key included) with one worker under
``valgrind --tool=callgrind`` with instrumentation off, so that start-up runs at near native
speed. Per scenario it sends warm-up requests, switches instrumentation on
(``callgrind_control -i on``), sends more warm-up requests, zeroes the counters, sends
``requests`` requests one after another on one connection (the sync worker closes it after
every answer, so the bare floor pays accept and close, as it does under wrk), dumps the
counters and divides. Kernel time is not counted (callgrind sees user space only).

    python -m bench.callgrind [--quick | --full | --smoke] [--model-root DIR]
        [--production-root DIR] [--servers bare,demo,production] [--annotate DIR]

``--annotate DIR`` keeps each dump and writes ``callgrind_annotate``'s per-function table
beside it. Needs valgrind (``apt-get install valgrind``).
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from bench.common import (
    BENCH_API_KEY,
    PYTHON,
    ROOT,
    bundle_for,
    bundle_source,
    child_env,
    fmt,
    log_tail,
    machine_info,
    markdown_table,
    mode_parser,
    publish,
)
from bench.serving import BARE, BARE_FLOOR, FLOOR_PATH, HOST, build_scenarios, free_port

MODES = {
    # warm-up requests (before and after instrumentation), counted requests
    "smoke": {"warmup": 20, "requests": 30},
    "quick": {"warmup": 100, "requests": 200},
    "full": {"warmup": 200, "requests": 500},
}
#: single-customer scenarios only: a batch of 1,000 under callgrind takes minutes per request
SCENARIOS = ("floor", "predict-segment", "recommend", "recommend explain=true")
#: the issue 12 targets on instruction budgets: a scenario at ratio r of the bare floor's rate
#: may spend (1 / r) x the bare floor's instructions
TARGETS = {"floor": 0.95, "predict-segment": 0.9, "recommend": 0.8, "recommend explain=true": 0.5}
_TOTALS = re.compile(rb"^(?:summary|totals):\s+(\d+)", re.M)


def parse_total(dump: bytes) -> int:
    """The total instruction count (``Ir``) of a callgrind dump."""
    found = _TOTALS.findall(dump)
    if not found:
        raise ValueError("no 'summary:' or 'totals:' line in the callgrind dump")
    return int(found[-1])


def _control(*args: str) -> str:
    done = subprocess.run(
        ["callgrind_control", *args], capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"callgrind_control {' '.join(args)}: {done.stderr or done.stdout}")
    return done.stdout


@contextlib.contextmanager
def callgrind_server(
    model_root: Path | None, dumps: Path, log: Path, extra_env: dict[str, str] | None = None
) -> Iterator[tuple[int, int]]:
    """gunicorn (one worker) under callgrind, instrumentation off; yield (port, worker pid)."""
    port = free_port()
    metrics_dir = Path(tempfile.mkdtemp(prefix="bench-cg-prom-"))
    env = child_env(
        BIND=f"{HOST}:{port}",
        WEB_CONCURRENCY="1",
        MODEL_ROOT=str(model_root),
        API_KEYS=BENCH_API_KEY,
        BENCH_FLOOR="1",
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
        LOG_LEVEL=os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
        # a worker under valgrind is slow to start and to heartbeat
        GUNICORN_TIMEOUT="3600",
        GUNICORN_GRACEFUL_TIMEOUT="5",
    )
    for name in ("REDIS_URL", "GUNICORN_THREADS", "GUNICORN_MAX_REQUESTS", "MODEL_VERSION"):
        env.pop(name, None)
    env.update(extra_env or {})
    cwd = ROOT
    if model_root is None:
        cwd = metrics_dir  # no gunicorn.conf.py there: gunicorn's defaults
        args = ["--bind", f"{HOST}:{port}", "--timeout", "3600"]
        args.append("bench.bare_floor:app")
    else:
        args = ["-c", "gunicorn.conf.py", "wsgi:app"]
    valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no"]
    valgrind += [f"--callgrind-out-file={dumps}/callgrind.out.%p"]
    cmd = [*valgrind, PYTHON, "-m", "bench.one_process", *args]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"gunicorn under valgrind exited {proc.returncode}:\n{log_tail(log)}"
                )
            with contextlib.suppress(OSError, http.client.HTTPException):
                conn = http.client.HTTPConnection(HOST, port, timeout=60)
                conn.request("GET", "/readyz")
                status = conn.getresponse().status
                conn.close()
                if status in (200, 404):
                    break
            time.sleep(1)
        else:
            raise RuntimeError(f"gunicorn under valgrind was not ready in time:\n{log_tail(log)}")
        # bench.one_process: the worker is the process valgrind started
        yield port, proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _send(port: int, path: str, body: bytes, n: int) -> None:
    """``n`` requests of one body one after another (see :func:`post_each`)."""
    post_each(port, path, itertools.repeat(body, n))


def post_each(port: int, path: str, bodies: Iterable[bytes]) -> None:
    """POST each body one after another, reusing the connection while the server keeps it."""
    headers = {"Content-Type": "application/json", "X-API-Key": BENCH_API_KEY}
    conn = http.client.HTTPConnection(HOST, port, timeout=600)
    try:
        for body in bodies:
            conn.request("POST", path, body, headers)
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise RuntimeError(f"{path} answered {resp.status}")
            if resp.will_close:
                conn.close()
                conn = http.client.HTTPConnection(HOST, port, timeout=600)
    finally:
        conn.close()


def count(port: int, worker: int, dumps: Path, path: str, body: bytes, settings: dict) -> int:
    """Instructions the worker spends on ``settings['requests']`` requests of one scenario."""
    warmup, n = settings["warmup"], settings["requests"]
    _send(port, path, body, warmup)
    _control("--instr=on", str(worker))
    _send(port, path, body, max(10, warmup // 4))
    _control("--zero", str(worker))
    _send(port, path, body, n)
    _control("--dump", str(worker))
    _control("--instr=off", str(worker))
    files = sorted(dumps.glob(f"callgrind.out.{worker}.*"), key=lambda p: p.stat().st_mtime)
    if not files:
        listing = sorted(p.name for p in dumps.iterdir())
        raise RuntimeError(f"no callgrind dump for worker {worker} in {dumps}: {listing}")
    return parse_total(files[-1].read_bytes())


def annotate(dump: Path, out: Path) -> None:
    """callgrind_annotate's per-function (inclusive and exclusive) table of ``dump``."""
    done = subprocess.run(
        ["callgrind_annotate", "--inclusive=no", "--threshold=99", str(dump)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    out.write_text(done.stdout)


def measure(
    roots: dict[str, Path | None],
    bodies: dict[str, Path],
    settings: dict,
    annotate_dir: Path | None,
    scratch: Path,
    names: tuple[str, ...] = SCENARIOS,
) -> list[dict[str, Any]]:
    """Instructions per request of every scenario on every server in ``roots`` (None: the bare
    floor), with the request bodies of the bundles in ``bodies`` (the first one's single
    customer is also the bare floor's body, as in the serving benchmark)."""
    scenarios = build_scenarios(bodies, batch_size=50)
    rows = []
    for server in roots:
        wanted = [
            sc
            for sc in scenarios
            if sc.server == server and (sc.name in names or sc.name == BARE_FLOOR)
        ]
        dumps = scratch / f"dumps-{server}"
        dumps.mkdir(parents=True, exist_ok=True)
        log = scratch / f"gunicorn-{server}.log"
        print(f"==> {server}: starting gunicorn under callgrind", flush=True)
        with callgrind_server(roots[server], dumps, log) as (port, worker):
            for sc in wanted:
                t0 = time.monotonic()
                total = count(port, worker, dumps, sc.path, sc.body, settings)
                per = total / settings["requests"]
                print(f"    {sc.name}: {per:,.0f} instructions/request", flush=True)
                rows.append(
                    {
                        "server": server,
                        "scenario": sc.name,
                        "requests": settings["requests"],
                        "instructions": total,
                        "per_request": per,
                        "seconds": round(time.monotonic() - t0, 1),
                    }
                )
                if annotate_dir is not None:
                    annotate_dir.mkdir(parents=True, exist_ok=True)
                    stem = f"callgrind_{server}_{sc.name}".replace(" ", "_").replace("=", "-")
                    latest = max(dumps.glob(f"callgrind.out.{worker}.*"), key=os.path.getmtime)
                    shutil.copy(latest, annotate_dir / f"{stem}.out")
                    annotate(latest, annotate_dir / f"{stem}.txt")
    return rows


def ratios(rows: list[dict[str, Any]]) -> None:
    """Add each row's instruction ratio to the bare floor (bare / ours: > 1 is cheaper)."""
    bare = next((r["per_request"] for r in rows if r["scenario"] == BARE_FLOOR), None)
    for r in rows:
        r["x_bare"] = bare / r["per_request"] if bare else None
        goal = TARGETS.get(r["scenario"]) if r["server"] == "production" else None
        r["goal"] = goal
        r["met"] = None if goal is None or bare is None else r["x_bare"] >= goal


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: instructions per request, ratio of budgets to the bare floor, issue 12 goal."""
    out = []
    for r in rows:
        goal = "-" if r["goal"] is None else f">= {r['goal']}"
        met = "-" if r["met"] is None else ("yes" if r["met"] else "**no**")
        out.append(
            [
                r["server"],
                r["scenario"],
                fmt(r["per_request"]),
                fmt(r["x_bare"], 3) if r["x_bare"] else "-",
                goal,
                met,
            ]
        )
    headers = ["server", "scenario", "instructions/request", "x bare floor", "goal", "met"]
    return markdown_table(headers, out)


def main(argv: list[str] | None = None) -> int:
    """Measure, print the table, write bench/results/callgrind.json."""
    argv = sys.argv[1:] if argv is None else argv
    ap = mode_parser(__doc__, list(MODES))
    ap.add_argument("--model-root", type=Path, help="demo bundle root (default: train one)")
    ap.add_argument("--production-root", type=Path, help="production-sized bundle root")
    ap.add_argument("--servers", default="bare,demo,production", help="which servers, in order")
    ap.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help="which single-customer scenarios"
    )
    ap.add_argument("--annotate", type=Path, help="keep dumps and per-function tables here")
    ap.add_argument("--results", type=Path, help="results folder (default bench/results)")
    args = ap.parse_args(argv)
    mode = args.mode or "quick"
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("bench.callgrind: valgrind is not installed (apt-get install valgrind)")
        return 2
    settings = MODES[mode]
    machine = machine_info("bench.callgrind", argv)  # the load average before the run
    scratch = Path(tempfile.mkdtemp(prefix="bench-callgrind-"))
    try:
        demo_root, _ = bundle_for(args.model_root, scratch, 5_000 if mode == "smoke" else 75_000)
        roots: dict[str, Path | None] = {}
        for server in args.servers.split(","):
            if server == BARE:
                roots[BARE] = None
            elif server == "demo":
                roots["demo"] = demo_root
            elif server == "production" and args.production_root is not None:
                roots["production"] = args.production_root
        bodies = {"demo": demo_root}
        if args.production_root is not None:
            bodies["production"] = args.production_root
        wanted = tuple(args.scenarios.split(","))
        rows = measure(roots, bodies, settings, args.annotate, scratch, wanted)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    ratios(rows)
    result = {
        "benchmark": "callgrind",
        "mode": mode,
        "machine": machine,
        "settings": settings,
        "bundles": {k: bundle_source(v) for k, v in roots.items() if v is not None},
        "floor_path": FLOOR_PATH,
        "rows": rows,
    }
    publish("callgrind", result, table(rows), args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
