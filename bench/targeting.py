"""What campaign rules, control groups, caps and uplift cost a one-customer /recommend.

Compares, interleaved over several rounds (medians, ratios within each round), requests/s of
``POST /recommend`` through ``api.create_app`` and the Flask test client (no socket: the app's
own cost), one child process per measurement:

- ``base``: the code before ranking by gain (``--base``, default the parent of the commit that
  brought the campaign rules) on a response-only bundle that code trained;
- ``head``: this checkout on the same bundle (read-only; the 10% criterion of issue 9);
- ``head+rules``: the same bundle with conditions, dates, a cost, a control group and a global
  hold-out (no Redis call);
- ``head+rules+caps``: plus frequency caps, read-only, as configured by default (an ``MGET``
  sent before scoring and read after, or none when this worker holds all the customer's
  counters: ``CAPS_LOCAL_CACHE``, api/cap_tracking.py). The requests cycle through 500
  customers, so most are such repeats; the child reports Redis round trips per request;
- ``head+rules+caps-every-read``: the same with ``CAPS_LOCAL_CACHE=0`` (one ``MGET``
  per request: what a stream of distinct customers cost before the seen-customers summary);
- ``head+rules+caps-cold``: default settings, every request a customer never sent to (20,000
  distinct ids over the same feature rows): with the summary (``CAPS_SUMMARY``,
  api/cap_summary.py) no per-customer counter is read; ``head+rules+caps-cold-no-summary`` is
  the same with ``CAPS_SUMMARY=0`` (held values only: one ``MGET`` per new customer);
- ``head+commit``: the same with ``"commit": true`` (one atomic Lua script per request);
- ``head+uplift``: an uplift bundle (a control model walked per eligible campaign).

    python -m bench.targeting [--rounds 5] [--seconds 2] [--customers 20000]

Each child also reports its CPU and wall microseconds per request: on a shared machine the
difference is time spent waiting (for Redis's reply, or for a CPU).

Targets (issue 9, against ``base``, the code before the feature): rules + control groups, and
rules + control groups + read-only caps, each >= 0.90 x base's requests/s.

**Through the server** (``--server``): what users see is requests/s through gunicorn, where the
server's own cost (~345 µs a request at the bare floor) dilutes the feature's; in-process ratios
overstate the relative cost. This mode reuses bench/serving.py's machinery: one gunicorn per
scenario, all on our gunicorn.conf.py with one worker pinned to core 0 (``taskset``), the load
generator (wrk, else the Python client) on core 1, 8 keep-alive connections, every scenario
once per round in an order reversed every other round, medians of per-round ratios to ``base``:

- ``base``: the pre-feature pool (campaigns without rules, hold-outs or caps) on this checkout;
- ``rules``: rules + control groups (no Redis call);
- ``rules+caps``: plus read-only caps, default ``CAPS_LOCAL_CACHE`` (held counters);
- ``rules+caps-every-read``: the same with the local cache off (``CAPS_LOCAL_CACHE=0``);
- ``rules+caps-no-summary``: ``rules+caps`` with ``CAPS_SUMMARY=0`` (held values only: the
  default before the seen-customers summary, api/cap_summary.py);
- ``rules+caps-counted``: ``rules+caps`` over other ids, ``--counted-share`` of which (default
  1 in 4) were sent one offer this week before the run: the summary cannot spare their reads;
- ``commit``: ``"commit": true`` (one atomic Lua script a request), over ids of its own, so the
  sends it counts never give the other scenarios' customers counters;
- ``base-repeat`` and ``rules+caps-repeat``: ``base`` and ``rules+caps`` cycling through the
  first ``--repeat-pool`` customers only (default 2,000): customers who come back;
- ``mixed``: ``rules+caps`` traffic of which 1 request in :data:`MIXED_COMMIT_EVERY` (20) sends
  (``"commit": true``), over ids of its own: each send changes its campaigns' daily counters
  (every worker reads them again) and marks its customer seen this week (reported, not a goal).

The requests cycle through ``--pool`` customers (default 20,000), one body per customer, and
each run of a scenario (warm-ups included) goes on in the pool where its last run stopped
(bench/serving.py), so a customer comes back only after 20,000 requests to that server: more
than one worker serves in a whole benchmark at the rates reached here (check the requests
column). Held counters have no age limit (api/cap_tracking.py), so ``rules+caps`` then measures
a stream of new customers with no counter this week (the usual case: most customers are not
sent to in a given week); ``rules+caps-counted`` a stream in which some have one. ``rules+caps-repeat`` measures the other end: 2,000 customers whose counters
the worker holds after its first pass (no commits touch them meanwhile except the ``commit``
scenario's, which share the key prefix: their invalidations drop the held campaign-day counters,
re-read once).

    python -m bench.targeting --server [--rounds 3] [--seconds 5] [--pool 20000]
        [--model-root DIR] [--loadgen auto]

Results go to bench/results/targeting_server.json; its two ratios are issue 9's rows in
"Targets at a glance" (bench/report.py); the in-process ones stay in the Targeting section.

**Instructions per request** (``--callgrind``): requests/s on a shared machine move with the
load; the instructions a worker executes do not. The server-mode scenarios (``base``, ``rules``,
``rules+caps``, ``rules+caps-counted``, ``rules+caps-no-summary``, ``rules+caps-every-read``,
``mixed``: its every 20th request commits) each run in one gunicorn worker under ``valgrind --tool=callgrind`` (bench/callgrind.py), with
one distinct customer per request; ``base / scenario`` estimates the ratio of requests/s where no
Redis round trip is made (kernel time, Redis's CPU and waiting are not counted, so scenarios
that read Redis look cheaper than they are):

    python -m bench.targeting --callgrind [--requests 300] [--model-root DIR]

Needs Redis at ``REDIS_URL`` (default 127.0.0.1:6379) for the caps scenarios; keys go under a
fresh prefix and are deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.common import ROOT, machine_info, markdown_table, median, publish

#: the child: build the app over MODEL_ROOT and time /recommend for SECONDS
CHILD = r"""
import json, os, sys, time
sys.path.insert(0, os.getcwd())
from api import create_app
cfg = json.loads(sys.argv[1])
app = create_app(cfg["settings"])
client = app.test_client()
headers = {"X-API-Key": "bench-key"}
bodies = cfg["bodies"]
if cfg.get("distinct"):  # every request another customer: the same rows under new ids
    bodies = [{**bodies[i % len(bodies)], "customer_id": f"{cfg['id_prefix']}{i}"}
              for i in range(cfg["distinct"])]
for body in bodies[:50]:
    r = client.post("/recommend", json=body, headers=headers)
    assert r.status_code == 200, r.get_data(as_text=True)
# Redis round trips: every command takes a connection from the caps client's pool
trips = [0]
caps = next((v.caps for v in app.extensions.values() if hasattr(v, "caps")), None)
pool = getattr(getattr(caps, "client", None), "connection_pool", None)
if pool is not None:
    take = pool.get_connection
    def counted(*a, **k):
        trips[0] += 1
        return take(*a, **k)
    pool.get_connection = counted
n, start, cpu, i = 0, time.perf_counter(), time.process_time(), 0
deadline = start + cfg["seconds"]
while True:
    client.post("/recommend", json=bodies[i % len(bodies)], headers=headers)
    n += 1
    i += 1
    if n % 50 == 0 and time.perf_counter() >= deadline:
        break
wall, cpu = time.perf_counter() - start, time.process_time() - cpu
print(json.dumps({"requests_per_s": n / wall, "cpu_us": 1e6 * cpu / n, "wall_us": 1e6 * wall / n,
                  "redis_trips_per_request": trips[0] / n}))
"""


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    out = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, check=False, timeout=1800
    )
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:4])}... failed:\n{out.stderr[-3000:]}")
    return out.stdout


def default_base() -> str:
    """The commit before campaign rules and ranking by gain."""
    sha = _run(
        ["git", "log", "--format=%H", "-1", "--grep=^Campaign rules in scoring/campaigns.py"], ROOT
    ).strip()
    if not sha:
        raise RuntimeError("cannot find the campaign-rules commit; pass --base")
    return f"{sha}^"


def prepare(scratch: Path, base: str, customers: int, uplift: bool = True) -> dict[str, Path]:
    """The base tree, and the three bundle roots (response, rules, uplift; the last one only
    with ``uplift``)."""
    tree = scratch / "base"
    tree.mkdir()
    archive = subprocess.run(
        ["git", "archive", base], cwd=ROOT, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    data = scratch / "data"
    py = sys.executable
    env = {**os.environ, "PYTHONPATH": str(tree)}
    # generated by the base code: its pool file is one both versions read
    _run([py, "-m", "training", "-q", "generate", "--out", str(data), "--customers",
          str(customers), "--seed", "42"], tree, env)  # fmt: skip
    no_uplift = scratch / "no_uplift.toml"
    no_uplift.write_text(
        (ROOT / "examples" / "demo.toml").read_text() + "\n[uplift]\nenabled = false\n"
    )
    roots = {"response": scratch / "response", "uplift": scratch / "uplift"}
    _run([py, "-m", "training", "-q", "train", "--config", str(no_uplift), "--data-dir",
          str(data), "--output", str(roots["response"])], tree, env)  # fmt: skip
    if uplift:
        _run([py, "-m", "training", "-q", "train", "--config", str(ROOT / "examples" / "demo.toml"),
              "--data-dir", str(data), "--output", str(roots["uplift"])], ROOT)  # fmt: skip
    return {"tree": tree, **roots, **rules_bundles(roots["response"], scratch)}


def rules_bundles(response: Path, scratch: Path) -> dict[str, Path]:
    """The response bundle with rules + control groups, and with caps too (two bundle roots)."""
    roots = {"rules": scratch / "rules", "caps": scratch / "caps"}
    _write_rules_bundle(response, roots["rules"], caps=False)
    _write_rules_bundle(response, roots["caps"], caps=True)
    return roots


def _write_rules_bundle(source: Path, target: Path, *, caps: bool) -> None:
    """The response bundle with the rules switched on, with or without frequency caps."""
    import copy

    from scoring.bundle import load_current, write_bundle
    from scoring.campaigns import Campaign

    bundle = copy.copy(load_current(source))
    # the same compiled trees as the source (write_bundle writes only artifacts it is given):
    # without them the rules bundles would be served by LightGBM's C API and base by the
    # compiled trees, and the comparison would measure that, not the rules
    bundle.compiled, bundle.compiled_control = _compiled_artifacts(bundle)
    rules = {
        "conditions": ["total_spend >= 0 and days_since_last_purchase < 100000"],
        "start": "2000-01-01",
        "end": "2999-12-31",
        "cost": 0.01,
        "holdout_share": 0.05,
    }
    if caps:
        rules |= {"per_customer_day": 1000, "per_customer_week": 5000, "daily_cap": 10_000_000}
    bundle.campaigns = [Campaign(**{**c.to_dict(), **rules}) for c in bundle.campaigns]
    bundle.manifest = {k: v for k, v in bundle.manifest.items() if k in ("config", "metrics")}
    bundle.manifest["pool"] = {"salt": "bench", "holdout_share": 0.02}
    write_bundle(bundle, target, version="rules")


def _compiled_artifacts(bundle: Any) -> tuple[Any, Any]:
    """The loaded bundle's compiled response and control models as training hands them to
    write_bundle (None where the bundle has none)."""
    import numpy as np

    from scoring.bundle import COMPILED, COMPILED_CONTROL
    from scoring.compiled_trees import CompiledArtifact

    out = []
    for key in (COMPILED, COMPILED_CONTROL):
        entry = bundle.manifest.get(key)
        if entry is None:
            out.append(None)
            continue
        out.append(
            CompiledArtifact(
                object_code=(bundle.path / entry["file"]).read_bytes(),
                platform=entry["platform"],
                sample=np.load(bundle.path / entry["sample"]),
            )
        )
    return out[0], out[1]


def bodies(root: Path, n: int = 500) -> list[dict[str, Any]]:
    """Generated customers with ids, every input present."""
    from bench.common import demo_customers
    from scoring.bundle import load_current

    names = load_current(root).schema.input_names
    frame = demo_customers(n * 2, seed=11)[names].dropna().head(n)
    if len(frame) < n:
        raise RuntimeError(f"only {len(frame)} of {n} generated customers have every input")
    return [
        {"customer_id": f"bench-{i}", **row}
        for i, row in enumerate(frame.to_dict(orient="records"))
    ]


def measure(
    tree: Path,
    root: Path,
    reqs: list[dict],
    seconds: float,
    redis_url: str | None,
    prefix: str,
    extra: dict[str, str] | None = None,
    distinct: int = 0,
) -> dict[str, float]:
    """Requests/s of one child process, and its CPU and wall microseconds per request (their
    difference is time spent waiting: for Redis, or for a CPU on a shared machine)."""
    settings = {"MODEL_ROOT": str(root), "API_KEYS": "bench-key", "MODEL_VERSION": ""}
    if redis_url:
        settings |= {"REDIS_URL": redis_url, "CACHE_PREFIX": prefix}
    settings |= extra or {}
    cfg = json.dumps(
        {
            "settings": settings,
            "bodies": reqs,
            "seconds": seconds,
            "distinct": distinct,
            "id_prefix": f"cold-{uuid.uuid4().hex[:6]}-",
        }
    )
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    out = _run([sys.executable, "-c", CHILD, cfg], tree, env)
    return {k: float(v) for k, v in json.loads(out.strip().splitlines()[-1]).items()}


#: the modes main() dispatches on, for --help
MODES_HELP = {
    "--server": "the same scenarios through gunicorn, one server per scenario "
    "(bench/results/targeting_server.json)",
    "--callgrind": "instructions per request of the scenarios in one gunicorn worker under "
    "valgrind (bench/results/targeting_callgrind.json)",
}
MODES_EPILOG = """modes:
  python -m bench.targeting [--rounds 5] [--seconds 2]      in process (targeting.json)
  python -m bench.targeting --server [--rounds 3] [--seconds 5] [--pool 20000]
  python -m bench.targeting --callgrind [--requests 300] [--model-root DIR]
  python -m bench.targeting --server --help                 that mode's flags
"""


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and publish bench/results/targeting.json and its table (with
    ``--server``: bench/results/targeting_server.json, see :func:`main_server`)."""
    argv = sys.argv[1:] if argv is None else argv
    if "--server" in argv:
        return main_server([a for a in argv if a != "--server"], argv)
    if "--callgrind" in argv:
        return main_callgrind([a for a in argv if a != "--callgrind"], argv)
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0]
        + " In process (api.create_app + the Flask test client), the default mode.",
        epilog=MODES_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # the other modes are picked by the flag alone, before this parser runs (above); listed here
    # so that --help names them
    modes = ap.add_argument_group("other modes (each has its own flags: add --help)")
    modes.add_argument("--server", action="store_true", help=MODES_HELP["--server"])
    modes.add_argument("--callgrind", action="store_true", help=MODES_HELP["--callgrind"])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--customers", type=int, default=20_000)
    ap.add_argument("--base", help="git revision of the code before (default: see module doc)")
    ap.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    args = ap.parse_args(argv)
    base = args.base or default_base()
    prefix = f"bench-targeting-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="bench-targeting-") as tmp:
        paths = prepare(Path(tmp), base, args.customers)
        reqs = bodies(paths["response"])
        commit_reqs = [{**b, "commit": True} for b in reqs]
        scenarios = {
            "base": (paths["tree"], paths["response"], reqs, None),
            "head": (ROOT, paths["response"], reqs, None),
            "head+rules": (ROOT, paths["rules"], reqs, args.redis_url),
            "head+rules+caps": (ROOT, paths["caps"], reqs, args.redis_url),
            "head+rules+caps-every-read": (
                ROOT,
                paths["caps"],
                reqs,
                args.redis_url,
                {"CAPS_LOCAL_CACHE": "0"},
            ),
            "head+rules+caps-cold": (ROOT, paths["caps"], reqs, args.redis_url, {}, 20_000),
            "head+rules+caps-cold-no-summary": (
                ROOT,
                paths["caps"],
                reqs,
                args.redis_url,
                {"CAPS_SUMMARY": "0"},
                20_000,
            ),
            "head+commit": (ROOT, paths["caps"], commit_reqs, args.redis_url),
            "head+uplift": (ROOT, paths["uplift"], reqs, None),
        }
        rounds: list[dict[str, float]] = []
        details: list[dict[str, dict[str, float]]] = []
        names = list(scenarios)
        for r in range(args.rounds):
            order = names if r % 2 == 0 else names[::-1]
            details.append(
                {
                    name: measure(
                        *scenarios[name][:3],
                        args.seconds,
                        scenarios[name][3],
                        prefix,
                        *scenarios[name][4:],
                    )
                    for name in order
                }
            )
            rounds.append({n: d["requests_per_s"] for n, d in details[-1].items()})
            print(json.dumps(rounds[-1]), file=sys.stderr)
    _clean(args.redis_url, prefix)
    result = {
        "machine": machine_info("bench.targeting", argv),
        "base": base,
        "rounds": rounds,
        "round_details": details,
        "median_requests_per_s": {n: median([r[n] for r in rounds]) for n in names},
        "median_ratio_to_base": {n: median([r[n] / r["base"] for r in rounds]) for n in names},
        "median_ratio_to_head": {n: median([r[n] / r["head"] for r in rounds]) for n in names},
        "median_cpu_us": {n: median([d[n]["cpu_us"] for d in details]) for n in names},
        "median_wall_us": {n: median([d[n]["wall_us"] for d in details]) for n in names},
        "median_redis_trips_per_request": {
            n: median([d[n].get("redis_trips_per_request", 0.0) for d in details]) for n in names
        },
    }
    result["targets"] = targets(result)
    table = markdown(result)
    publish("targeting", result, table)
    return 0


#: the issue-9 criteria: scenario -> what it is, against ``base`` (the pre-feature code)
TARGETS = {
    "head+rules": "/recommend with rules + control groups, x the code before them",
    "head+rules+caps": "/recommend with rules + control groups + read-only caps (default "
    "CAPS_LOCAL_CACHE), x the code before them",
}


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 9's measured criteria: each scenario >= 0.90 x base (median of round ratios)."""
    return [
        {
            "issue": "9",
            "name": name,
            "target": ">= 0.90",
            "measured": round(result["median_ratio_to_base"][scenario], 3),
            "met": result["median_ratio_to_base"][scenario] >= 0.90,
        }
        for scenario, name in TARGETS.items()
        if scenario in result["median_ratio_to_base"]
    ]


def markdown(result: dict[str, Any]) -> str:
    """The scenarios' table: requests/s, ratios to base and head, CPU, wall, Redis trips."""
    trips = result.get("median_redis_trips_per_request", {})
    rows = [
        [
            n,
            f"{result['median_requests_per_s'][n]:,.0f}",
            f"{result['median_ratio_to_base'][n]:.3f}",
            f"{result['median_ratio_to_head'][n]:.3f}",
            f"{result['median_cpu_us'][n]:,.0f}",
            f"{result['median_wall_us'][n]:,.0f}",
            f"{trips[n]:.2f}" if n in trips else "-",
        ]
        for n in result["median_requests_per_s"]
    ]
    table = markdown_table(
        [
            "scenario",
            "requests/s (median)",
            "x base (median of rounds)",
            "x head (median of rounds)",
            "CPU µs/request",
            "wall µs/request",
            "Redis round trips/request",
        ],
        rows,
    )
    if not result.get("targets"):
        return table
    # in process (no server cost in the denominator), so these overstate the relative cost;
    # issue 9's rows in "Targets at a glance" come from --server when it has run
    checks = [
        [t["name"], t["target"], f"{t['measured']:.3f}", "met" if t["met"] else "**not met**"]
        for t in result["targets"]
    ]
    return (
        table
        + "\n\nIn process (Flask test client, no server): issue 9's criteria\n\n"
        + markdown_table(["target", "goal", "measured", "status"], checks)
    )


# ---- through the server (--server) --------------------------------------------------------------
#: the server-mode scenarios: label -> (bundle: "response" or a rules_bundles key, environment
#: beyond REDIS_URL/CACHE_PREFIX, whether the request commits)
SERVER_SCENARIOS: dict[str, tuple[str, dict[str, str], bool]] = {
    "base": ("response", {}, False),
    "rules": ("rules", {}, False),
    "rules+caps": ("caps", {}, False),
    "rules+caps-every-read": ("caps", {"CAPS_LOCAL_CACHE": "0"}, False),
    "rules+caps-no-summary": ("caps", {"CAPS_SUMMARY": "0"}, False),
    "rules+caps-counted": ("caps", {}, False),
    "commit": ("caps", {}, True),
    "base-repeat": ("response", {}, False),
    "rules+caps-repeat": ("caps", {}, False),
    "mixed": ("caps", {}, False),
}
#: in ``mixed``, every this-many-th request commits (the others only read)
MIXED_COMMIT_EVERY = 20
#: the scenarios that cycle through --repeat-pool customers (who come back) only
REPEAT_SCENARIOS = ("base-repeat", "rules+caps-repeat")
#: scenarios over customer ids of their own (label -> id prefix), so that the sends the commit
#: scenario counts, and those counted before the run, give no other scenario's customer counters
OWN_IDS = {"commit": "commit-", "rules+caps-counted": "counted-", "mixed": "mixed-"}
#: issue 9's criteria through the server: scenario -> what it is, against ``base``
SERVER_TARGETS = {
    "rules": "/recommend through gunicorn (1 worker) with rules + control groups, "
    "x the pre-feature pool",
    "rules+caps": "/recommend through gunicorn (1 worker) with rules + control groups + "
    "read-only caps (default CAPS_LOCAL_CACHE, distinct customers: a new customer's cost), "
    "x the pre-feature pool",
}


def main_server(args_in: list[str], argv: list[str]) -> int:
    """Run the scenarios through gunicorn; publish bench/results/targeting_server.json."""
    from bench import serving

    ap = argparse.ArgumentParser(description="bench.targeting --server: " + __doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds per scenario before timing")
    ap.add_argument("--pool", type=int, default=20_000, help="distinct customers cycled through")
    ap.add_argument(
        "--repeat-pool", type=int, default=2_000, help="customers of the *-repeat scenarios"
    )
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument(
        "--counted-share",
        type=float,
        default=0.25,
        help="share of rules+caps-counted's customers sent one offer before the run",
    )
    ap.add_argument("--customers", type=int, default=20_000, help="demo customers to train on")
    ap.add_argument("--base", help="git revision whose trainer makes the pre-feature bundle")
    ap.add_argument(
        "--model-root",
        type=Path,
        help="serve this response-only bundle root as base (default: train one with --base)",
    )
    ap.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    ap.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    ap.add_argument("--results", type=Path, help="results folder (default bench/results)")
    args = ap.parse_args(args_in)
    loadgen = args.loadgen
    if loadgen == "auto":
        loadgen = "wrk" if shutil.which("wrk") else "python"
    prefix = f"bench-targeting-{uuid.uuid4().hex[:8]}"
    base = None
    with tempfile.TemporaryDirectory(prefix="bench-targeting-server-") as tmp:
        scratch = Path(tmp)
        if args.model_root is not None:
            roots = {"response": args.model_root, **rules_bundles(args.model_root, scratch)}
        else:
            base = args.base or default_base()
            roots = prepare(scratch, base, args.customers, uplift=False)
        reqs = bodies(roots["response"], args.pool)

        counted = count_sends(
            args.redis_url,
            prefix,
            roots["caps"],
            [f"{OWN_IDS['rules+caps-counted']}{i}" for i in range(len(reqs))],
            args.counted_share,
        )
        pools = {
            label: scenario_bodies(label, reqs, args.repeat_pool) for label in SERVER_SCENARIOS
        }

        scenarios = [
            serving.Scenario(
                "recommend", "/recommend", pools[label][0], 1, None, label, pools[label]
            )
            for label in SERVER_SCENARIOS
        ]
        redis_env = {"REDIS_URL": args.redis_url, "CACHE_PREFIX": prefix}
        print(
            f"targeting through the server: {loadgen}, {args.connections} connections, "
            f"{args.rounds} rounds x {args.seconds:g} s, {len(reqs):,} customers",
            flush=True,
        )
        try:
            config = serving.run_configuration(
                {label: roots[b] for label, (b, _, _) in SERVER_SCENARIOS.items()},
                scenarios,
                workers=1,
                rounds=args.rounds,
                duration=args.seconds,
                warmup=args.warmup,
                connections=args.connections,
                loadgen=loadgen,
                threads=None,
                scratch=scratch,
                server_env={
                    label: {**redis_env, **env} for label, (_, env, _) in SERVER_SCENARIOS.items()
                },
            )
        finally:
            _clean(args.redis_url, prefix)
    result = server_result(config)
    result["machine"] = machine_info("bench.targeting", argv)
    result["settings"] = {
        "load_generator": loadgen,
        "connections": args.connections,
        "rounds": args.rounds,
        "seconds_per_measurement": args.seconds,
        "distinct_customers": len(reqs),
        "repeat_customers": min(args.repeat_pool, len(reqs)),
        "counted_customers": counted,
        "server": "gunicorn.conf.py, 1 worker on core 0, load generator on core 1",
        "bundles": f"pre-feature pool from {args.model_root or f'the trainer at {base}'} "
        f"({args.customers:,} demo customers) and the same with rules/caps",
    }
    publish("targeting_server", result, server_markdown(result), args.results)
    return 0


def scenario_bodies(label: str, reqs: list[dict], repeat_pool: int) -> tuple[bytes, ...]:
    """The request bodies a server-mode scenario cycles through (see the module doc)."""
    chosen = reqs[:repeat_pool] if label in REPEAT_SCENARIOS else reqs
    ids = OWN_IDS.get(label)
    commit = SERVER_SCENARIOS[label][2]
    return tuple(
        json.dumps(
            {
                **b,
                **({"customer_id": f"{ids}{i}"} if ids else {}),
                **(
                    {"commit": True}
                    if commit or (label == "mixed" and i % MIXED_COMMIT_EVERY == 0)
                    else {}
                ),
            }
        ).encode()
        for i, b in enumerate(chosen)
    )


#: --callgrind's scenarios: label -> (bundle, environment, customer id prefix)
CALLGRIND_SCENARIOS: dict[str, tuple[str, dict[str, str], str]] = {
    "base": ("response", {}, "cold-"),
    "rules": ("rules", {}, "cold-"),
    "rules+caps": ("caps", {}, "cold-"),
    "rules+caps-counted": ("caps", {}, "counted-"),
    "rules+caps-no-summary": ("caps", {"CAPS_SUMMARY": "0"}, "cold-"),
    "rules+caps-every-read": ("caps", {"CAPS_LOCAL_CACHE": "0"}, "cold-"),
    "mixed": ("caps", {}, "mixed-"),
}


def main_callgrind(args_in: list[str], argv: list[str]) -> int:
    """Instructions per request of each scenario in one gunicorn worker under callgrind;
    publish bench/results/targeting_callgrind.json."""
    import time

    from bench import callgrind

    ap = argparse.ArgumentParser(description="bench.targeting --callgrind")
    ap.add_argument("--requests", type=int, default=300, help="counted requests per scenario")
    ap.add_argument("--customers", type=int, default=20_000, help="demo customers to train on")
    ap.add_argument("--counted-share", type=float, default=0.25)
    ap.add_argument("--base", help="git revision whose trainer makes the pre-feature bundle")
    ap.add_argument("--model-root", type=Path, help="the pre-feature (response-only) bundle root")
    ap.add_argument("--scenarios", default=",".join(CALLGRIND_SCENARIOS))
    ap.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    ap.add_argument("--results", type=Path, help="results folder (default bench/results)")
    args = ap.parse_args(args_in)
    prefix = f"bench-targeting-{uuid.uuid4().hex[:8]}"
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-targeting-cg-") as tmp:
        scratch = Path(tmp)
        if args.model_root is not None:
            roots = {"response": args.model_root, **rules_bundles(args.model_root, scratch)}
        else:
            roots = prepare(scratch, args.base or default_base(), args.customers, uplift=False)
        reqs = bodies(roots["response"])
        n = args.requests
        count_sends(
            args.redis_url,
            prefix,
            roots["caps"],
            [f"counted-{i}" for i in range(n + 200)],
            args.counted_share,
        )
        env = {"REDIS_URL": args.redis_url, "CACHE_PREFIX": prefix}
        try:
            for label in args.scenarios.split(","):
                bundle, extra, ids = CALLGRIND_SCENARIOS[label]
                dumps = scratch / f"dumps-{label}"
                dumps.mkdir()
                log = scratch / f"gunicorn-{label}.log"
                with callgrind.callgrind_server(roots[bundle], dumps, log, {**env, **extra}) as (
                    port,
                    worker,
                ):
                    every = MIXED_COMMIT_EVERY if label == "mixed" else 0
                    _send_distinct(port, reqs, ids, 0, 100, every)
                    time.sleep(1.5)  # the cap subscriber connects and loads the week's bitmap
                    callgrind._control("--instr=on", str(worker))
                    _send_distinct(port, reqs, ids, 100, 30, every)
                    callgrind._control("--zero", str(worker))
                    _send_distinct(port, reqs, ids, 130, n, every)
                    callgrind._control("--dump", str(worker))
                    callgrind._control("--instr=off", str(worker))
                    dump = max(dumps.glob(f"callgrind.out.{worker}.*"), key=os.path.getmtime)
                    per = callgrind.parse_total(dump.read_bytes()) / n
                print(f"    {label}: {per:,.0f} instructions/request", flush=True)
                rows.append({"scenario": label, "requests": n, "per_request": per})
        finally:
            _clean(args.redis_url, prefix)
    base = next((r["per_request"] for r in rows if r["scenario"] == "base"), None)
    for r in rows:
        r["base_over_this"] = None if base is None else base / r["per_request"]
    result = {
        "benchmark": "targeting_callgrind",
        "machine": machine_info("bench.targeting", argv),
        "scenarios": rows,
    }
    table = markdown_table(
        ["scenario (one gunicorn worker, callgrind)", "instructions/request", "base / this"],
        [
            [
                r["scenario"],
                f"{r['per_request']:,.0f}",
                "-" if r["base_over_this"] is None else f"{r['base_over_this']:.3f}",
            ]
            for r in rows
        ],
    )
    publish("targeting_callgrind", result, table, args.results)
    return 0


def _send_distinct(
    port: int, reqs: list[dict], ids: str, start: int, n: int, commit_every: int = 0
) -> None:
    """``n`` requests one after another, request ``i`` naming customer ``{ids}{i}`` (and, with
    ``commit_every``, committing when ``i`` is a multiple of it)."""
    from bench.callgrind import post_each

    post_each(port, "/recommend", distinct_bodies(reqs, ids, start, n, commit_every))


def distinct_bodies(
    reqs: list[dict], ids: str, start: int, n: int, commit_every: int = 0
) -> Iterator[bytes]:
    """The bodies :func:`_send_distinct` posts."""
    for i in range(start, start + n):
        body = {**reqs[i % len(reqs)], "customer_id": f"{ids}{i}"}
        if commit_every and i % commit_every == 0:
            body["commit"] = True
        yield json.dumps(body).encode()


def count_sends(url: str, prefix: str, root: Path, ids: list[str], share: float) -> int:
    """Count one send (a committed offer of the first capped campaign) to every ``1/share``-th
    of ``ids`` under ``prefix``, as earlier sends this week would have; returns how many."""
    import redis

    from api.caps import CapLimits, FrequencyCaps
    from scoring.bundle import load_current

    if share <= 0:
        return 0
    campaign = next(c for c in load_current(root).campaigns if c.per_customer_day is not None)
    limits = CapLimits(campaign.per_customer_day, campaign.per_customer_week, campaign.daily_cap)
    caps = FrequencyCaps(redis.Redis.from_url(url), prefix=prefix)
    step = max(1, round(1 / share))
    chosen = ids[::step]
    for customer in chosen:
        caps.check(customer, [(campaign.id, limits)], commit=True)
    return len(chosen)


def server_result(config: dict[str, Any]) -> dict[str, Any]:
    """Medians over rounds, ratios to ``base`` round by round, and issue 9's targets."""
    runs = {key.split("/", 1)[0]: rows for key, rows in config["rounds"].items()}
    base_rps = {r["round"]: r["rps"] for r in runs["base"]}
    rows = []
    for label, measured in runs.items():
        ratios = [r["rps"] / base_rps[r["round"]] for r in measured if base_rps.get(r["round"])]
        rows.append(
            {
                "scenario": label,
                "rps": median([r["rps"] for r in measured]),
                "ratio_to_base": median(ratios) if ratios else None,
                "ratios_by_round": [round(x, 4) for x in ratios],
                "p50_ms": median([r["p50_ms"] for r in measured]),
                "p99_ms": median([r["p99_ms"] for r in measured]),
                "errors": sum(r["errors"] for r in measured),
                "requests": sum(r["requests"] for r in measured),
            }
        )
    result: dict[str, Any] = {
        "benchmark": "targeting_server",
        "scenarios": rows,
        "worker_rss_mb": config["worker_rss_mb"],
        "workers_replaced": config["workers_replaced"],
        "rounds": config["rounds"],
    }
    result["targets"] = server_targets(result)
    return result


def server_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 9's criteria through the server: each scenario >= 0.90 x base, and no errors."""
    rows = {r["scenario"]: r for r in result["scenarios"]}
    out = []
    for scenario, name in SERVER_TARGETS.items():
        row = rows.get(scenario)
        if row is None:
            continue
        ratio = row["ratio_to_base"]
        met = None if ratio is None or row["errors"] else ratio >= 0.90
        measured = None if ratio is None else round(ratio, 3)
        out.append(
            {"issue": "9", "name": name, "target": ">= 0.90", "measured": measured, "met": met}
        )
    return out


def server_markdown(result: dict[str, Any]) -> str:
    """The through-the-server table: requests/s, ratio to base, latency, errors."""
    from bench.common import fmt

    rows = [
        [
            r["scenario"],
            fmt(r["rps"]),
            fmt(r["ratio_to_base"], 3),
            " ".join(f"{x:.3f}" for x in r.get("ratios_by_round", [])),
            fmt(r["p50_ms"], 2),
            fmt(r["p99_ms"], 2),
            fmt(r["errors"]),
        ]
        for r in result["scenarios"]
    ]
    return markdown_table(
        [
            "scenario (through gunicorn, 1 worker)",
            "requests/s (median)",
            "x base (median of rounds)",
            "x base, each round",
            "p50 ms",
            "p99 ms",
            "errors",
        ],
        rows,
    )


def _clean(url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=2)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)


if __name__ == "__main__":
    raise SystemExit(main())
