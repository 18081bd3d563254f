"""gunicorn settings for the scoring service: ``gunicorn -c gunicorn.conf.py wsgi:app``.

Environment (parsed and checked by ``api.settings.ServerSettings``): BIND (or HOST/PORT, default
127.0.0.1:8000), WEB_CONCURRENCY (workers, 2), GUNICORN_THREADS (1), GUNICORN_TIMEOUT (30),
GUNICORN_GRACEFUL_TIMEOUT (20), GUNICORN_MAX_REQUESTS (20000, plus up to 10% jitter),
PROMETHEUS_MULTIPROC_DIR, RELOAD_MARKER, LOG_LEVEL.

Each worker loads and verifies the bundle once when it boots (no preload: nothing is shared
across fork, and a SIGHUP starts fresh workers that load the bundle anew). Workers agree on the
version through a reload marker (see ``api/model.py``); metrics are aggregated across workers
with prometheus_client's multiprocess mode. Both live in a folder private to this server unless
the environment names them.
"""

from __future__ import annotations

import datetime as dt
import gc
import json
import os
import shutil
import tempfile
from pathlib import Path

from gunicorn import glogging, util

from api.settings import ServerSettings

_server = ServerSettings.load()
# Named after the master's pid, which a SIGHUP (config re-read) keeps: the same folder again.
_runtime = Path(tempfile.gettempdir()) / f"segsvc-{os.getpid()}"
_metrics_dir = _server.PROMETHEUS_MULTIPROC_DIR or _runtime / "metrics"
_reload_marker = _server.RELOAD_MARKER or _runtime / "reload.json"

wsgi_app = "wsgi:app"
bind = [_server.bind]
workers = _server.WEB_CONCURRENCY
worker_class = "gthread"
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
raw_env = [f"PROMETHEUS_MULTIPROC_DIR={_metrics_dir}", f"RELOAD_MARKER={_reload_marker}"]
if Path("/dev/shm").is_dir():
    # Worker heartbeats on tmpfs: a slow container disk must not make the master kill workers.
    worker_tmp_dir = "/dev/shm"
accesslog = "-"
errorlog = "-"
loglevel = _server.LOG_LEVEL.lower()
proc_name = "segment-service"


class JsonAccessLogger(glogging.Logger):
    """One JSON object per request; only these fields, so no header (API key) is ever logged."""

    def access(self, resp, req, environ, request_time) -> None:
        """Log one answered request."""
        if not self.access_log_enabled:
            return
        status = resp.status
        if isinstance(status, str):
            status = status.split(None, 1)[0]
        record = {
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
            "remote": environ.get("REMOTE_ADDR"),
            "method": environ.get("REQUEST_METHOD"),
            "path": environ.get("PATH_INFO"),
            "status": int(status) if str(status).isdigit() else status,
            "bytes": getattr(resp, "sent", None),
            "duration_ms": round(request_time.total_seconds() * 1000, 3),
            "pid": os.getpid(),
            "user_agent": environ.get("HTTP_USER_AGENT"),
            "request_id": environ.get("HTTP_X_REQUEST_ID"),
        }
        self.access_log.info(json.dumps(record))


logger_class = JsonAccessLogger


def on_starting(server) -> None:
    """Master start: an empty metrics folder (stale files would add old counts)."""
    if _metrics_dir.exists():
        shutil.rmtree(_metrics_dir)
    _metrics_dir.mkdir(parents=True, mode=0o700)
    _reload_marker.unlink(missing_ok=True)


def on_reload(server) -> None:
    """SIGHUP: forget the version workers agreed on; new workers load what settings select."""
    _reload_marker.unlink(missing_ok=True)


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


def child_exit(server, worker) -> None:
    """A worker is gone: drop its live-only gauges from the aggregated metrics."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid, path=str(_metrics_dir))


def on_exit(server) -> None:
    """Master exit: remove the runtime folder this server created."""
    if _runtime.exists():
        shutil.rmtree(_runtime, ignore_errors=True)
