"""The fault scenarios: each starts a server, injects one fault under load, and reports.

Every scenario returns a dict with ``scenario``, ``load``, ``injected`` and the tally of
:func:`bench.reliability.harness.summarize` (``sent``, ``ok``, ``failed``, ``lost``, latency),
plus what it checked in ``checks`` (name -> bool). The tests in ``tests/reliability/`` run the
short versions and assert on ``checks``; ``python -m bench.reliability`` runs the long ones and
writes RELIABILITY.md.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.reliability.harness import Load, Server, summarize
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
    the same worker processes serve throughout; the good bundle reaches every worker.
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
        good = "v2-good"
        add_version(root, good, source=source, hmac_key=key, make_current=True)
        os.kill(server.pid, signal.SIGHUP)
        server.wait_for(lambda: server.versions() == {good: 2}, "every worker on the good bundle")
        time.sleep(0.5)
        answers = load.stop()
        pids_after = {w["pid"] for w in server.readyz()["workers"]}
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
            "no worker restarted": pids_before == pids_after,
            "good bundle on every worker": good in tally["versions"],
        },
    }


# ---- 4: recycling --------------------------------------------------------------------------------
_RETIRE = re.compile(r"recycling worker (\d+) after")
_FIRST_LOAD = re.compile(r"\[(\d+)\] \[INFO\] serving bundle \S+ \(previous: None\)")


def recycling_order(log: str) -> tuple[int, bool]:
    """(recycles seen, True when a new worker became ready between every two recycles)."""
    events = []
    for line in log.splitlines():
        if m := _RETIRE.search(line):
            events.append(("retire", int(m.group(1))))
        elif m := _FIRST_LOAD.search(line):
            events.append(("ready", int(m.group(1))))
    retires = [i for i, e in enumerate(events) if e[0] == "retire"]
    staggered = all(
        any(e[0] == "ready" for e in events[a + 1 : b]) for a, b in itertools.pairwise(retires)
    )
    return len(retires), staggered


def recycling(
    bundle_root: Path,
    *,
    recycles: int = 4,
    max_seconds: float = 180.0,
    max_requests: int = 200,
    clients: int = 4,
) -> dict[str, Any]:
    """Balanced load on 2 workers with a small request budget until ``recycles`` recycles.

    Expected: no request fails; a worker retires only after the previous one's replacement is
    ready (the log's order), so some worker always serves. Bounded by ``max_seconds``.
    """
    server = Server(bundle_root, env={"GUNICORN_MAX_REQUESTS": str(max_requests)})
    with server:
        load = Load(server, clients=clients).start()
        t0 = time.monotonic()
        deadline = t0 + max_seconds
        while time.monotonic() < deadline and recycling_order(server.log())[0] < recycles:
            time.sleep(0.5)
        # let the last replacement become ready under load too
        while time.monotonic() < deadline and server.ready_workers() < 2:
            time.sleep(0.2)
        answers = load.stop()
        seconds = time.monotonic() - t0
        log = server.log()
    seen, staggered = recycling_order(log)
    tally = summarize(answers)
    return {
        "scenario": "worker recycling under balanced load",
        "load": f"{clients} closed-loop clients for {seconds:.0f} s, 2 workers",
        "injected": f"GUNICORN_MAX_REQUESTS={max_requests} (+10% jitter)",
        **tally,
        "recycles": seen,
        "checks": {
            "workers recycled": seen >= recycles,
            "one worker away at a time": staggered,
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
) -> dict[str, Any]:
    """Normal load alone, then with ``slow`` slowloris connections open; compare.

    Expected: the normal clients keep being answered, with a p99 of the same order as without
    the slow connections. ``args`` (gunicorn options) compares other worker models.
    """
    server = Server(bundle_root, env=env, args=args)
    with server:
        baseline = summarize(Load(server, clients=clients).run_for(seconds / 3))
        trickle = SlowClients(server.port, slow, body=body).start()
        time.sleep(1.0)  # let them all connect and start trickling
        load = Load(server, clients=clients, timeout=5.0)
        answers = load.run_for(seconds)
        trickle.stop()
    tally = summarize(answers)
    return {
        "scenario": "slow clients"
        + (" (slow bodies)" if body else " (slow headers)")
        + (f" [{' '.join(args)}]" if args else ""),
        "load": f"{clients} closed-loop clients, /predict-segment, 2 workers",
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
