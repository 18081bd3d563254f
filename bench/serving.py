"""Serving benchmark: gunicorn + Flask endpoints against two floors, interleaved, two models.

One gunicorn worker is pinned to core 0 (``taskset -c 0``) and the load generator to core 1, so
the worker has a core of its own; a second run uses two workers (then server and load generator
share both cores, so its figures are a lower bound). The load generator is wrk (with a Lua script
for POST bodies) when installed, else a small threaded Python client; both keep ``connections``
keep-alive connections busy for a fixed time on loopback.

Three servers run side by side, each pinned the same way and idle while another is measured:
the *bare floor* (``bench/bare_floor.py``: a plain Flask route under a plain sync gunicorn
worker, parse the JSON and return a constant), and the service (our gunicorn.conf.py, worker
recycling on as in production) once with the demo bundle and once with a production-sized one
(``--production-root``: 12 features, 6 campaigns, ~200 trees of 31 leaves). Each round runs
every scenario of every server once, in an order reversed every other round; each endpoint is
compared with the service's own floor (``POST /bench/floor``: the same key check and JSON
parsing under the same server settings, constant answer) and with the bare floor, both measured
in the same round. Reported: medians over rounds of requests/s, customers/s, p50, p99, both
ratios, errors (non-2xx answers and socket errors), the RSS of each worker and how many workers
were replaced (recycled) during the run.

    python -m bench.serving [--quick | --full | --smoke] [--workers 1,2] [--loadgen auto]
        [--model-root DIR] [--production-root DIR] [--max-requests N]
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    BENCH_API_KEY,
    PYTHON,
    ROOT,
    bundle_for,
    bundle_source,
    child_env,
    demo_customers,
    fmt,
    log_tail,
    machine_info,
    markdown_table,
    median,
    mode_parser,
    publish,
    taskset,
)

HOST = "127.0.0.1"
FLOOR_PATH = "/bench/floor"
BATCH_SIZE = 1000
#: the server that runs bench/bare_floor.py
BARE = "bare"
BARE_FLOOR = "bare floor"
#: targets from issue 3 ("Speed"), for one worker, demo bundle
TARGET_PREDICT_RATIO = 0.75
TARGET_RECOMMEND_RATIO = 0.6
TARGET_P99_MS = 10.0
TARGET_BATCH_CUSTOMERS_PER_S = 50_000
#: targets from issue 12, one worker, production-sized bundle, ratios to the bare floor
ISSUE12_TARGETS = (
    # (scenario, measure, goal, at least?)
    ("floor", "ratio_to_bare", 0.95, True),
    ("predict-segment", "ratio_to_bare", 0.9, True),
    ("recommend", "ratio_to_bare", 0.8, True),
    ("recommend", "p99_ms", 5.0, False),
    ("recommend explain=true", "ratio_to_bare", 0.5, True),
    (f"recommend batch of {BATCH_SIZE}", "customers_per_s", 150_000, True),
    (f"recommend batch of {BATCH_SIZE}, compact", "customers_per_s", 150_000, True),
)
#: the batch scenario's name suffix for the compact answer (``"answer": "compact"``)
COMPACT = ", compact"

MODES = {
    # rounds, seconds per measurement, warm-up seconds per scenario, worker counts
    "smoke": {"rounds": 1, "duration": 1.0, "warmup": 0.3, "workers": [1]},
    "quick": {"rounds": 2, "duration": 3.0, "warmup": 1.0, "workers": [1]},
    "full": {"rounds": 3, "duration": 5.0, "warmup": 2.0, "workers": [1, 2]},
}


@dataclass(frozen=True)
class Scenario:
    """One thing to measure: a server, an endpoint, a body, and the floor it is compared with."""

    name: str
    path: str
    body: bytes
    customers: int
    floor: str | None
    #: which server answers: BARE or the label of a bundle ("demo", "production")
    server: str = "demo"
    #: when set, the load generators cycle through these bodies (``body`` is the first), so
    #: requests name many customers rather than one (bench.targeting --server: per-customer
    #: state such as frequency-cap reads must not be served from a one-customer cache)
    bodies: tuple[bytes, ...] = ()

    @property
    def key(self) -> str:
        """Unique across servers: the server's label and the scenario's name."""
        return f"{self.server}/{self.name}"


def customer_records(model_root: Path, n: int) -> list[dict[str, Any]]:
    """``n`` generated customers as request records with the bundle's input names."""
    from scoring.bundle import load_current

    names = load_current(model_root).schema.input_names
    shape = "production" if len(names) > 7 else "demo"
    frame = demo_customers(max(n, 50), seed=11, shape=shape)
    records = []
    for i, row in enumerate(frame[names].itertuples(index=False)):
        record: dict[str, Any] = {"customer_id": f"bench-{i}"}
        for name, value in zip(names, row, strict=True):
            if value == value:  # NaN (an optional input not recorded) is simply left out
                record[name] = value.item() if hasattr(value, "item") else value
        records.append(record)
    return records[:n]


def build_scenarios(
    model_roots: dict[str, Path] | Path, batch_size: int = BATCH_SIZE
) -> list[Scenario]:
    """The measured scenarios in their base order, with their floors: the bare floor, then the
    same scenarios for each bundle (``{"demo": root, "production": root}``)."""
    if isinstance(model_roots, Path):
        model_roots = {"demo": model_roots}
    scenarios: list[Scenario] = []
    for label, root in model_roots.items():
        records = customer_records(root, batch_size)
        # the single-customer body: the first customer with every input present
        single = max(records[:50], key=len)
        one = json.dumps(single).encode()
        explain = json.dumps({**single, "explain": True}).encode()
        batch = json.dumps({"customers": records}).encode()
        compact = json.dumps({"customers": records, "answer": "compact"}).encode()
        if not scenarios:
            # the bare floor parses the first bundle's single-customer body
            scenarios.append(Scenario(BARE_FLOOR, FLOOR_PATH, one, 1, None, BARE))
        scenarios += [
            Scenario("floor", FLOOR_PATH, one, 1, None, label),
            Scenario("predict-segment", "/predict-segment", one, 1, "floor", label),
            Scenario("recommend", "/recommend", one, 1, "floor", label),
            Scenario("recommend explain=true", "/recommend", explain, 1, "floor", label),
            Scenario(f"floor (batch body, {batch_size})", FLOOR_PATH, batch, 1, None, label),
            Scenario(
                f"recommend batch of {batch_size}",
                "/recommend",
                batch,
                batch_size,
                f"floor (batch body, {batch_size})",
                label,
            ),
            # the same batch answered in the compact form (the floor's body is 21 bytes shorter)
            Scenario(
                f"recommend batch of {batch_size}{COMPACT}",
                "/recommend",
                compact,
                batch_size,
                f"floor (batch body, {batch_size})",
                label,
            ),
        ]
    return scenarios


# ---- the server ---------------------------------------------------------------------------------
def free_port() -> int:
    """A port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def worker_pids(master: int) -> list[int]:
    """The pids of gunicorn's workers (children of the master), from /proc."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # the command name may contain spaces and parentheses: fields follow the last ')'
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == master:
            pids.append(int(entry.name))
    return sorted(pids)


def rss_mb(pid: int) -> float | None:
    """VmRSS of a process in MB (None when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


@contextlib.contextmanager
def gunicorn_server(
    model_root: Path | None,
    workers: int,
    cores: str | None,
    threads: int | None,
    log: Path,
    max_requests: int | None = None,
    extra_env: dict[str, str] | None = None,
) -> Iterator[tuple[int, int]]:
    """Start gunicorn with the project's config; yield (port, master pid); stop it afterwards.

    ``model_root`` None starts the bare floor instead (bench/bare_floor.py, gunicorn's defaults).
    ``extra_env`` is set last (e.g. ``REDIS_URL`` for a scenario that needs Redis).
    """
    port = free_port()
    metrics_dir = Path(tempfile.mkdtemp(prefix="bench-prom-"))
    env = child_env(
        BIND=f"{HOST}:{port}",
        WEB_CONCURRENCY=str(workers),
        MODEL_ROOT=str(model_root),
        API_KEYS=BENCH_API_KEY,
        BENCH_FLOOR="1",
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
        # the access log is part of the server settings; keep it, but away from the terminal
        LOG_LEVEL=os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
    )
    # measure the configured server: the benchmark must not inherit a caller's overrides
    for name in (
        "REDIS_URL",
        "GUNICORN_THREADS",
        "GUNICORN_MAX_REQUESTS",
        "MODEL_VERSION",
        "BUNDLE_HMAC_KEY",
    ):
        env.pop(name, None)
    if threads is not None:
        env["GUNICORN_THREADS"] = str(threads)
    if max_requests is not None:
        env["GUNICORN_MAX_REQUESTS"] = str(max_requests)
    env.update(extra_env or {})
    cwd = ROOT
    if model_root is None:
        # gunicorn reads ./gunicorn.conf.py when present: start the bare floor elsewhere
        cwd = metrics_dir
        args = ["--bind", f"{HOST}:{port}", "--workers", str(workers), "bench.bare_floor:app"]
    else:
        args = gunicorn_config(workers, threads, port)
    cmd = [*taskset(cores), PYTHON, "-m", "gunicorn", *args]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=out)
    try:
        _wait_ready(port, proc, log)
        deadline = time.monotonic() + 30
        while len(worker_pids(proc.pid)) < workers and time.monotonic() < deadline:
            time.sleep(0.1)
        yield port, proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except Exception:  # noqa: BLE001 -- whatever went wrong, the server must not outlive us
            proc.kill()
            proc.wait()
        shutil.rmtree(metrics_dir, ignore_errors=True)


def gunicorn_config(workers: int, threads: int | None, port: int) -> list[str]:
    """The project's gunicorn.conf.py (which reads the environment), or plain flags without it."""
    if (ROOT / "gunicorn.conf.py").is_file():
        return ["-c", "gunicorn.conf.py", "wsgi:app"]
    flags = ["--bind", f"{HOST}:{port}", "--workers", str(workers), "--threads", str(threads or 4)]
    return [*flags, "--worker-class", "gthread", "wsgi:app"]


def _wait_ready(port: int, proc: Any, log: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {proc.returncode}:\n{log_tail(log)}")
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=2)
            conn.request("GET", "/readyz")
            status = conn.getresponse().status
            conn.close()
            # the bare floor has no /readyz: any answer means it is up
            if status == 200 or status == 404:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"gunicorn was not ready within {timeout:.0f} s:\n{log_tail(log)}")


def check_answers(ports: dict[str, int], scenarios: list[Scenario]) -> None:
    """One request per scenario must answer 200 with a JSON body before anything is timed."""
    for sc in scenarios:
        conn = http.client.HTTPConnection(HOST, ports[sc.server], timeout=30)
        conn.request("POST", sc.path, sc.body, _headers())
        resp = conn.getresponse()
        payload = resp.read()
        conn.close()
        if resp.status != 200:
            raise RuntimeError(f"{sc.name}: {sc.path} answered {resp.status}: {payload[:300]!r}")
        answer = json.loads(payload)
        results = answer.get("results") if isinstance(answer, dict) else None
        if sc.customers > 1:
            if not isinstance(results, list) or len(results) != sc.customers:
                raise RuntimeError(f"{sc.name}: expected {sc.customers} results")
            failed = [r for r in results if isinstance(r, dict) and "error" in r]
            if failed:
                raise RuntimeError(f"{sc.name}: {len(failed)} items refused: {failed[0]}")


def _headers() -> dict[str, str]:
    return {"Content-Type": "application/json", "X-API-Key": BENCH_API_KEY}


# ---- load generators ----------------------------------------------------------------------------
WRK_SCRIPT = """-- written by bench/serving.py: POST a fixed body, report JSON at the end
wrk.method = "POST"
local f = assert(io.open("{body}", "rb"))
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-API-Key"] = "{key}"

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_JSON {{\\"requests\\": %d, \\"duration_us\\": %d, \\"errors_socket\\": %d, "
    .. "\\"errors_status\\": %d, \\"p50_us\\": %d, \\"p90_us\\": %d, \\"p99_us\\": %d, "
    .. "\\"max_us\\": %d, \\"mean_us\\": %.1f}}\\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean))
end
"""

#: appended to WRK_SCRIPT for a scenario with many bodies: one request per body, in turn
WRK_POOL_SCRIPT = """
local requests_pool = {{}}
local turn = 0
init = function(args)
  for line in io.lines("{bodies}") do
    requests_pool[#requests_pool + 1] = wrk.format(nil, nil, nil, line)
  end
end
request = function()
  turn = turn % #requests_pool + 1
  return requests_pool[turn]
end
"""


#: scenario key -> where its next run starts in its bodies: each run goes on where the last
#: stopped, so a body (a customer) comes back only after the whole pool was sent (warm-up runs
#: included), never because a run started again at the first body
_POOL_START: dict[str, int] = {}


def _pool_rotated(sc: Scenario) -> tuple[bytes, ...]:
    start = _POOL_START.get(sc.key, 0) % len(sc.bodies)
    return sc.bodies[start:] + sc.bodies[:start]


def _pool_advance(sc: Scenario, requests: int) -> None:
    if sc.bodies:
        _POOL_START[sc.key] = _POOL_START.get(sc.key, 0) + int(requests)


def wrk_load(
    port: int, sc: Scenario, connections: int, duration: float, cores: str | None, scratch: Path
) -> dict[str, Any]:
    """Drive one scenario with wrk for ``duration`` seconds; return its figures."""
    body = scratch / f"body-{abs(hash(sc.body))}.json"
    if not body.exists():
        body.write_bytes(sc.body)
    script = scratch / f"{body.stem}.lua"
    lua = WRK_SCRIPT.format(body=body, key=BENCH_API_KEY)
    if sc.bodies:
        # one JSON document a line (json.dumps never writes a raw newline)
        pool = scratch / f"bodies-{abs(hash(sc.bodies))}.jsonl"
        pool.write_bytes(b"\n".join(_pool_rotated(sc)) + b"\n")
        script = scratch / f"{pool.stem}.lua"
        lua += WRK_POOL_SCRIPT.format(bodies=pool)
    script.write_text(lua)
    seconds = max(1, round(duration))
    cmd = [*taskset(cores), "wrk", "-t", "1", "-c", str(connections), "-d", f"{seconds}s"]
    cmd += ["--timeout", "10s", "-s", str(script), f"http://{HOST}:{port}{sc.path}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            raw = json.loads(line[len("BENCH_JSON ") :])
            break
    else:
        raise RuntimeError(f"wrk gave no summary (exit {proc.returncode}): {proc.stderr[-500:]}")
    secs = raw["duration_us"] / 1e6
    _pool_advance(sc, raw["requests"])
    return {
        "requests": raw["requests"],
        "seconds": secs,
        "rps": raw["requests"] / secs if secs else 0.0,
        "p50_ms": raw["p50_us"] / 1000,
        "p90_ms": raw["p90_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        "errors": raw["errors_socket"] + raw["errors_status"],
    }


def python_load(port: int, sc: Scenario, connections: int, duration: float) -> dict[str, Any]:
    """Drive one scenario with ``connections`` threads, one keep-alive connection each.

    Slower than wrk (the GIL caps it at a few thousand requests/s), so the floor may be
    limited by the client; it exists so the benchmark runs where wrk cannot be installed.
    """
    headers = _headers()
    pool = _pool_rotated(sc) if sc.bodies else (sc.body,)
    latencies: list[list[float]] = [[] for _ in range(connections)]
    errors = [0] * connections
    start_gate = threading.Barrier(connections + 1)
    stop_at = [0.0]

    def client(k: int) -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=10)
        mine = latencies[k]
        # each connection starts at its own place in the pool, so they name different customers
        turn = k * len(pool) // connections
        start_gate.wait()
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at[0]:
                break
            body = pool[turn % len(pool)]
            turn += 1
            try:
                conn.request("POST", sc.path, body, headers)
                resp = conn.getresponse()
                resp.read()
                if not 200 <= resp.status < 300:
                    errors[k] += 1
                if resp.will_close:
                    conn.close()
            except (OSError, http.client.HTTPException):
                errors[k] += 1
                conn.close()
                conn = http.client.HTTPConnection(HOST, port, timeout=10)
                continue
            mine.append(time.perf_counter() - t0)
        conn.close()

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(connections)]
    for t in threads:
        t.start()
    begin = time.perf_counter()
    stop_at[0] = begin + duration
    start_gate.wait()
    for t in threads:
        t.join(timeout=duration + 30)
    secs = time.perf_counter() - begin
    lat = sorted(x for per in latencies for x in per)
    n = len(lat)

    def pct(q: float) -> float:
        return lat[min(n - 1, max(0, math.ceil(q * n) - 1))] * 1000 if n else float("nan")

    _pool_advance(sc, n)  # each connection started elsewhere in it: roughly where it stopped
    return {
        "requests": n,
        "seconds": secs,
        "rps": n / secs if secs else 0.0,
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "max_ms": lat[-1] * 1000 if n else float("nan"),
        "errors": sum(errors),
    }


# ---- one configuration --------------------------------------------------------------------------
def run_configuration(
    model_roots: dict[str, Path] | Path,
    scenarios: list[Scenario],
    *,
    workers: int,
    rounds: int,
    duration: float,
    warmup: float,
    connections: int,
    loadgen: str,
    threads: int | None,
    scratch: Path,
    max_requests: int | None = None,
    server_env: dict[str, dict[str, str]] | None = None,
) -> dict[str, Any]:
    """Start the servers with ``workers`` workers each, measure every scenario ``rounds`` times.

    ``server_env`` adds environment variables to the server of a label (see gunicorn_server).
    """
    if isinstance(model_roots, Path):
        model_roots = {"demo": model_roots}
    # one worker: server on core 0, load on core 1; two workers: both use both cores
    server_cores, load_cores = ("0", "1") if workers == 1 else (None, None)
    if not taskset("0,1"):
        server_cores = load_cores = None
    per_round: dict[str, list[dict[str, Any]]] = {sc.key: [] for sc in scenarios}
    rss: dict[str, dict[int, list[float]]] = {}
    ports: dict[str, int] = {}
    masters: dict[str, int] = {}
    pids_seen: dict[str, set[int]] = {}

    def drive(sc: Scenario, seconds: float) -> dict[str, Any]:
        port = ports[sc.server]
        if loadgen == "wrk":
            return wrk_load(port, sc, connections, seconds, load_cores, scratch)
        with _affinity(load_cores):
            return python_load(port, sc, connections, seconds)

    def look_at_workers() -> None:
        for label, master in masters.items():
            for pid in worker_pids(master):
                pids_seen.setdefault(label, set()).add(pid)
                value = rss_mb(pid)
                if value is not None:
                    rss.setdefault(label, {}).setdefault(pid, []).append(value)

    with contextlib.ExitStack() as stack:
        servers = {sc.server for sc in scenarios}
        for label in [BARE, *model_roots]:
            if label not in servers:
                continue
            root = None if label == BARE else model_roots[label]
            log = scratch / f"gunicorn-{label}-{workers}w.log"
            ports[label], masters[label] = stack.enter_context(
                gunicorn_server(
                    root,
                    workers,
                    server_cores,
                    threads,
                    log,
                    max_requests,
                    (server_env or {}).get(label),
                )
            )
        check_answers(ports, scenarios)
        for sc in scenarios:
            drive(sc, warmup)
        look_at_workers()
        for r in range(rounds):
            order = scenarios if r % 2 == 0 else list(reversed(scenarios))
            for sc in order:
                res = drive(sc, duration)
                res["round"] = r
                per_round[sc.key].append(res)
                print(
                    f"  {workers}w round {r + 1}/{rounds} {sc.server:<10} {sc.name:<28} "
                    f"{res['rps']:>9,.0f} req/s  p99 {res['p99_ms']:6.2f} ms  "
                    f"errors {res['errors']}",
                    flush=True,
                )
                look_at_workers()
    service = [label for label in model_roots if label in servers]
    return {
        "workers": workers,
        "server_cores": server_cores or "all",
        "load_generator_cores": load_cores or "all",
        "scenarios": summarise(scenarios, per_round),
        "worker_rss_mb": {
            label: [round(max(v), 1) for _, v in sorted(rss.get(label, {}).items())]
            for label in service
        },
        # more pids than workers means a worker was replaced (recycled) during the run
        "workers_replaced": {
            label: max(0, len(pids_seen.get(label, ())) - workers) for label in service
        },
        "rounds": per_round,
    }


@contextlib.contextmanager
def _affinity(cores: str | None) -> Iterator[None]:
    """Run the Python load generator on ``cores`` (this process), restoring afterwards."""
    if cores is None or not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {int(c) for c in cores.split(",")})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _ratio(runs: list[dict[str, Any]], floor_runs: list[dict[str, Any]]) -> float | None:
    """Median over rounds of requests/s over the floor's requests/s in the same round."""
    floors = {r["round"]: r["rps"] for r in floor_runs}
    ratios = [r["rps"] / floors[r["round"]] for r in runs if floors.get(r["round"])]
    return median(ratios) if ratios else None


def summarise(
    scenarios: list[Scenario], per_round: dict[str, list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    """Medians over rounds; ratios to the floors are taken round by round, then the median."""
    out = []
    bare = next((sc for sc in scenarios if sc.server == BARE), None)
    for sc in scenarios:
        runs = per_round[sc.key]
        row: dict[str, Any] = {
            "server": sc.server,
            "name": sc.name,
            "path": sc.path,
            "customers_per_request": sc.customers,
            "rps": median([r["rps"] for r in runs]),
            "customers_per_s": median([r["rps"] * sc.customers for r in runs]),
            "p50_ms": median([r["p50_ms"] for r in runs]),
            "p99_ms": median([r["p99_ms"] for r in runs]),
            "errors": sum(r["errors"] for r in runs),
            "requests": sum(r["requests"] for r in runs),
            "floor": sc.floor,
            "ratio_to_floor": None,
            "ratio_to_bare": None,
        }
        if sc.floor is not None:
            row["ratio_to_floor"] = _ratio(runs, per_round[f"{sc.server}/{sc.floor}"])
        if bare is not None and sc.customers == 1 and "batch body" not in sc.name:
            row["ratio_to_bare"] = _ratio(runs, per_round[bare.key])
        out.append(row)
    return out


#: a bare floor below this share of our own floor measured the machine, not the floor
BARE_SANE_MIN = 0.5


def evaluate_targets(config: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 3's targets (demo bundle) and issue 12's (production-sized), one worker."""
    targets = []

    def add(
        name: str, target: str, measured: float | None, met: bool | None, issue: str = "3"
    ) -> None:
        targets.append(
            {"name": name, "target": target, "measured": measured, "met": met, "issue": issue}
        )

    production = {r["name"]: r for r in config["scenarios"] if r["server"] == "production"}
    # The bare floor's sync worker opens a connection per request, which an overloaded machine
    # punishes most: on 2026-12-02 (load 7-15) it measured 0.12-0.40x our own floor, against
    # 1.05x on a quiet machine on 2026-12-06 at 11:00. Our floor may beat it (it keeps connections alive and has
    # been made leaner: 1.22x on 2026-12-06), so only a bare floor under half of ours is taken
    # as a measurement of the machine, and then no ratio to it is claimed.
    bare_row = next((r for r in config["scenarios"] if r["server"] == BARE), None)
    own = production.get("floor", {}).get("rps")
    bare_sane = bare_row is not None and own is not None and bare_row["rps"] >= BARE_SANE_MIN * own
    for scenario, measure, goal, at_least in ISSUE12_TARGETS if production else ():
        value = production.get(scenario, {}).get(measure)
        if measure == "ratio_to_bare" and not bare_sane:
            value = None
        what = {
            "ratio_to_bare": "rps / bare floor rps",
            "p99_ms": "p99 at 8 connections (ms)",
            "customers_per_s": "customers/s per worker",
        }[measure]
        met = None
        if value is not None and value == value:
            met = value >= goal if at_least else value <= goal
        add(
            f"production model: {scenario} {what}",
            f"{'>=' if at_least else '<='} {goal:,g}",
            value,
            met,
            issue="12",
        )
    rows = {r["name"]: r for r in config["scenarios"] if r["server"] == "demo"}
    batch = next(
        (
            r
            for r in rows.values()
            if r["name"].startswith("recommend batch") and not r["name"].endswith(COMPACT)
        ),
        None,
    )

    for name, goal in (
        ("predict-segment", TARGET_PREDICT_RATIO),
        ("recommend", TARGET_RECOMMEND_RATIO),
    ):
        ratio = rows.get(name, {}).get("ratio_to_floor")
        add(
            f"demo model: {name} rps / own floor rps",
            f">= {goal}",
            ratio,
            None if ratio is None else ratio >= goal,
        )
    for name in ("predict-segment", "recommend"):
        p99 = rows.get(name, {}).get("p99_ms")
        ok = None if p99 is None or p99 != p99 else p99 <= TARGET_P99_MS
        add(f"demo model: {name} p99 at 8 connections (ms)", f"<= {TARGET_P99_MS:g}", p99, ok)
    cps = batch["customers_per_s"] / config["workers"] if batch else None
    add(
        "demo model: batch recommend customers/s per worker",
        f">= {TARGET_BATCH_CUSTOMERS_PER_S:,}",
        cps,
        None if cps is None else cps >= TARGET_BATCH_CUSTOMERS_PER_S,
    )
    return targets


def markdown(result: dict[str, Any]) -> str:
    """The benchmark's tables."""
    parts = []
    for config in result["configurations"]:
        rows = [
            [
                r.get("server", "demo"),
                r["name"],
                fmt(r["rps"]),
                fmt(r["customers_per_s"]),
                fmt(r["p50_ms"], 2),
                fmt(r["p99_ms"], 2),
                fmt(r["ratio_to_floor"], 2),
                fmt(r.get("ratio_to_bare"), 2),
                fmt(r["errors"]),
            ]
            for r in config["scenarios"]
        ]
        rss_by = config["worker_rss_mb"]
        if isinstance(rss_by, list):  # results written before the bare floor was added
            rss_by = {"demo": rss_by}
        replaced = config.get("workers_replaced", {})
        notes = []
        for label, values in rss_by.items():
            note = f"{label} {', '.join(f'{v:,.0f}' for v in values) or '-'} MB"
            if replaced.get(label):
                note += f" ({replaced[label]} worker(s) recycled during the run)"
            notes.append(note)
        parts.append(
            f"**{config['workers']} worker(s)** (server cores: {config['server_cores']}, "
            f"load generator cores: {config['load_generator_cores']}; RSS per worker: "
            f"{'; '.join(notes) or '-'})\n\n"
            + markdown_table(
                [
                    "model",
                    "scenario",
                    "req/s",
                    "customers/s",
                    "p50 ms",
                    "p99 ms",
                    "x own floor",
                    "x bare floor",
                    "errors",
                ],
                rows,
            )
        )
    if result.get("targets"):
        rows = [
            [t["name"], t["target"], fmt(t["measured"], 2), _met(t["met"])]
            for t in result["targets"]
        ]
        parts.append(
            "**Targets (one worker; issue 3: demo bundle, issue 12: production-sized)**\n\n"
            + markdown_table(["target", "goal", "measured", "met"], rows)
        )
    return "\n\n".join(parts)


def _met(met: bool | None) -> str:
    return "n/a" if met is None else ("yes" if met else "**no**")


def main(argv: list[str] | None = None) -> int:
    """Run the serving benchmark and write bench/results/serving.json."""
    argv = sys.argv[1:] if argv is None else argv
    ap = mode_parser(__doc__, MODES)
    ap.add_argument("--rounds", type=int, help="rounds (each runs every scenario once)")
    ap.add_argument("--duration", type=float, help="seconds per measurement")
    ap.add_argument("--workers", help="comma-separated worker counts, e.g. 1,2")
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--threads", type=int, help="GUNICORN_THREADS (default: gunicorn.conf.py's)")
    ap.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    ap.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    ap.add_argument("--model-root", type=Path, help="serve this bundle root (default: train one)")
    ap.add_argument(
        "--production-root",
        type=Path,
        help="also serve this production-sized bundle root (bench/run.sh trains one)",
    )
    ap.add_argument(
        "--max-requests",
        type=int,
        help="GUNICORN_MAX_REQUESTS (default: the service's, recycling on as in production)",
    )
    ap.add_argument("--customers", type=int, default=75_000, help="demo customers to train on")
    ap.add_argument("--results", type=Path, help="results folder (default bench/results)")
    args = ap.parse_args(argv)
    mode = MODES[args.mode or "quick"]
    rounds = args.rounds or mode["rounds"]
    duration = args.duration or mode["duration"]
    workers = [int(w) for w in args.workers.split(",")] if args.workers else mode["workers"]
    loadgen = args.loadgen
    if loadgen == "auto":
        loadgen = "wrk" if shutil.which("wrk") else "python"

    scratch = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    try:
        model_root, source = bundle_for(args.model_root, scratch, args.customers)
        roots = {"demo": model_root}
        sources = {"demo": source}
        if args.production_root is not None:
            roots["production"] = args.production_root
            sources["production"] = bundle_source(args.production_root)
        scenarios = build_scenarios(roots, args.batch_size)
        print(
            f"serving benchmark: {loadgen}, {args.connections} connections, {rounds} rounds x "
            f"{duration:g} s, workers {workers}",
            flush=True,
        )
        result: dict[str, Any] = {
            "benchmark": "serving",
            "machine": machine_info("bench.serving", argv),
            "settings": {
                "mode": args.mode or "quick",
                "rounds": rounds,
                "seconds_per_measurement": duration,
                "connections": args.connections,
                "load_generator": loadgen,
                "gunicorn_threads": args.threads or "gunicorn.conf.py default",
                "gunicorn_max_requests": args.max_requests
                if args.max_requests is not None
                else "service default (worker recycling on, as in production)",
                "gunicorn_config": "gunicorn.conf.py"
                if (ROOT / "gunicorn.conf.py").is_file()
                else "command-line flags (gunicorn.conf.py absent), gthread",
                "bundles": "; ".join(f"{k}: {v}" for k, v in sources.items()),
            },
            "configurations": [],
        }
        for w in workers:
            result["configurations"].append(
                run_configuration(
                    roots,
                    scenarios,
                    workers=w,
                    rounds=rounds,
                    duration=duration,
                    warmup=mode["warmup"],
                    connections=args.connections,
                    loadgen=loadgen,
                    threads=args.threads,
                    scratch=scratch,
                    max_requests=args.max_requests,
                )
            )
        one = next((c for c in result["configurations"] if c["workers"] == 1), None)
        result["targets"] = evaluate_targets(one) if one else []
        publish("serving", result, markdown(result), args.results)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
