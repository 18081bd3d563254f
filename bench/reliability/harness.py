"""What the fault scenarios share: a real gunicorn on loopback, closed-loop load, a tally.

Everything here talks to 127.0.0.1 only, is bounded in time, and stops what it started by PID
(the server runs in its own session; :meth:`Server.stop` signals that process group and nothing
else). Load is closed-loop: ``clients`` threads, each on one kept-alive connection, send the next
request when the previous answer arrives, and record status, latency and the model version of
every answer, so a scenario can report requests sent, failed, lost (no answer) and latency
during the fault.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SCORING_KEY = "reliability-scoring-key"
ADMIN_KEY = "reliability-admin-key"
#: a valid /predict-segment body for the demo contract (the tests' tiny bundle and the demo)
CUSTOMER = {
    "customer_id": "c-1",
    "total_spend": 1250.0,
    "order_count": 14,
    "days_since_last_purchase": 12,
    "unique_products": 9,
    "discount_usage": 0.2,
    "return_rate": 0.05,
    "mobile_usage": 0.8,
}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One gunicorn server of the service on a free loopback port, in its own process group."""

    def __init__(
        self,
        bundle_root: Path,
        *,
        workers: int = 2,
        threads: int = 1,
        env: dict[str, str] | None = None,
        python: str = sys.executable,
        args: tuple[str, ...] = (),
    ) -> None:
        self.bundle_root = Path(bundle_root)
        self.port = free_port()
        self.run_dir = Path(tempfile.mkdtemp(prefix="segsvc-reliability-"))
        self.log_path = self.run_dir / "gunicorn.log"
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("GUNICORN_", "PROMETHEUS_", "RATE_LIMIT", "AUTH_FAILURE"))
        }
        self.env.update(
            MODEL_ROOT=str(self.bundle_root),
            MODEL_VERSION="",
            BUNDLE_HMAC_KEY="",
            API_KEYS=SCORING_KEY,
            ADMIN_API_KEYS=ADMIN_KEY,
            BIND=f"127.0.0.1:{self.port}",
            WEB_CONCURRENCY=str(workers),
            GUNICORN_THREADS=str(threads),
            PROMETHEUS_MULTIPROC_DIR=str(self.run_dir / "metrics"),
            RELOAD_MARKER=str(self.run_dir / "reload.json"),
            WORKER_ROSTER=str(self.run_dir / "workers"),
            RELOAD_POLL_SECONDS="0.2",
            REDIS_URL="",
            CACHE_PREFIX=f"segsvc-rel-{self.port}",
            LOG_LEVEL="INFO",
            OMP_NUM_THREADS="1",
        )
        self.env.update(env or {})
        self.workers = workers
        self.python = python
        #: extra gunicorn command-line options (they override gunicorn.conf.py), for comparisons
        self.args = args
        self.process: subprocess.Popen | None = None

    # ---- life cycle ---------------------------------------------------------------------------
    def start(self, timeout: float = 120.0) -> Server:
        """Start gunicorn and wait until every worker is ready."""
        gunicorn = Path(self.python).with_name("gunicorn")
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                [str(gunicorn), "-c", "gunicorn.conf.py", *self.args, "wsgi:app"],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.wait_for(lambda: self.ready_workers() == self.workers, "every worker ready", timeout)
        return self

    def stop(self) -> None:
        """SIGTERM the master (gunicorn stops its workers), SIGKILL its group if it lingers."""
        process = self.process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        shutil.rmtree(self.run_dir / "metrics", ignore_errors=True)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        """The master's pid."""
        assert self.process is not None
        return self.process.pid

    def log(self) -> str:
        """Everything gunicorn and the app wrote so far."""
        return self.log_path.read_text(errors="replace")

    def wait_for(self, condition: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
        """Poll ``condition()`` until truthy; raise with the log's tail otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited early:\n{self.log()[-3000:]}")
            try:
                value = condition()
            except OSError:
                value = None
            if value:
                return value
            time.sleep(0.1)
        raise TimeoutError(f"timed out waiting for {what}:\n{self.log()[-3000:]}")

    # ---- talking to it ------------------------------------------------------------------------
    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        key: str | None = SCORING_KEY,
        headers: dict[str, str] | None = None,
        timeout: float = 10.0,
    ) -> tuple[int, Any, dict[str, str]]:
        """(status, parsed JSON or text, headers) of one request on a new connection."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            hdrs = dict(headers or {})
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                hdrs.setdefault("Content-Type", "application/json")
            if key:
                hdrs["X-API-Key"] = key
            conn.request(method, path, body=data, headers=hdrs)
            resp = conn.getresponse()
            raw = resp.read()
            out_headers = {k.lower(): v for k, v in resp.getheaders()}
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = raw.decode(errors="replace")
            return resp.status, payload, out_headers
        finally:
            conn.close()

    def readyz(self) -> dict[str, Any]:
        """The /readyz body (any status)."""
        return self.call("GET", "/readyz", key=None)[1]

    def ready_workers(self) -> int:
        """How many workers the roster lists as ready."""
        try:
            body = self.readyz()
        except (OSError, http.client.HTTPException):
            return 0
        return int(body.get("workers_ready", 0)) if isinstance(body, dict) else 0

    def versions(self) -> dict[str, int]:
        """Model version -> ready workers serving it."""
        counts: dict[str, int] = {}
        for w in self.readyz().get("workers", []):
            if w["ready"]:
                counts[w["model_version"]] = counts.get(w["model_version"], 0) + 1
        return counts


class Nginx:
    """nginx on a free loopback port in front of one gunicorn (deploy/nginx-loopback.conf).

    Runs in the foreground of its own session (``daemon off``), stopped by its pid like the
    server. ``port`` is what clients talk to; the :class:`Load` and scenario helpers take any
    object with a ``port``.
    """

    TEMPLATE = ROOT / "deploy" / "nginx-loopback.conf"

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.run_dir = Path(tempfile.mkdtemp(prefix="segsvc-nginx-"))
        # nginx started by root serves from unprivileged worker processes: let them in
        self.run_dir.chmod(0o755)
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> Nginx:
        """Write the configuration, start nginx, wait until its port accepts connections."""
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        conf = self.run_dir / "nginx.conf"
        text = self.TEMPLATE.read_text()
        for name, value in (
            ("@RUN@", str(self.run_dir)),
            ("@PORT@", str(self.port)),
            ("@UPSTREAM@", str(self.upstream_port)),
        ):
            text = text.replace(name, value)
        conf.write_text(text)
        with open(self.run_dir / "stdout.log", "ab") as out:
            self.process = subprocess.Popen(
                [binary, "-p", str(self.run_dir), "-c", str(conf), "-g", "daemon off;"],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited early:\n{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"nginx did not listen within {timeout:.0f} s:\n{self.log()}")

    def stop(self) -> None:
        """SIGQUIT (graceful), SIGKILL its group if it lingers; remove the run folder."""
        process = self.process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGQUIT)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def log(self) -> str:
        """nginx's error log and output."""
        parts = []
        for name in ("error.log", "stdout.log"):
            path = self.run_dir / name
            if path.is_file():
                parts.append(path.read_text(errors="replace")[-3000:])
        return "\n".join(parts)

    def __enter__(self) -> Nginx:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---- load --------------------------------------------------------------------------------------
@dataclass
class Answer:
    """One request of a load run."""

    sent_at: float
    seconds: float
    status: int  # 0: no answer (connection error or timeout)
    version: str | None = None


@dataclass
class Load:
    """Closed-loop load: ``clients`` threads posting ``body`` to ``path`` until stopped."""

    server: Server
    clients: int = 4
    path: str = "/predict-segment"
    body: Any = field(default_factory=lambda: dict(CUSTOMER))
    key: str = SCORING_KEY
    timeout: float = 10.0
    answers: list[Answer] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._payload = json.dumps(self.body).encode()

    def start(self) -> Load:
        """Start the client threads."""
        for i in range(self.clients):
            t = threading.Thread(target=self._client, name=f"load-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> list[Answer]:
        """Stop the clients (each finishes its request in flight) and return every answer."""
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout + 5)
        return self.answers

    def run_for(self, seconds: float) -> list[Answer]:
        """Start, wait ``seconds``, stop."""
        self.start()
        time.sleep(seconds)
        return self.stop()

    def _client(self) -> None:
        headers = {"Content-Type": "application/json", "X-API-Key": self.key}
        conn: http.client.HTTPConnection | None = None
        while not self._stop.is_set():
            if conn is None:
                conn = http.client.HTTPConnection(
                    "127.0.0.1", self.server.port, timeout=self.timeout
                )
            start = time.monotonic()
            try:
                conn.request("POST", self.path, body=self._payload, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
                answer = Answer(start, time.monotonic() - start, resp.status, _version(raw))
                if resp.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException):
                answer = Answer(start, time.monotonic() - start, 0)
                conn.close()
                conn = None
            with self._lock:
                self.answers.append(answer)
        if conn is not None:
            conn.close()


def _version(raw: bytes) -> str | None:
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    return body.get("model_version") if isinstance(body, dict) else None


def summarize(answers: Iterable[Answer], since: float = 0.0, until: float = float("inf")) -> dict:
    """Sent, ok, failed (an error status), lost (no answer), latency (ms) of a window."""
    window = [a for a in answers if since <= a.sent_at < until]
    ok = [a for a in window if 200 <= a.status < 300]
    failed = [a for a in window if a.status >= 300]
    lost = [a for a in window if a.status == 0]
    lat = sorted(a.seconds * 1000 for a in ok)

    def q(p: float) -> float | None:
        if not lat:
            return None
        return round(lat[min(len(lat) - 1, int(p * len(lat)))], 1)

    return {
        "sent": len(window),
        "ok": len(ok),
        "failed": len(failed),
        "lost": len(lost),
        "p50_ms": round(statistics.median(lat), 1) if lat else None,
        "p99_ms": q(0.99),
        "max_ms": round(lat[-1], 1) if lat else None,
        "versions": sorted({a.version for a in ok if a.version}),
    }
