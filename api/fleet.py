"""Files through which the workers of one server agree: the worker roster and the reload marker.

Each worker keeps one small JSON file, ``<roster>/<pid>.json`` (``{"pid", "ready", "version",
"folder", "since"}``), rewritten atomically (temporary file, then rename) whenever its state
changes: a bundle loaded, swapped or refused. The master removes the file of a worker that exits
(gunicorn.conf.py ``child_exit``), so the folder lists the live workers. ``/readyz`` reads it to
describe every worker, not only the one that answered, and the recycling guard reads it so that
a worker retires only while every other worker is ready (:func:`claim_retirement`).

Plain files rather than the Prometheus folder: a worker that is not ready has no metric series,
and the guard needs a cheap, exact answer under a lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger(__name__)

_SUFFIX = ".json"
_LOCK = ".retire.lock"
_CLAIM = ".retiring"


class Roster:
    """The roster folder of one server (``WORKER_ROSTER``)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)

    def publish(self, pid: int, *, ready: bool, version: str | None, folder: str | None) -> None:
        """Write this worker's state (never raises: the roster informs, it does not serve)."""
        record = {
            "pid": pid,
            "ready": ready,
            "version": version,
            "folder": folder,
            "since": time.time(),
        }
        path = self.folder / f"{pid}{_SUFFIX}"
        tmp = self.folder / f".{pid}.tmp"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(orjson.dumps(record))
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("cannot write the worker roster %s: %s", path, exc)

    def remove(self, pid: int) -> None:
        """Forget a worker that has exited."""
        with contextlib.suppress(OSError):
            (self.folder / f"{pid}{_SUFFIX}").unlink()

    def entries(self) -> list[dict[str, Any]]:
        """Every live worker's last published state, ordered by pid."""
        out = []
        try:
            paths = list(self.folder.glob(f"*{_SUFFIX}"))
        except OSError:
            return []
        for path in paths:
            try:
                record = orjson.loads(path.read_bytes())
            except (OSError, orjson.JSONDecodeError):
                continue  # removed meanwhile, or being replaced
            if isinstance(record, dict) and isinstance(record.get("pid"), int):
                out.append(record)
        return sorted(out, key=lambda r: r["pid"])

    def claim_retirement(self, pid: int, workers: int) -> bool:
        """True when worker ``pid`` may leave now: every other worker is ready, none retiring.

        At most one worker of the server is away at a time: the claim names the worker that
        retired last, and it is released only once that worker is gone from the roster and
        ``workers`` workers are ready again (its replacement has loaded the bundle). A lock
        makes check-and-claim atomic between workers.
        """
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with open(self.folder / _LOCK, "a+b") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                entries = self.entries()
                live = {e["pid"] for e in entries}
                ready = {e["pid"] for e in entries if e.get("ready")}
                claim = self.folder / _CLAIM
                holder = _read_pid(claim)
                # The last worker to retire is still here, or its replacement is not ready yet.
                if holder not in (None, pid) and (holder in live or len(ready) < workers):
                    return False
                others_ready = len(ready - {pid})
                if others_ready < workers - 1 or (workers > 1 and others_ready == 0):
                    return False
                claim.write_text(str(pid))
                return True
        except OSError as exc:
            log.warning("worker roster %s unusable (%s): retiring without the guard", self, exc)
            return True

    def __str__(self) -> str:
        return str(self.folder)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def write_marker(marker: Path, folder: str, version: str, *, exclusive: bool = False) -> bool:
    """Write the reload marker naming bundle ``folder`` (manifest ``version``); False on failure.

    ``exclusive``: only when no marker exists yet (the first worker to start wins). Shared with
    gunicorn.conf.py, whose SIGHUP handler names a bundle the same way.
    """
    tmp = marker.with_name(f".{marker.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    payload = {"folder": folder, "version": version, "pid": os.getpid(), "written_at": time.time()}
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(orjson.dumps(payload))
        if exclusive:
            with contextlib.suppress(FileExistsError):
                os.link(tmp, marker)
            tmp.unlink()
        else:
            os.replace(tmp, marker)
    except OSError as exc:
        log.error("cannot write reload marker %s: %s (other workers will not follow)", marker, exc)
        return False
    return True
