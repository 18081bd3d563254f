"""gunicorn settings for the scoring service: ``gunicorn -c gunicorn.conf.py wsgi:app``.

Environment (parsed and checked by ``api.settings.ServerSettings``): BIND (or HOST/PORT, default
127.0.0.1:8000), WEB_CONCURRENCY (workers, 2), GUNICORN_THREADS (1), GUNICORN_TIMEOUT (30),
GUNICORN_GRACEFUL_TIMEOUT (20), GUNICORN_READ_TIMEOUT (10), GUNICORN_MAX_REQUESTS (20000, plus
up to 10% jitter), MALLOC_KEEP_MB (32), RECYCLE_AT_IDLE_PRIORITY (0), PROMETHEUS_MULTIPROC_DIR,
RELOAD_MARKER, WORKER_ROSTER, LOG_LEVEL; OMP_NUM_THREADS (see below).

The master loads and verifies the bundle once before forking (``api.model.preload``) and
workers inherit it, so a worker that replaces another (recycling, a crash) answers at once
instead of after a full import and bundle load. Only the loaded model crosses the fork: the app,
its metrics, Redis connections and threads are created in each worker (``preload_app`` stays
off). LightGBM's OpenMP runtime is not fork-safe once it has started threads, so the master
sets ``OMP_NUM_THREADS=1`` when unset (one worker is one core) and does not preload when it is
set to more. Without a preload (it failed, or was skipped) workers load the bundle themselves. Workers agree on the bundle through a reload marker (see ``api/model.py``) and
publish their state to a worker roster (``api/fleet.py``); metrics are aggregated across workers
with prometheus_client's multiprocess mode. All three live in a folder private to this server
unless the environment names them.

Three behaviours differ from gunicorn's defaults, each to keep at least one worker serving:

- **SIGHUP rolls out a bundle, not new code or configuration.** The master trial-loads the
  bundle the settings select (``MODEL_VERSION``, else ``current``) in a short-lived process; when
  it fails, the refusal is logged and the last good bundle keeps serving. When it loads, the
  master preloads it, names it in the reload marker (``"replace": true``) and replaces the
  workers one at a time by forks that start with it, each ready before the worker it replaces
  leaves (without a preload, workers load it in the background and swap it in place, as after
  ``/admin/reload``). Restart the service to run new code.
- **Recycling starts the replacement first.** gunicorn's own ``max_requests`` stops a worker
  and only then forks the next one, which must load and verify the bundle before it answers: with
  one worker that was a stall of over a second, and with two, balanced load retired both within a
  second. Here a worker past its request budget keeps serving and asks the master for a
  replacement (``api/fleet.py``); the master forks one extra worker, waits until it is ready and
  only then stops the old one gracefully. One replacement at a time, so every configured worker
  slot always has a ready worker. The old worker exits at idle priority, and with
  ``RECYCLE_AT_IDLE_PRIORITY`` the replacement builds its app at idle priority too
  (``api/priority.py``).
- **Slow clients cannot hold a thread.** The worker class (``api/worker.py``) reads each request
  whole in its event loop before a thread takes it.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
from gunicorn import glogging, util

from api.fleet import Recycler, Roster, write_marker
from api.memory import keep_freed_memory
from api.priority import lower_process
from api.settings import ServerSettings

_server = ServerSettings.load()
# Named after the master's pid: one folder per server.
_runtime = Path(tempfile.gettempdir()) / f"segsvc-{os.getpid()}"
_metrics_dir = _server.PROMETHEUS_MULTIPROC_DIR or _runtime / "metrics"
_reload_marker = _server.RELOAD_MARKER or _runtime / "reload.json"
_roster_dir = _server.WORKER_ROSTER or _runtime / "workers"
#: longest a replacement worker may take to load its bundle before recycling gives it up, seconds
REPLACEMENT_READY_SECONDS = 300
#: longest a SIGHUP trial load may take before the roll-out is abandoned, seconds
TRIAL_LOAD_SECONDS = 300

wsgi_app = "wsgi:app"
bind = [_server.bind]
workers = _server.WEB_CONCURRENCY
worker_class = "api.worker.WholeRequestWorker"  # gthread, reading requests whole first
threads = _server.GUNICORN_THREADS
timeout = _server.GUNICORN_TIMEOUT
graceful_timeout = _server.GUNICORN_GRACEFUL_TIMEOUT
keepalive = 5
max_requests = _server.GUNICORN_MAX_REQUESTS
max_requests_jitter = max_requests // 10
preload_app = False
# gunicorn's control socket lives at one path per user ($HOME/.gunicorn), shared by every server
# on the machine, and HOME is read-only in the image; nothing here uses it.
control_socket_disable = True
raw_env = [
    f"PROMETHEUS_MULTIPROC_DIR={_metrics_dir}",
    f"RELOAD_MARKER={_reload_marker}",
    f"WORKER_ROSTER={_roster_dir}",
]
if Path("/dev/shm").is_dir():
    # Worker heartbeats on tmpfs: a slow container disk must not make the master kill workers.
    worker_tmp_dir = "/dev/shm"
accesslog = "-"
errorlog = "-"
loglevel = _server.LOG_LEVEL.lower()
proc_name = "segment-service"


#: quoted text in gunicorn's protocol-error messages: the offending request line or header
_QUOTED = re.compile("'[^']*'|\"[^\"]*\"")
_PROTOCOL_ERROR = "Invalid request from ip="


def redact_protocol_error(message: str) -> str:
    """gunicorn's "Invalid request from ip=...: ..." with every quoted part withheld.

    gunicorn quotes the bad request line or header in these messages; a header line without a
    colon is then an API key in the log (``Invalid HTTP Header: 'X-API-Key <key>'``).
    """
    if not message.startswith(_PROTOCOL_ERROR):
        return message
    return _QUOTED.sub(lambda m: f"<{len(m.group(0)) - 2} bytes withheld>", message)[:300]


class JsonAccessLogger(glogging.Logger):
    """One JSON object per request; only these fields, so no header (API key) is ever logged.

    gunicorn's own warnings about malformed requests are logged with the quoted request line or
    header withheld (:func:`redact_protocol_error`).

    Cheap by design, since it runs for every request (bench/RESULTS.md: it was the largest part
    of the service's own overhead over a bare Flask floor, 133,000 instructions a line): orjson
    instead of json, a timestamp whose seconds part is formatted once per second, and the line
    written straight to gunicorn's access-log stream handlers (their format is the bare message)
    instead of building a ``logging.LogRecord``. Handlers set up some other way (``logconfig``,
    syslog) get the same line through ``logging``.
    """

    _second = -1
    _second_text = ""
    #: the worker's pid, set by ``post_fork`` in each worker (a system call per line otherwise)
    pid: int | None = None

    def warning(self, msg, *args, **kwargs) -> None:
        """gunicorn's warning, with protocol errors redacted."""
        if isinstance(msg, str) and not args:
            msg = redact_protocol_error(msg)
        super().warning(msg, *args, **kwargs)

    def access(self, resp, req, environ, request_time) -> None:
        """Log one answered request."""
        if not self.access_log_enabled:
            return
        status = resp.status
        if isinstance(status, str):
            status = status.split(None, 1)[0]
        record = {
            "time": self._timestamp(),
            "remote": environ.get("REMOTE_ADDR"),
            "method": environ.get("REQUEST_METHOD"),
            "path": environ.get("PATH_INFO"),
            "status": int(status) if str(status).isdigit() else status,
            "bytes": getattr(resp, "sent", None),
            "duration_ms": round(request_time.total_seconds() * 1000, 3),
            "pid": self.pid or os.getpid(),
            "user_agent": environ.get("HTTP_USER_AGENT"),
            "request_id": environ.get("HTTP_X_REQUEST_ID"),
        }
        try:
            line = orjson.dumps(record).decode()
        except TypeError:  # e.g. a lone surrogate: json escapes what orjson refuses
            line = json.dumps(record)
        handlers = self.access_log.handlers
        if handlers and all(type(h) is logging.StreamHandler for h in handlers):
            for handler in handlers:
                with handler.lock:
                    handler.stream.write(line + "\n")
                    handler.stream.flush()
        else:
            self.access_log.info(line)

    def _timestamp(self) -> str:
        """UTC ISO 8601 with milliseconds, as ``datetime.isoformat(timespec="milliseconds")``."""
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._second_text}.{int((now - second) * 1000):03d}+00:00"


logger_class = JsonAccessLogger


def on_starting(server) -> None:
    """Master start: empty metrics and roster folders (stale files would add old counts), and
    the freed memory processes keep (api/memory.py; workers inherit it)."""
    keep_freed_memory(_server.MALLOC_KEEP_MB)
    for folder in (_metrics_dir, _roster_dir):
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True, mode=0o700)
    _reload_marker.unlink(missing_ok=True)


def when_ready(server) -> None:
    """Master ready: the bundle is preloaded, SIGHUP becomes a verified bundle roll-out,
    recycling starts replacements first (see the module docstring)."""
    preload_bundle(server)
    server.handle_hup = lambda: roll_out_bundle(server)
    recycler = Recycler(
        Roster(_roster_dir),
        ready_timeout=REPLACEMENT_READY_SECONDS,
        before_spawn=lambda: refresh_preload(server),
    )
    manage_workers = server.manage_workers

    def manage_workers_recycling() -> None:
        recycler.step(server)
        manage_workers()

    server.manage_workers = manage_workers_recycling
    server.segsvc_recycler = recycler


def preload_bundle(server, folder: str | None = None) -> bool:
    """Load the bundle in the master for workers to inherit (see the module docstring); True
    when it is preloaded."""
    threads = os.environ.get("OMP_NUM_THREADS", "1")
    if threads.strip() != "1":
        server.log.info(
            "bundle not preloaded: OMP_NUM_THREADS=%s (OpenMP threads do not survive fork)",
            threads,
        )
        return False
    os.environ["OMP_NUM_THREADS"] = "1"
    import api
    from api import model
    from api.settings import Settings, SettingsError

    api.import_modules()  # a forked worker then only builds its app (tens of milliseconds)

    try:
        settings = Settings.load()
    except SettingsError:
        return False  # every worker reports it
    started = time.monotonic()
    loaded = model.preload(settings, folder)
    if loaded is not None:
        # start-up objects out of the collector's reach: forked workers share their pages
        gc.freeze()
        server.log.info(
            "master: bundle %s (folder %s) preloaded in %.2f s for workers to inherit",
            loaded.version,
            loaded.folder,
            time.monotonic() - started,
        )
    return loaded is not None


def refresh_preload(server) -> None:
    """Before forking a replacement: preload the bundle the marker names if it changed."""
    model = sys.modules.get("api.model")
    folder = _marker_folder()
    if model is None or folder is None or folder == model.preloaded_folder():
        return
    preload_bundle(server, folder)


def roll_out_bundle(server) -> bool:
    """Trial-load the bundle the settings select; name it in the reload marker if it loads.

    The trial runs in a separate process with the master's environment (a worker's view of
    MODEL_ROOT, MODEL_VERSION and BUNDLE_HMAC_KEY), so that a bundle that crashes its loader
    cannot take the master down: a fork of the master when it has the model libraries imported
    (it preloads), which then only loads the bundle; else ``python -m api.model``, which imports
    them first (seconds of CPU). Either way the answer is read from the process's output, not its
    exit status (the master reaps children on its own).
    """
    server.log.info("SIGHUP: trial-loading the bundle the settings select")
    server.log.reopen_files()
    forked = "api.model" in sys.modules
    answer = _trial_in_fork() if forked else _trial_in_subprocess(server)
    if not isinstance(answer, dict) or not answer.get("ok"):
        error = answer.get("error") if isinstance(answer, dict) else None
        server.log.error(
            "SIGHUP: bundle refused, workers keep serving %s: %s",
            _marker_folder() or "their current bundle",
            error or "the trial load printed no answer",
        )
        return False
    # Preloaded here, workers forked from now on start with it: the roll-out replaces every
    # worker by such a fork, one at a time, instead of loading the bundle inside serving workers.
    preloaded = preload_bundle(server, answer["folder"])
    recycler = getattr(server, "segsvc_recycler", None)
    replace = preloaded and recycler is not None
    if not write_marker(_reload_marker, answer["folder"], answer["version"], replace=replace):
        return False
    if replace:
        recycler.replace(list(server.WORKERS))
    server.log.info(
        "SIGHUP: rolling out bundle %s (folder %s); %s",
        answer["version"],
        answer["folder"],
        "workers are replaced one at a time by ones that start with it"
        if replace
        else "workers swap it in place",
    )
    return True


def _trial_in_subprocess(server) -> dict:
    """``python -m api.model``: its last output line is the answer."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "api.model"],
            cwd=server.cfg.chdir,
            capture_output=True,
            timeout=TRIAL_LOAD_SECONDS,
            check=False,
        )
        lines = done.stdout.decode(errors="replace").strip().splitlines()
        return json.loads(lines[-1]) if lines else {}
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        return {"ok": False, "error": f"trial load did not finish ({exc.__class__.__name__})"}


def _trial_in_fork() -> dict:
    """Fork the master; the child loads the bundle and writes one JSON answer to a pipe."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: answer, then leave without running the master's exit handlers
        os.close(read_fd)
        answer: dict = {"ok": False, "error": "trial load failed"}
        try:
            from api.model import trial_load
            from api.settings import Settings

            loaded = trial_load(Settings.load())
            answer = {"ok": True, "folder": loaded.folder, "version": loaded.version}
        except Exception as exc:  # noqa: BLE001 -- any failure is a refusal, with its reason
            answer = {"ok": False, "error": str(exc) or exc.__class__.__name__}
        finally:
            with contextlib.suppress(OSError):
                os.write(write_fd, orjson.dumps(answer))
            os._exit(0)
    os.close(write_fd)
    chunks = []
    deadline = time.monotonic() + TRIAL_LOAD_SECONDS
    try:
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([read_fd], [], [], left)
            if not ready:
                break
            chunk = os.read(read_fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_fd)
        with contextlib.suppress(OSError):
            if time.monotonic() >= deadline:
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    try:
        answer = orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError:
        return {"ok": False, "error": "the trial load ended without an answer (it crashed)"}
    return answer if isinstance(answer, dict) else {}


def _marker_folder() -> str | None:
    try:
        marker = json.loads(_reload_marker.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict):
        return None
    return marker.get("folder") or marker.get("version")


def post_fork(server, worker) -> None:
    """Take recycling over from gunicorn: keep its jittered budget, decide when to use it.

    With ``RECYCLE_AT_IDLE_PRIORITY``, a worker forked by the recycler (to replace one that keeps
    serving until it is ready) builds its app at idle priority
    (``api.worker.WholeRequestWorker.load_wsgi``).
    """
    worker.log.pid = os.getpid()  # this worker's copy of the logger
    recycler = getattr(server, "segsvc_recycler", None)
    worker.segsvc_replacement = _server.RECYCLE_AT_IDLE_PRIORITY and bool(
        getattr(recycler, "spawning", False)
    )
    budget = worker.max_requests
    worker.max_requests = sys.maxsize  # gunicorn's own check never fires
    worker.segsvc_budget = budget if budget < sys.maxsize else None
    worker.segsvc_requests = 0


def pre_request(worker, req) -> None:
    """Count requests; at the budget, ask the master for a replacement and keep serving.

    The master stops this worker once the replacement is ready (``api.fleet.Recycler``). Only
    when the request cannot be written does the worker retire at once, as gunicorn itself does
    at max_requests (``alive`` False: this response closes its connection, the worker finishes
    what it has in hand and exits).
    """
    budget = getattr(worker, "segsvc_budget", None)
    if budget is None or not worker.alive:
        return
    worker.segsvc_requests += 1
    if worker.segsvc_requests != budget:
        return
    pid = os.getpid()
    if Roster(_roster_dir).request_retirement(pid):
        worker.log.info(
            "worker %s reached its %s requests: asking for a replacement, serving until it is ready",
            pid,
            budget,
        )
    else:
        worker.log.warning(
            "recycling worker %s after %s requests without a replacement", pid, budget
        )
        worker.alive = False


def post_worker_init(worker) -> None:
    """Answer gunicorn's own errors in the envelope, then freeze start-up objects out of the GC.

    A scoring request allocates thousands of small objects (a 1,000-customer batch: ~10,000
    dicts); each full collection would otherwise walk every module and model object loaded at
    start-up. Freezing them cuts a batch request by about a quarter (bench/RESULTS.md).
    """
    # gunicorn answers a request it cannot parse (bad request line or header, headers over its
    # limits) itself, with an HTML page quoting the offending line; it has no hook for that page,
    # so the worker replaces the one function that writes it. The detail stays in gunicorn's log.
    util.write_error = _write_error_envelope
    gc.freeze()


def _write_error_envelope(sock, status_int, reason, mesg) -> None:
    """gunicorn's ``util.write_error`` with the API's JSON envelope instead of HTML."""
    from api.errors import protocol_error_response  # loaded in the worker with the app

    util.write_nonblock(sock, protocol_error_response(int(status_int)))


def worker_exit(server, worker) -> None:
    """In a worker whose run loop ended cleanly: leave now, without the interpreter's teardown
    (``api.worker.WholeRequestWorker.init_process`` says why), log lines flushed first.

    The kernel still unmaps the worker's memory as it exits (~6 ms of CPU on the production-sized
    bundle), on the core its replacement now serves from: that runs at idle priority
    (api/priority.py), so it takes no time from the replacement's requests.
    """
    if not getattr(worker, "segsvc_exit_fast", False):
        return  # a failed start or an abort: gunicorn's own exit, with its status
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    lower_process()
    os._exit(0)


def child_exit(server, worker) -> None:
    """A worker is gone: drop its live-only gauges from the aggregated metrics."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid, path=str(_metrics_dir))
    Roster(_roster_dir).remove(worker.pid)


def on_exit(server) -> None:
    """Master exit: remove the runtime folder this server created."""
    if _runtime.exists():
        shutil.rmtree(_runtime, ignore_errors=True)
