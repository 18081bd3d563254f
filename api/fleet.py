"""How the workers of one server agree: the worker roster, recycling, the reload marker.

Each worker keeps one small JSON file, ``<roster>/<pid>.json`` (``{"pid", "ready", "version",
"folder", "since"}``), rewritten atomically (temporary file, then rename) whenever its state
changes: a bundle loaded, swapped or refused. The master removes the file of a worker that exits
(gunicorn.conf.py ``child_exit``), so the folder lists the live workers. ``/readyz`` reads it to
describe every worker, not only the one that answered.

Recycling (``max_requests``) goes through the roster too, so that it never leaves fewer ready
workers than configured, even with a single worker: a worker past its request budget leaves an
empty ``<pid>.retire`` file and keeps serving; the master's :class:`Recycler` then starts one
extra worker, waits until the roster shows it ready (its bundle loaded and verified), and only
then stops the old worker gracefully (SIGTERM: it finishes what it has in hand, answers kept-alive
connections with ``Connection: close``). One replacement at a time. A replacement that cannot load
a bundle is stopped instead and the old worker keeps serving.

Plain files rather than the Prometheus folder: a worker that is not ready has no metric series,
and the master must not import the model libraries to learn whether a worker is ready.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger(__name__)

_SUFFIX = ".json"
_RETIRE = ".retire"


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
        for suffix in (_SUFFIX, _RETIRE):
            with contextlib.suppress(OSError):
                (self.folder / f"{pid}{suffix}").unlink()

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

    def request_retirement(self, pid: int) -> bool:
        """Worker ``pid`` is past its request budget: ask the master for a replacement.

        The worker keeps serving; the master (:class:`Recycler`) starts its replacement and
        stops it once the replacement is ready. False when the request cannot be written.
        """
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / f"{pid}{_RETIRE}").touch()
        except OSError as exc:
            log.warning("cannot write the worker roster %s: %s", self, exc)
            return False
        return True

    def retirement_requests(self) -> set[int]:
        """Pids of the workers waiting to be replaced."""
        try:
            names = [p.name for p in self.folder.glob(f"*{_RETIRE}")]
        except OSError:
            return set()
        return {int(n[: -len(_RETIRE)]) for n in names if n[: -len(_RETIRE)].isdigit()}

    def entry(self, pid: int) -> dict[str, Any] | None:
        """Worker ``pid``'s last published state, None before it published any."""
        try:
            record = orjson.loads((self.folder / f"{pid}{_SUFFIX}").read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return None
        return record if isinstance(record, dict) else None

    def __str__(self) -> str:
        return str(self.folder)


class Recycler:
    """The master's half of recycling: a replacement is ready before the old worker leaves.

    ``step(server)`` runs in the gunicorn master before each of its ``manage_workers`` passes
    (gunicorn.conf.py ``when_ready``), at least once a second. ``server`` is gunicorn's Arbiter:
    ``WORKERS`` (pid -> worker with an ``age``), ``num_workers``, ``spawn_worker()``,
    ``kill_worker(pid, sig)`` and ``log``. While a replacement runs, ``num_workers`` is one above
    the configured count, so gunicorn neither kills the extra worker nor starts another.
    """

    def __init__(
        self,
        roster: Roster,
        *,
        ready_timeout: float = 300.0,
        retry_after: float = 30.0,
        clock: Any = time.monotonic,
        before_spawn: Any = None,
    ) -> None:
        self.roster = roster
        #: called in the master before a replacement is forked (gunicorn.conf.py refreshes the
        #: preloaded bundle there, so the replacement inherits the one the marker names)
        self.before_spawn = before_spawn
        #: longest a replacement may take to load its bundle before it is given up
        self.ready_timeout = ready_timeout
        #: pause before trying again after a replacement failed
        self.retry_after = retry_after
        self.clock = clock
        self.old: int | None = None
        self.new: int | None = None
        self.started = 0.0
        self.retiring = False
        self.not_before = 0.0
        #: workers to replace whether or not they asked (a roll-out: :meth:`replace`)
        self.queued: set[int] = set()
        #: True while this recycler forks a replacement (see :meth:`_begin`)
        self.spawning = False

    def replace(self, pids: Any) -> None:
        """Replace these workers too, one at a time (after a SIGHUP roll-out: their successors
        are forked with the new bundle)."""
        self.queued.update(pids)
        self.not_before = 0.0

    def step(self, server: Any) -> None:
        """Advance the current replacement, or start one for a worker that asked."""
        if self.old is not None:
            self._advance(server)
        else:
            self._begin(server)

    def _begin(self, server: Any) -> None:
        now = self.clock()
        workers = server.WORKERS
        if now < self.not_before or len(workers) != server.num_workers:
            return  # gunicorn is replacing a worker itself (a crash), or a retry is due later
        self.queued &= set(workers)
        asking = [pid for pid in self.roster.retirement_requests() | self.queued if pid in workers]
        if not asking:
            return
        old = min(asking, key=lambda pid: workers[pid].age)
        if self.before_spawn is not None:
            self.before_spawn()
        server.num_workers += 1
        self.old, self.started, self.retiring = old, now, False
        # True in the child's copy: gunicorn.conf.py's post_fork tells a replacement from a
        # worker gunicorn starts itself (a crash's) by it
        self.spawning = True
        try:
            self.new = server.spawn_worker()  # in the child this never returns
        finally:
            self.spawning = False
        server.log.info(
            "worker %s reached its request budget: started %s, which replaces it once ready",
            old,
            self.new,
        )

    def _advance(self, server: Any) -> None:
        workers = server.WORKERS
        old, new = self.old, self.new
        if old not in workers:
            self.queued.discard(old)
            server.num_workers -= 1
            if self.retiring:
                server.log.info("recycled worker %s; %s serves in its place", old, new)
            else:
                server.log.warning("worker %s left before its replacement %s was ready", old, new)
            self._clear()
            return
        if new not in workers:
            server.num_workers -= 1
            server.log.warning(
                "replacement %s for worker %s exited before it was ready; %s keeps serving, "
                "next attempt in %.0f s",
                new,
                old,
                old,
                self.retry_after,
            )
            self._clear()
            self.not_before = self.clock() + self.retry_after
            return
        if self.retiring:
            return  # the old worker is finishing its requests
        state = self.roster.entry(new)
        if state is not None and state.get("ready"):
            self.retiring = True
            server.log.info("replacement %s is ready: stopping worker %s gracefully", new, old)
            server.kill_worker(old, signal.SIGTERM)
        elif state is not None or self.clock() - self.started > self.ready_timeout:
            # published "not ready": it could not load a bundle (its log says why)
            server.log.error(
                "replacement %s could not get ready (%s); stopping it, worker %s keeps serving",
                new,
                "no bundle loaded" if state is not None else "timed out",
                old,
            )
            server.kill_worker(new, signal.SIGTERM)

    def _clear(self) -> None:
        self.old = self.new = None
        self.retiring = False


def write_marker(
    marker: Path, folder: str, version: str, *, exclusive: bool = False, replace: bool = False
) -> bool:
    """Write the reload marker naming bundle ``folder`` (manifest ``version``); False on failure.

    ``exclusive``: only when no marker exists yet (the first worker to start wins). Shared with
    gunicorn.conf.py, whose SIGHUP handler names a bundle the same way, with ``replace`` when the
    master replaces the workers itself (api/model.py leaves the load to it).
    """
    tmp = marker.with_name(f".{marker.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    payload = {"folder": folder, "version": version, "pid": os.getpid(), "written_at": time.time()}
    if replace:
        payload["replace"] = True
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
