"""What a worker recycle costs in CPU, step by step: the fork, the start, the first requests, the exit.

Does in one process what the gunicorn master does before it forks a replacement (imports the
app's modules, preloads and verifies the bundle, ``gc.freeze()``), then forks ``--trials`` times.
Each child builds the app as a worker does (``create_app``, warm-up included), answers
``--requests`` one-customer ``/recommend`` requests (the bundle's example customer) through the
app's WSGI interface, and leaves with ``os._exit`` as a worker does. CPU time and minor page
faults (copy-on-write copies, mostly) come from ``getrusage``: the master's around the fork, the
child's own at each step, and the child's whole life from ``wait4`` (the rest is its exit, the
kernel unmapping its memory). So the figures hold on a busy machine, where latencies do not;
medians of the trials. Not in it: gunicorn's own request handling and access log, and the
scheduling (the priority a step runs at): ``bench.recycling`` measures through the server.

    python -m bench.recycle_cost [--model-root DIR] [--trials 5] [--requests 200]
"""

from __future__ import annotations

import gc
import io
import json
import os
import resource
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import BENCH_API_KEY, bundle_for, fmt, markdown_table, median

#: request counts after which the child notes its CPU and faults (the first, the next 9, the rest)
MARKS = (1, 10)


def _usage() -> tuple[float, int]:
    """(CPU ms, minor faults) of this process so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return (r.ru_utime + r.ru_stime) * 1e3, r.ru_minflt


def _environ(body: bytes) -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/recommend",
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "127.0.0.1:8000",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body)),
        "HTTP_X_API_KEY": BENCH_API_KEY,
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.input": io.BytesIO(body),
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "wsgi.version": (1, 0),
    }


def _child(body: bytes, requests: int, out: int) -> None:
    """In the forked child: build the app, answer, report through ``out``, leave."""
    from api import create_app

    steps: dict[str, tuple[float, int]] = {"start": _usage()}
    app = create_app()
    gc.freeze()  # as gunicorn.conf.py's post_worker_init
    steps["app"] = _usage()
    statuses = []

    def start_response(status: str, headers: list, exc_info: Any = None) -> None:
        statuses.append(status)

    for n in range(1, requests + 1):
        for _ in app(_environ(body), start_response):
            pass
        if n in MARKS or n == requests:
            steps[f"request {n}"] = _usage()
    ok = all(s.startswith("200") for s in statuses)
    os.write(out, json.dumps({"steps": steps, "ok": ok}).encode())
    os._exit(0)


def measure(model_root: Path, trials: int, requests: int) -> dict[str, list[float]]:
    """Fork ``trials`` workers of ``model_root``; each step's CPU ms and faults per trial."""
    scratch = Path(tempfile.mkdtemp(prefix="bench-recycle-cost-"))
    os.environ.update(
        MODEL_ROOT=str(model_root),
        MODEL_VERSION="",
        API_KEYS=BENCH_API_KEY,
        REDIS_URL="",
        PROMETHEUS_MULTIPROC_DIR=str(scratch / "metrics"),
        RELOAD_MARKER=str(scratch / "reload.json"),
        WORKER_ROSTER=str(scratch / "workers"),
        OMP_NUM_THREADS="1",
        LOG_LEVEL="ERROR",
    )
    (scratch / "metrics").mkdir()
    import api
    from api import model
    from api.openapi import example_customer
    from api.settings import Settings

    try:
        api.import_modules()
        loaded = model.preload(Settings.load())
        if loaded is None:
            raise SystemExit(f"the bundle under {model_root} does not load")
        body = json.dumps(example_customer(loaded), default=float).encode()
        gc.freeze()
        rows: dict[str, list[float]] = {}
        for _ in range(trials):
            read_fd, write_fd = os.pipe()
            before = _usage()
            pid = os.fork()
            if pid == 0:
                os.close(read_fd)
                _child(body, requests, write_fd)
            after = _usage()
            os.close(write_fd)
            with os.fdopen(read_fd, "rb") as f:
                report = json.loads(f.read() or b"{}")
            _, _, life = os.wait4(pid, 0)
            if not report.get("ok"):
                raise SystemExit("a request was not answered 200: see the child's output")
            steps = report["steps"]
            total = (life.ru_utime + life.ru_stime) * 1e3, life.ru_minflt
            _add(rows, "fork (the master)", (after[0] - before[0], after[1] - before[1]))
            _add(rows, "child until create_app", steps["start"])
            _add(rows, "create_app (warm-up included)", _diff(steps["app"], steps["start"]))
            previous, label_from = steps["app"], 1
            for n in sorted({*MARKS, requests}):
                here = steps[f"request {n}"]
                label = f"request {n}" if label_from == n else f"requests {label_from}-{n}"
                _add(rows, label, _diff(here, previous))
                previous, label_from = here, n + 1
            _add(rows, "exit (os._exit)", _diff(total, previous))
        return rows
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _diff(a: tuple[float, int], b: tuple[float, int]) -> tuple[float, int]:
    return a[0] - b[0], a[1] - b[1]


def _add(rows: dict[str, list], name: str, value: tuple[float, int]) -> None:
    rows.setdefault(name, []).append(value)


def markdown(rows: dict[str, list[tuple[float, int]]]) -> str:
    """Medians per step as a table."""
    body = [
        [name, fmt(median([v[0] for v in values]), 2), fmt(median([v[1] for v in values]))]
        for name, values in rows.items()
    ]
    return markdown_table(["step", "CPU ms (median)", "minor page faults (median)"], body)


def main(argv: list[str] | None = None) -> int:
    """Measure and print the table."""
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-root", type=Path, help="bundle root (default: train a demo one)")
    ap.add_argument("--customers", type=int, default=75_000, help="demo customers to train on")
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--requests", type=int, default=200)
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    if args.requests <= max(MARKS):
        ap.error(f"--requests must be over {max(MARKS)}")
    scratch = Path(tempfile.mkdtemp(prefix="bench-recycle-cost-bundle-"))
    try:
        root, source = bundle_for(args.model_root, scratch, args.customers)
        rows = measure(root, args.trials, args.requests)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"bundle: {source}; {args.trials} trials, {args.requests} requests each")
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
