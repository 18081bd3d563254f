"""The fault scenarios: each starts a server, injects one fault under load, and reports.

Every scenario returns a dict with ``scenario``, ``load``, ``injected`` and the tally of
:func:`bench.reliability.harness.summarize` (``sent``, ``ok``, ``failed``, ``lost``, latency),
plus what it checked in ``checks`` (name -> bool). The tests in ``tests/reliability/`` run the
short versions and assert on ``checks``; ``python -m bench.reliability`` runs the long ones and
writes RELIABILITY.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from bench.reliability.harness import (
    ADMIN_KEY,
    CUSTOMER,
    SCORING_KEY,
    Load,
    Nginx,
    Server,
    free_port,
    summarize,
)
from scoring.bundle import MANIFEST, SIGNATURE, load_current, set_current, sign, write_bundle

#: the five ways a bundle can be bad, each refused before anything is unpickled
BAD_BUNDLES = ("tampered_file", "missing_file", "bad_manifest", "library_mismatch", "unsigned")


def copy_root(bundle_root: Path) -> Path:
    """A writable copy of a bundle root (scenarios add versions to it)."""
    root = Path(tempfile.mkdtemp(prefix="segsvc-bundles-")) / "bundles"
    shutil.copytree(bundle_root, root, symlinks=True)
    return root


def add_version(
    root: Path,
    version: str,
    *,
    source: str | None = None,
    hmac_key: bytes | None = None,
    make_current: bool = False,
) -> Path:
    """Write a copy of bundle ``source`` (default: current) as ``version``, signed with
    ``hmac_key``."""
    bundle = load_current(root, source)  # a copy of what is there; the server checks signatures
    return write_bundle(bundle, root, version=version, hmac_key=hmac_key, make_current=make_current)


def make_bad(root: Path, kind: str, source: str, *, hmac_key: bytes | None = None) -> str:
    """Write a bundle broken in the way ``kind`` names; return its folder name.

    With ``hmac_key`` every bad bundle but the ``unsigned`` one carries a valid signature, so
    each is refused for its own fault.
    """
    folder = f"bad-{kind}-{int(time.time() * 1000) % 10**8}"
    path = add_version(
        root, folder, source=source, hmac_key=None if kind == "unsigned" else hmac_key
    )
    if kind == "tampered_file":
        profiles = path / "profiles.json"
        profiles.write_text(profiles.read_text().replace('"size"', '"size" ', 1))
    elif kind == "missing_file":
        (path / "pca.joblib").unlink()
    elif kind == "bad_manifest":
        (path / MANIFEST).write_text("{not json")
    elif kind == "library_mismatch":
        manifest = json.loads((path / MANIFEST).read_text())
        manifest["library_versions"]["scikit-learn"] = "0.1.0"
        (path / MANIFEST).write_text(json.dumps(manifest))
        if hmac_key:
            (path / SIGNATURE).write_text(sign((path / MANIFEST).read_bytes(), hmac_key) + "\n")
    elif kind == "unsigned":
        # written without a signature; the server under test requires one (BUNDLE_HMAC_KEY)
        pass
    else:
        raise ValueError(f"unknown bad bundle kind {kind!r}; expected one of {BAD_BUNDLES}")
    return folder


def _count(text: str, needle: str) -> int:
    return text.count(needle)


# ---- 2: SIGHUP onto a bad `current` ------------------------------------------------------------
def sighup_bad_current(
    bundle_root: Path, *, kinds: tuple[str, ...] = BAD_BUNDLES, clients: int = 2
) -> dict[str, Any]:
    """SIGHUP with `current` on each bad bundle, then on a good one, under load.

    Expected: every bad bundle refused by the master's trial load and logged; no request fails;
    the same worker processes serve while bundles are refused; the good bundle reaches every
    worker (forks of the master, which preloads it, replace them one at a time).
    """
    root = copy_root(bundle_root)
    key = b"reliability-hmac-key" if "unsigned" in kinds else None
    source = Path(os.readlink(root / "current")).name
    if key:
        # a signed starting bundle, so that only the deliberately unsigned one is refused
        source = add_version(root, "v1-signed", hmac_key=key, make_current=True).name
    server = Server(root, env={"BUNDLE_HMAC_KEY": key.decode() if key else ""})
    with server:
        pids_before = {w["pid"] for w in server.readyz()["workers"]}
        load = Load(server, clients=clients).start()
        t0 = time.monotonic()
        refused_before = _count(server.log(), "SIGHUP: bundle refused")
        for i, kind in enumerate(kinds, 1):
            set_current(root, make_bad(root, kind, source, hmac_key=key))
            os.kill(server.pid, signal.SIGHUP)
            server.wait_for(
                lambda i=i: _count(server.log(), "SIGHUP: bundle refused") >= refused_before + i,
                f"the refusal of the {kind} bundle",
                120,
            )
        pids_after_bad = {w["pid"] for w in server.readyz()["workers"]}
        good = "v2-good"
        add_version(root, good, source=source, hmac_key=key, make_current=True)
        os.kill(server.pid, signal.SIGHUP)
        server.wait_for(lambda: server.versions() == {good: 2}, "every worker on the good bundle")
        time.sleep(0.5)
        answers = load.stop()
        log = server.log()
    tally = summarize(answers, t0)
    return {
        "scenario": "SIGHUP onto a bad `current`, then a good one",
        "load": f"{clients} closed-loop clients, /predict-segment",
        "injected": f"`current` moved to each bad bundle ({', '.join(kinds)}) + SIGHUP; "
        "then to a good one + SIGHUP",
        **tally,
        "checks": {
            "every bad bundle refused and logged": _count(log, "SIGHUP: bundle refused")
            >= refused_before + len(kinds),
            "no request failed or lost": tally["failed"] == 0 and tally["lost"] == 0,
            "no worker replaced for a refused bundle": pids_before == pids_after_bad,
            "good bundle on every worker": good in tally["versions"],
        },
    }


# ---- 4: recycling --------------------------------------------------------------------------------
_STOPPING = re.compile(r"replacement (\d+) is ready: stopping worker (\d+)")
_RECYCLED = re.compile(r"recycled worker (\d+);")
_FIRST_LOAD = re.compile(r"\[(\d+)\] \[INFO\] serving bundle \S+ \(previous: None\)")
#: a replacement's app built at idle priority (api/worker.py ``load_wsgi``)
_BUILT_LOW = re.compile(r"replacement worker \d+: app built at (SCHED_IDLE|nice 19)")


def serve_at_normal_priority(pids: list[int]) -> bool:
    """True when every thread of these workers runs at normal priority (none left lowered)."""
    for pid in pids:
        for tid in os.listdir(f"/proc/{pid}/task"):
            if os.sched_getscheduler(int(tid)) != os.SCHED_OTHER:
                return False
            if os.getpriority(os.PRIO_PROCESS, int(tid)) != 0:
                return False
    return True


def recycling_order(log: str) -> tuple[int, bool]:
    """(recycles completed, True when every replacement was ready before its worker was stopped).

    Read from the server log: the master's "started N", the replacement's first "serving bundle"
    line, the master's "stopping worker" and "recycled worker" lines (api/fleet.py).
    """
    ready: set[int] = set()
    ready_first = True
    recycles = 0
    for line in log.splitlines():
        if m := _FIRST_LOAD.search(line):
            ready.add(int(m.group(1)))
        elif m := _STOPPING.search(line):
            ready_first &= int(m.group(1)) in ready
        elif _RECYCLED.search(line):
            recycles += 1
    return recycles, ready_first


def recycling(
    bundle_root: Path,
    *,
    recycles: int = 4,
    max_seconds: float = 180.0,
    max_requests: int = 200,
    clients: int = 4,
    workers: int = 2,
    nginx: bool = False,
    idle_start: bool = False,
) -> dict[str, Any]:
    """Balanced load with a small request budget until ``recycles`` recycles.

    ``idle_start``: with ``RECYCLE_AT_IDLE_PRIORITY=1``, and checked that every replacement
    built its app at idle priority.

    Expected: no request fails or is lost (no connection refused or reset, no timeout); every
    replacement is ready (its bundle loaded) before the worker it replaces is stopped, so the
    server never has fewer ready workers than configured, even with ``workers=1``. Bounded by
    ``max_seconds``.
    """
    env = {"GUNICORN_MAX_REQUESTS": str(max_requests)}
    if idle_start:
        env["RECYCLE_AT_IDLE_PRIORITY"] = "1"
    server = Server(bundle_root, workers=workers, env=env)
    with server, contextlib.ExitStack() as stack:
        # behind nginx: its kept-alive upstream connections must survive a worker leaving
        target = stack.enter_context(Nginx(server.port)) if nginx else server
        load = Load(target, clients=clients).start()
        t0 = time.monotonic()
        deadline = t0 + max_seconds
        while time.monotonic() < deadline and recycling_order(server.log())[0] < recycles:
            time.sleep(0.5)
        answers = load.stop()
        seconds = time.monotonic() - t0
        serving_normally = serve_at_normal_priority([w["pid"] for w in server.readyz()["workers"]])
        log = server.log()
    seen, ready_first = recycling_order(log)
    tally = summarize(answers)
    plural = "s" if workers > 1 else ""
    return {
        "scenario": f"worker recycling under load, {workers} worker{plural}"
        + (" behind nginx" if nginx else ""),
        "load": f"{clients} closed-loop clients for {seconds:.0f} s, {workers} worker{plural}"
        + (", through nginx" if nginx else ""),
        "injected": f"GUNICORN_MAX_REQUESTS={max_requests} (+10% jitter)",
        **tally,
        "recycles": seen,
        "checks": {
            "workers recycled": seen >= recycles,
            "every replacement ready before its worker stopped": ready_first,
            "every replacement built its app at idle priority": not idle_start
            or len(_BUILT_LOW.findall(log)) >= seen,
            "the workers serve at normal priority": serving_normally,
            "no request failed or lost": tally["failed"] == 0 and tally["lost"] == 0,
        },
    }


# ---- 1: slow clients ----------------------------------------------------------------------------
class SlowClients:
    """``n`` connections that send a request head one header line every ``interval`` seconds.

    Slowloris: each never finishes its request. One thread drives every socket; the body of
    the request they pretend to send is never reached.
    """

    def __init__(self, port: int, n: int, interval: float = 2.0, body: bool = False) -> None:
        self.port, self.n, self.interval, self.body = port, n, interval, body
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slow-clients", daemon=True)
        self.opened = 0
        self.closed_by_server = 0

    def start(self) -> SlowClients:
        """Open the connections and start trickling."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop trickling and close every connection."""
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        socks: list[socket.socket] = []
        try:
            for _ in range(self.n):
                s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
                head = b"POST /predict-segment HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                if self.body:
                    # a whole head announcing a body that then arrives a byte at a time
                    head += b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
                s.sendall(head)
                socks.append(s)
                self.opened += 1
            i = 0
            while not self._stop.wait(self.interval):
                i += 1
                for s in list(socks):
                    try:
                        s.sendall(b"{" if self.body else f"X-Slow-{i}: {i}\r\n".encode())
                    except OSError:
                        self.closed_by_server += 1
                        socks.remove(s)
        finally:
            for s in socks:
                s.close()


def slow_clients(
    bundle_root: Path,
    *,
    slow: int = 200,
    seconds: float = 15.0,
    clients: int = 2,
    body: bool = False,
    env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
    nginx: bool = False,
) -> dict[str, Any]:
    """Normal load alone, then with ``slow`` slowloris connections open; compare.

    Expected: the normal clients keep being answered, with a p99 of the same order as without
    the slow connections. ``args`` (gunicorn options) compares other worker models; ``nginx``
    puts nginx in front (deploy/nginx-loopback.conf), and every client talks to it.
    """
    server = Server(bundle_root, env=env, args=args)
    with server, contextlib.ExitStack() as stack:
        target = stack.enter_context(Nginx(server.port)) if nginx else server
        baseline = summarize(Load(target, clients=clients).run_for(seconds / 3))
        trickle = SlowClients(target.port, slow, body=body).start()
        time.sleep(1.0)  # let them all connect and start trickling
        load = Load(target, clients=clients, timeout=5.0)
        answers = load.run_for(seconds)
        trickle.stop()
    tally = summarize(answers)
    return {
        "scenario": "slow clients"
        + (" (slow bodies)" if body else " (slow headers)")
        + (" behind nginx" if nginx else "")
        + (f" [{' '.join(args)}]" if args else ""),
        "load": f"{clients} closed-loop clients, /predict-segment, 2 workers"
        + (", through nginx" if nginx else ""),
        "injected": f"{slow} connections sending one "
        + ("body byte" if body else "header line")
        + f" every 2 s for {seconds:.0f} s",
        **tally,
        "baseline_p99_ms": baseline["p99_ms"],
        "baseline_per_second": round(baseline["ok"] / (seconds / 3)),
        "per_second": round(tally["ok"] / seconds),
        "checks": {
            "normal requests answered": tally["ok"] > 0 and tally["lost"] == 0,
            "none failed": tally["failed"] == 0,
        },
    }


# ---- Redis killed and frozen under load --------------------------------------------------------
class OwnRedis:
    """A redis-server of our own on a free loopback port (the shared one is never touched)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="segsvc-redis-"))
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """Its URL."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> OwnRedis:
        """Start it and wait until it answers."""
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("redis-server did not start")

    def signal(self, sig: int) -> None:
        """Send ``sig`` to our redis-server (SIGSTOP freezes it, SIGCONT thaws it)."""
        assert self.process is not None
        self.process.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL it and reap it."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        """Stop it whatever its state."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def redis_faults(
    bundle_root: Path, *, fault_seconds: float = 10.0, clients: int = 4
) -> list[dict[str, Any]]:
    """Redis killed (then restarted on its port), and frozen (SIGSTOP/SIGCONT), under load.

    Expected: profiles come from memory meanwhile; no request fails; the service finds Redis
    again by itself.
    """
    redis_server = OwnRedis().start()
    out = []
    try:
        env = {"REDIS_URL": redis_server.url, "PROFILE_MEMO_SECONDS": "0.5"}
        with Server(bundle_root, env=env) as server:
            for fault in ("kill", "freeze"):
                load = Load(server, clients=clients).start()
                time.sleep(2)
                t0 = time.monotonic()
                if fault == "kill":
                    redis_server.kill()
                    time.sleep(fault_seconds)
                    redis_server.start()
                else:
                    redis_server.signal(signal.SIGSTOP)
                    time.sleep(fault_seconds)
                    redis_server.signal(signal.SIGCONT)
                t1 = time.monotonic()
                time.sleep(3)
                answers = load.stop()
                during = summarize(answers, t0, t1)
                redis_state = server.readyz().get("redis")
                out.append(
                    {
                        "scenario": f"Redis {'killed' if fault == 'kill' else 'frozen'} under load",
                        "load": f"{clients} closed-loop clients, /predict-segment",
                        "injected": f"redis-server {'SIGKILL' if fault == 'kill' else 'SIGSTOP'}"
                        f" for {fault_seconds:.0f} s, then "
                        + ("restarted" if fault == "kill" else "SIGCONT"),
                        **during,
                        "checks": {
                            "no request failed or lost": during["failed"] == 0
                            and during["lost"] == 0,
                            "requests served during the fault": during["ok"] > 0,
                            "redis seen again": redis_state in ("ok", "down"),
                        },
                    }
                )
    finally:
        redis_server.stop()
    return out


def feedback_during_redis_freeze(
    bundle_root: Path, *, fault_seconds: float = 5.0
) -> dict[str, Any]:
    """``POST /feedback`` while our own Redis is frozen (SIGSTOP), then thawed.

    One client sends events one after another, each with a new ``event_id``. Expected: every
    answer is 202 or 503 ``feedback_unavailable`` with Retry-After (never a 500, never a 202 for
    an event that is not in the stream); after SIGCONT every acknowledged event is in the stream.
    A 503 whose events reached Redis anyway (frozen while the write was in flight, applied on
    thaw) is counted: the client's retry is then folded once by ``event_id``, nothing is lost.
    """
    import redis

    from api.feedback import FIELD
    from scoring.engine import ScoringEngine

    campaign = ScoringEngine(load_current(bundle_root)).campaign_ids[0]
    redis_server = OwnRedis().start()
    prefix = "segsvc-rel-feedback"
    sent: list[tuple[str, int, str | None, str | None]] = []
    stop = threading.Event()
    try:
        env = {"REDIS_URL": redis_server.url, "CACHE_PREFIX": prefix}
        with Server(bundle_root, env=env) as server:

            def client() -> None:
                i = 0
                while not stop.is_set():
                    i += 1
                    event = {
                        "event_id": f"rel-{i}",
                        "customer_id": f"c-{i}",
                        "campaign_id": campaign,
                        "type": "impression",
                        "timestamp": "2026-12-06T10:00:00Z",
                    }
                    try:
                        status, body, headers = server.call("POST", "/feedback", event, timeout=5)
                        code = body.get("error", {}).get("code") if isinstance(body, dict) else None
                        sent.append((event["event_id"], status, headers.get("retry-after"), code))
                    except OSError:
                        sent.append((event["event_id"], 0, None, None))

            thread = threading.Thread(target=client, daemon=True)
            thread.start()
            time.sleep(2)
            redis_server.signal(signal.SIGSTOP)
            time.sleep(fault_seconds)
            redis_server.signal(signal.SIGCONT)
            time.sleep(2)
            stop.set()
            thread.join(10)
        reader = redis.Redis.from_url(redis_server.url, socket_timeout=5)
        stored = {
            orjson.loads(fields[FIELD.encode()])["event_id"]
            for _, fields in reader.xrange(f"{prefix}:feedback")
        }
        reader.close()
    finally:
        redis_server.stop()
    accepted = {e for e, status, _, _ in sent if status == 202}
    refused = [(e, ra, code) for e, status, ra, code in sent if status == 503]
    other = [(e, status) for e, status, _, _ in sent if status not in (202, 503)]
    return {
        "scenario": "feedback while Redis is frozen",
        "load": "1 closed-loop client, POST /feedback, a new event_id each",
        "injected": f"redis-server SIGSTOP for {fault_seconds:.0f} s, then SIGCONT",
        "sent": len(sent),
        "ok": len(accepted),
        "failed": len(refused) + len(other),
        "lost": len(accepted - stored),
        "refused_but_stored": sum(1 for e, _, _ in refused if e in stored),
        "checks": {
            "the freeze was seen (some 503)": bool(refused),
            "every 503 is feedback_unavailable with Retry-After": all(
                ra and code == "feedback_unavailable" for _, ra, code in refused
            ),
            "no other status": not other,
            "every acknowledged event is in the stream": accepted <= stored,
        },
    }


# ---- reload under load ---------------------------------------------------------------------------
def reload_under_load(bundle_root: Path, *, clients: int = 4) -> dict[str, Any]:
    """POST /admin/reload to a new bundle under load, recording every answer's version.

    Expected: nothing fails; once every worker reports the new version, no answer carries the
    old one.
    """
    root = copy_root(bundle_root)
    with Server(root) as server:
        old = server.readyz()["model_version"]
        new = add_version(root, "v2-reload", make_current=True).name
        load = Load(server, clients=clients).start()
        time.sleep(2)
        t0 = time.monotonic()
        status, body, _ = server.call("POST", "/admin/reload", {}, key=ADMIN_KEY)
        server.wait_for(lambda: server.versions() == {new: 2}, "every worker on the new bundle")
        t_all = time.monotonic()
        time.sleep(2)
        answers = load.stop()
    late_old = [a for a in answers if a.sent_at > t_all + 0.05 and a.version == old]
    switch = [a for a in answers if a.version == new]
    tally = summarize(answers, t0)
    return {
        "scenario": "reload under load",
        "load": f"{clients} closed-loop clients, /predict-segment",
        "injected": f"POST /admin/reload {old} -> {new}",
        **tally,
        "fleet_switch_seconds": round(t_all - t0, 2),
        "first_new_after_seconds": round(min(a.sent_at for a in switch) - t0, 2)
        if switch
        else None,
        "checks": {
            "reload answered 200 for all workers": status == 200
            and body.get("scope") == "all_workers",
            "no request failed or lost": tally["failed"] == 0 and tally["lost"] == 0,
            "no old answer after every worker switched": not late_old,
        },
    }


# ---- bad bundles at start and by /admin/reload -------------------------------------------------
def bad_bundles(bundle_root: Path, *, kinds: tuple[str, ...] = BAD_BUNDLES) -> dict[str, Any]:
    """Each bad bundle: as `current` at start (not ready, alive), and by /admin/reload (409)."""
    root = copy_root(bundle_root)
    key = b"reliability-hmac-key"
    source = add_version(root, "v1-signed", hmac_key=key, make_current=True).name
    env = {"BUNDLE_HMAC_KEY": key.decode()}
    checks: dict[str, bool] = {}
    with Server(root, env=env) as server:
        for kind in kinds:
            folder = make_bad(root, kind, source, hmac_key=key)
            status, body, _ = server.call(
                "POST", "/admin/reload", {"version": folder}, key=ADMIN_KEY
            )
            checks[f"reload refuses {kind}"] = (
                status == 409 and body["error"]["code"] == "bundle_rejected"
            )
        checks["still serving the good bundle"] = server.versions() == {source: 2}
    for kind in kinds:
        start_root = copy_root(root)
        set_current(start_root, make_bad(start_root, kind, source, hmac_key=key))
        server = Server(start_root, env=env)
        try:
            server.workers = 0  # start() waits for this many ready workers: none expected
            server.start()
            server.wait_for(
                lambda server=server: len(server.readyz().get("workers", [])) == 2,
                "both workers tried",
                120,
            )
            ready = server.call("GET", "/readyz", key=None)
            health = server.call("GET", "/healthz", key=None)
            checks[f"start on {kind}: alive, not ready"] = ready[0] == 503 and health[0] == 200
        finally:
            server.stop()
    return {
        "scenario": "bad bundles at start and by /admin/reload",
        "load": "single requests",
        "injected": ", ".join(kinds),
        "sent": len(kinds) * 3,
        "checks": checks,
    }


# ---- kill -9 of a worker -------------------------------------------------------------------------
def kill_worker(bundle_root: Path, *, clients: int = 4) -> dict[str, Any]:
    """SIGKILL one worker under load; count what is lost and how long until 2 are ready again."""
    with Server(bundle_root) as server:
        victim = server.readyz()["workers"][0]["pid"]
        load = Load(server, clients=clients).start()
        time.sleep(2)
        t0 = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        server.wait_for(
            lambda: (
                server.ready_workers() == 2
                and victim not in {w["pid"] for w in server.readyz()["workers"]}
            ),
            "a ready replacement",
            180,
        )
        replaced = time.monotonic() - t0
        time.sleep(1)
        answers = load.stop()
    tally = summarize(answers, t0 - 2)
    return {
        "scenario": "kill -9 of a worker under load",
        "load": f"{clients} closed-loop clients, /predict-segment",
        "injected": "SIGKILL to one of 2 workers",
        **tally,
        "replacement_ready_seconds": round(replaced, 2),
        "checks": {
            "only requests in flight on the victim lost": tally["lost"] <= clients,
            "nothing answered with an error": tally["failed"] == 0,
        },
    }


# ---- soak ----------------------------------------------------------------------------------------
def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def soak(bundle_root: Path, *, seconds: float = 300.0, clients: int = 2) -> dict[str, Any]:
    """Steady load for ``seconds``; RSS of every worker sampled every 10 % of the run."""
    with Server(bundle_root, env={"GUNICORN_MAX_REQUESTS": "0"}) as server:
        pids = [w["pid"] for w in server.readyz()["workers"]]
        load = Load(server, clients=clients).start()
        samples = []
        for _ in range(10):
            time.sleep(seconds / 10)
            samples.append([_rss_mb(p) for p in pids])
        answers = load.stop()
    tally = summarize(answers)
    first, last = samples[0], samples[-1]
    growth = max((b or 0) - (a or 0) for a, b in zip(first, last, strict=True))
    return {
        "scenario": "soak",
        "load": f"{clients} closed-loop clients for {seconds:.0f} s, no recycling",
        "injected": "nothing",
        **tally,
        "rss_mb_per_worker": {"first": first, "last": last},
        "checks": {
            "no request failed or lost": tally["failed"] == 0 and tally["lost"] == 0,
            "RSS grew < 20 MB per worker after the first sample": growth < 20,
        },
    }


# ---- batch abuse ---------------------------------------------------------------------------------
def batch_abuse(
    bundle_root: Path,
    redis_url: str,
    *,
    seconds: float = 15.0,
    abusers: int = 8,
    limits: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One key sends ``abusers`` parallel 1,000-customer batches with explain; another key
    sends single customers. With limits (``limits``), the abuser is held to its rate."""
    prefix = f"segsvc-rel-abuse-{free_port()}"
    env = {
        "REDIS_URL": redis_url,
        "CACHE_PREFIX": prefix,
        "API_KEYS": f"{SCORING_KEY},abuser-key",
        **(limits or {}),
    }
    batch = {"customers": [dict(CUSTOMER)] * 1000, "explain": True}
    try:
        with Server(bundle_root, env=env) as server:
            abuse = Load(server, clients=abusers, path="/recommend", body=batch, key="abuser-key")
            victim = Load(server, clients=1, path="/recommend")
            abuse.start()
            victim.start()
            time.sleep(seconds)
            abused = abuse.stop()
            answers = victim.stop()
    finally:
        _clean_prefix(redis_url, prefix)
    tally = summarize(answers)
    abuser = summarize(abused)
    return {
        "scenario": "batch abuse" + (" with rate limits" if limits else " without rate limits"),
        "load": f"1 client of single /recommend; {abusers} parallel 1,000-customer explain "
        "batches from one key",
        "injected": ", ".join(f"{k}={v}" for k, v in (limits or {}).items()) or "no limits",
        **tally,
        "abuser_ok": abuser["ok"],
        "abuser_refused": sum(1 for a in abused if a.status == 429),
        "checks": {"single customers answered": tally["ok"] > 0 and tally["lost"] == 0},
    }


def _clean_prefix(url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=2)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=500))
        if keys:
            client.delete(*keys)
    except redis.RedisError:
        pass
    finally:
        client.close()


# ---- schemathesis against the live server -------------------------------------------------------
def schemathesis_fuzz(
    bundle_root: Path, *, cases: int = 2000, redis_url: str | None = None
) -> dict[str, Any]:
    """At least ``cases`` generated requests (valid and invalid) from the served /openapi.json,
    through gunicorn, admin key for admin routes: no 5xx, every answer as documented."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error, response_schema_conformance

    sent = failures = 0
    errors: list[str] = []
    env = (
        {"REDIS_URL": redis_url, "CACHE_PREFIX": f"segsvc-rel-fuzz-{free_port()}"}
        if redis_url
        else {}
    )
    with Server(bundle_root, env=env) as server:
        schema = schemathesis.openapi.from_url(f"http://127.0.0.1:{server.port}/openapi.json")
        operations = [r.ok() for r in schema.get_all_operations()]
        # operations with a body get the budget; the bodiless GETs have few distinct cases
        with_body = [o for o in operations if o.method.upper() in ("POST", "PUT", "PATCH")]
        per_operation = max(1, -(-cases // max(1, len(with_body))))
        for operation in operations:
            examples = per_operation if operation in with_body else 10
            headers = {
                "X-API-Key": ADMIN_KEY if operation.path.startswith("/admin") else SCORING_KEY
            }

            @given(case=operation.as_strategy())
            @settings(
                max_examples=examples,
                derandomize=True,
                database=None,
                deadline=None,
                suppress_health_check=list(HealthCheck),
            )
            def check(case):
                nonlocal sent, failures
                sent += 1
                try:
                    case.call_and_validate(
                        headers=headers,  # noqa: B023 -- called before the loop moves on
                        checks=[not_a_server_error, response_schema_conformance],
                    )
                except Exception as exc:  # noqa: BLE001 -- count every failed check, go on
                    failures += 1
                    if len(errors) < 5:
                        errors.append(f"{case.method} {case.path}: {str(exc)[:200]}")

            try:
                check()
            except Exception as exc:  # noqa: BLE001 -- hypothesis re-raises what it found
                failures += 1
                if len(errors) < 5:
                    errors.append(f"{operation.method.upper()} {operation.path}: {str(exc)[:300]}")
    if env:
        _clean_prefix(redis_url, env["CACHE_PREFIX"])
    return {
        "scenario": "schemathesis against /openapi.json",
        "load": "one generated request at a time",
        "injected": f"up to {per_operation} cases per operation with a body, valid and invalid",
        "sent": sent,
        "failed": failures,
        "first_failures": errors,
        "checks": {f">= {cases} cases": sent >= cases, "no failure": failures == 0},
    }
