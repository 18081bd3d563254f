"""Profile of single requests through the Flask test client: where the time of a request goes.

The app is built with ``api.create_app`` on a demo bundle (no HTTP server, no socket: the
profile shows the service's own cost, plus the test client's which is reported apart). For each
endpoint: microseconds per request without the profiler, then many requests under pyinstrument;
the full call tree and a flat list are saved as text under ``bench/results/``, and the time
inside the app (Flask's ``wsgi_app``) is attributed to the module that spent it: a project file
(``api/views.py``, ``scoring/engine.py``, ...) or a library (flask, werkzeug, marshmallow, numpy,
lightgbm, ...). C calls count for the Python module that made them.

    python -m bench.profile_request [--quick | --full | --smoke]
"""

from __future__ import annotations

import json
import shutil
import sys
import sysconfig
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.common import (
    BENCH_API_KEY,
    RESULTS_DIR,
    ROOT,
    bundle_for,
    demo_customers,
    fmt,
    machine_info,
    markdown_table,
    mode_parser,
    publish,
)
from bench.serving import BATCH_SIZE, customer_records

MODES = {
    "smoke": {"requests": 50, "timed": 50},
    "quick": {"requests": 2_000, "timed": 2_000},
    "full": {"requests": 10_000, "timed": 5_000},
}
#: how many modules and functions the summary names
TOP = 12
_STDLIB = Path(sysconfig.get_paths()["stdlib"]).resolve()


def single_body(model_root: Path) -> dict[str, Any]:
    """One generated customer with every input present, keyed by the bundle's input names."""
    from scoring.bundle import load_current

    names = load_current(model_root).schema.input_names
    frame = demo_customers(50, seed=11)[names].dropna()
    row = frame.iloc[0]
    return {"customer_id": "profile-1", **{n: row[n].item() for n in names}}


def where(file_path: str) -> str:
    """The module a frame belongs to, for the summary: project file, library or stdlib."""
    if not file_path or file_path.startswith("<"):
        return ""
    path = Path(file_path)
    parts = path.parts
    # libraries first: the virtualenv lives inside the project folder
    if "site-packages" in parts:
        return parts[parts.index("site-packages") + 1].removesuffix(".py")
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        pass
    try:
        rel = path.resolve().relative_to(_STDLIB)
        return f"stdlib {rel.parts[0].removesuffix('.py')}"
    except ValueError:
        return file_path


def attribute(root: Any) -> tuple[float, float, dict[str, float], dict[str, float]]:
    """(time in the app, total, seconds by module, seconds by function) from a pyinstrument tree.

    Only time under Flask's ``wsgi_app`` counts as the app's; self time of built-in (C) frames
    goes to the nearest Python frame above them.
    """
    by_module: dict[str, float] = defaultdict(float)
    by_function: dict[str, float] = defaultdict(float)
    in_app = [0.0]

    def walk(frame: Any, inside: bool, owner: str, owner_fn: str) -> None:
        module = where(frame.file_path) if not frame.is_synthetic else ""
        if module.startswith("pyinstrument"):
            return
        if module:
            owner, owner_fn = module, f"{frame.function} ({module})"
        if not inside and frame.function == "wsgi_app" and module == "flask":
            inside = True
            in_app[0] += frame.time
        if inside:
            own = frame.time - sum(c.time for c in frame.children)
            if own > 0:
                by_module[owner] += own
                by_function[owner_fn] += own
        for child in frame.children:
            walk(child, inside, owner, owner_fn)

    walk(root, False, "?", "?")
    return in_app[0], root.time, dict(by_module), dict(by_function)


def profile_endpoint(
    client: Any,
    name: str,
    path: str,
    body: dict[str, Any],
    n_timed: int,
    n_profiled: int,
    directory: Path = RESULTS_DIR,
    warmup: int = 200,
) -> dict[str, Any]:
    """Time, then profile, ``POST path`` with ``body``; save the tree and the flat list."""
    from pyinstrument import Profiler

    headers = {"X-API-Key": BENCH_API_KEY}
    data = json.dumps(body)

    def call() -> None:
        resp = client.post(path, data=data, headers=headers, content_type="application/json")
        if resp.status_code != 200:
            raise RuntimeError(f"{path} answered {resp.status_code}: {resp.get_data()[:300]!r}")

    for _ in range(warmup):  # warm-up: lazy imports, caches, LightGBM's per-thread set-up
        call()
    start = time.perf_counter()
    for _ in range(n_timed):
        call()
    us = (time.perf_counter() - start) / n_timed * 1e6

    profiler = Profiler(interval=0.0005)
    profiler.start()
    for _ in range(n_profiled):
        call()
    profiler.stop()
    session = profiler.last_session
    in_app, total, by_module, by_function = attribute(session.root_frame())
    slug = name.replace(" ", "_").replace("=", "-")
    tree = profiler.output_text(unicode=False, color=False, show_all=False)
    flat = profiler.output_text(unicode=False, color=False, flat=True)
    directory.mkdir(parents=True, exist_ok=True)
    text_path = directory / f"profile_{slug}.txt"
    text_path.write_text(
        f"# {n_profiled} x POST {path} through the Flask test client\n"
        f"# (pyinstrument, interval 0.5 ms; generated by bench/profile_request.py)\n\n"
        f"{tree}\n\n# flat: self time by function\n\n{flat}\n",
        encoding="utf-8",
    )

    # the profiler slows every call down; shares are measured under it, microseconds are those
    # shares of the unprofiled time of the app (the test client's share taken off)
    app_share = in_app / total if total else 0.0

    def share(items: dict[str, float]) -> list[dict[str, Any]]:
        top = sorted(items.items(), key=lambda kv: -kv[1])[:TOP]
        return [
            {
                "name": k,
                "share_of_app": v / in_app if in_app else 0.0,
                "est_us_per_request": (v / in_app if in_app else 0.0) * app_share * us,
            }
            for k, v in top
        ]

    return {
        "name": name,
        "path": path,
        "us_per_request": us,
        "requests_per_s_single_thread": 1e6 / us,
        "profiled_requests": n_profiled,
        "app_share_of_profile": app_share,
        "est_app_us_per_request": app_share * us,
        "by_module": share(by_module),
        "by_function": share(by_function),
        "profile_file": str(
            text_path.relative_to(ROOT) if text_path.is_relative_to(ROOT) else text_path
        ),
    }


def markdown(result: dict[str, Any]) -> str:
    """A table per endpoint: the modules that spend the app's time."""
    parts = [
        markdown_table(
            ["endpoint", "us/request (test client, no profiler)", "req/s single thread", "profile"],
            [
                [
                    e["name"],
                    fmt(e["us_per_request"]),
                    fmt(e["requests_per_s_single_thread"]),
                    e["profile_file"],
                ]
                for e in result["endpoints"]
            ],
        )
    ]
    for e in result["endpoints"]:
        if e["name"] == "floor":
            continue
        rows = [
            [m["name"], f"{100 * m['share_of_app']:.1f}%", fmt(m["est_us_per_request"], 1)]
            for m in e["by_module"]
        ]
        parts.append(
            f"**{e['name']}**: time inside the app (about {e['est_app_us_per_request']:,.0f} us of "
            f"{e['us_per_request']:,.0f} us per request; the rest is the test client) by module"
            "\n\n" + markdown_table(["module", "share", "est. us/request"], rows)
        )
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    """Profile the endpoints and write bench/results/profile_request.json and the text trees."""
    argv = sys.argv[1:] if argv is None else argv
    ap = mode_parser(__doc__, MODES)
    ap.add_argument("--model-root", type=Path, help="profile with this bundle root")
    ap.add_argument("--results", type=Path, help="results folder (default bench/results)")
    args = ap.parse_args(argv)
    mode = MODES[args.mode or "quick"]
    results_dir = args.results or RESULTS_DIR

    scratch = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    try:
        customers = 5_000 if args.mode == "smoke" else 75_000
        model_root, source = bundle_for(args.model_root, scratch, customers)
        from api import create_app

        app = create_app(
            {
                "MODEL_ROOT": str(model_root),
                "API_KEYS": BENCH_API_KEY,
                "BENCH_FLOOR": "1",
                "LOG_LEVEL": "WARNING",
            }
        )
        client = app.test_client()
        body = single_body(model_root)
        batch = {"customers": customer_records(model_root, BATCH_SIZE)}
        # (name, path, body, divisor of the request counts: a batch costs ~100 single requests)
        endpoints = [
            ("floor", "/bench/floor", body, 1),
            ("predict-segment", "/predict-segment", body, 1),
            ("recommend", "/recommend", body, 1),
            ("recommend explain=true", "/recommend", {**body, "explain": True}, 1),
            (f"recommend batch of {BATCH_SIZE}", "/recommend", batch, 100),
            (
                f"recommend batch of {BATCH_SIZE}, compact",
                "/recommend",
                {**batch, "answer": "compact"},
                100,
            ),
        ]
        result: dict[str, Any] = {
            "benchmark": "profile_request",
            "machine": machine_info("bench.profile_request", argv),
            "bundle": source,
            "endpoints": [
                profile_endpoint(
                    client,
                    name,
                    path,
                    b,
                    max(5, mode["timed"] // div),
                    max(5, mode["requests"] // div),
                    results_dir,
                    warmup=max(2, 200 // div),
                )
                for name, path, b, div in endpoints
            ],
        }
        publish("profile_request", result, markdown(result), results_dir)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
