"""Bundle lifecycle in the service: load and verify, ready flag, atomic swap, reload in every worker.

A worker serves one :class:`LoadedModel` at a time; a request takes a reference to it once, so
a swap in the middle of a request never mixes two versions. Loading verifies the bundle
(SHA-256 of every file, signature, library versions) before anything is unpickled; a bundle that
fails is refused and the current one keeps serving.

Which version every worker of one gunicorn server serves is written in a small JSON *reload
marker* (``RELOAD_MARKER``; gunicorn.conf.py gives each server its own). The first worker to
load writes the version it chose; ``/admin/reload`` rewrites it (atomically, by rename); every
worker looks at the marker's ``stat`` at most once per ``RELOAD_POLL_SECONDS`` while serving and
loads the version it names when that changed. Workers that gunicorn starts later (max_requests,
a crash) read the same marker, so the fleet never drifts to a different version on its own. A
SIGHUP to gunicorn deletes the marker (``on_reload`` hook): the new workers then load what the
settings select (``MODEL_VERSION``, else ``current``), as at start-up. Without a marker (one
process, e.g. the Flask test client) a reload affects the answering process only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from api.errors import NotReady
from api.metrics import Metrics
from api.schemas import RequestSchemas
from api.settings import Settings
from scoring.bundle import MANIFEST, Bundle, BundleError, load_current
from scoring.engine import ScoringEngine

log = logging.getLogger(__name__)


class BundleMissingError(BundleError):
    """The named bundle version does not exist under the model root."""


@dataclass(frozen=True)
class LoadedModel:
    """A verified bundle with everything computed from it at load time."""

    bundle: Bundle
    engine: ScoringEngine
    schemas: RequestSchemas
    version: str
    loaded_at: float


class ModelState:
    """The bundle this worker serves, how it was chosen, and how to change it."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self.current: LoadedModel | None = None
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._schemas: dict[str, RequestSchemas] = {}
        self._marker = settings.RELOAD_MARKER
        self._marker_seen: tuple[int, int, int] | None = None
        self._next_poll = 0.0
        self._poll_every = settings.RELOAD_POLL_SECONDS

    # ---- reading ---------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """True once a verified bundle is loaded."""
        return self.current is not None

    @property
    def follows_marker(self) -> bool:
        """True when reloads reach every worker (a reload marker is configured)."""
        return self._marker is not None

    # ---- start-up --------------------------------------------------------------------------
    def start(self) -> None:
        """Load the bundle the marker names (a restarted worker) or the settings select.

        A failure leaves the service alive but not ready; it is retried while serving.
        """
        marker = self._read_marker()
        if marker is not None:
            try:
                self._swap(self._load(marker.get("version")), initial=True)
                return
            except BundleError as exc:
                self._fail(f"marker names a bundle that cannot be loaded: {exc}")
        try:
            loaded = self._load(self.settings.MODEL_VERSION)
        except BundleError as exc:
            self._fail(str(exc))
            return
        self._swap(loaded, initial=True)
        if self._marker is not None and marker is None:
            self._write_marker(loaded.version, exclusive=True)

    # ---- per request -----------------------------------------------------------------------
    def serving(self) -> LoadedModel:
        """The model to answer with (following a reload if one is due); 503 when none is loaded."""
        self.poll()
        loaded = self.current
        if loaded is None:
            raise NotReady("no verified model bundle is loaded yet")
        return loaded

    def poll(self) -> None:
        """Follow the reload marker (cheap: a clock read unless the poll interval has passed)."""
        now = self.clock()
        if now < self._next_poll:
            return
        self._next_poll = now + self._poll_every
        if self.current is None:
            with self._lock:
                if self.current is None:
                    self.start()
            return
        if self._marker is None:
            return
        try:
            st = os.stat(self._marker)
        except OSError:
            return
        seen = (st.st_ino, st.st_mtime_ns, st.st_size)
        if seen == self._marker_seen:
            return
        with self._lock:
            if seen == self._marker_seen:
                return
            self._marker_seen = seen
            marker = self._read_marker(stat_key=seen)
            version = marker.get("version") if marker else None
            if not version or version == self.current.version:
                return
            try:
                self._swap(self._load(version))
                log.info("followed the reload marker to bundle %s", version)
            except BundleError as exc:
                self.metrics.reloads.labels("rejected").inc()
                self._fail(f"reload marker names {version!r}, refused: {exc}")

    # ---- admin ---------------------------------------------------------------------------------
    def reload(self, version: str | None = None) -> tuple[LoadedModel, str | None]:
        """Load ``version`` (or the one ``current`` names), swap it in, tell the other workers.

        Raises BundleMissingError or BundleError; the bundle being served is then unchanged.
        """
        with self._lock:
            previous = self.current.version if self.current else None
            try:
                loaded = self._load(version)
            except BundleError:
                self.metrics.reloads.labels("rejected").inc()
                raise
            self._swap(loaded)
            if self._marker is not None:
                self._write_marker(loaded.version)
            return loaded, previous

    # ---- internals ---------------------------------------------------------------------------
    def _load(self, version: str | None) -> LoadedModel:
        """Verify and load a bundle; ``version`` None means the one ``current`` names."""
        root = self.settings.MODEL_ROOT
        if version and not (Path(root) / version / MANIFEST).is_file():
            raise BundleMissingError(f"no bundle version {version!r} under the model root")
        bundle = load_current(root, version or None, hmac_key=self.settings.BUNDLE_HMAC_KEY)
        engine = ScoringEngine(bundle)
        schemas = self._schemas.get(engine.version)
        if schemas is None:
            schemas = RequestSchemas(engine, self.settings.MAX_BATCH_ITEMS)
            self._schemas[engine.version] = schemas
        return LoadedModel(bundle, engine, schemas, engine.version, time.time())

    def _swap(self, loaded: LoadedModel, *, initial: bool = False) -> None:
        previous = self.current.version if self.current else None
        # One reference assignment: requests already running keep the model they took.
        self.current = loaded
        self.last_error = None
        self.metrics.serving(loaded.version, previous)
        if not initial or previous is not None:
            self.metrics.reloads.labels("loaded").inc()
        log.info("serving bundle %s (previous: %s)", loaded.version, previous)

    def _fail(self, message: str) -> None:
        if message != self.last_error:
            # Log each distinct failure once, not once per poll.
            log.error("bundle not loaded: %s", message)
        self.last_error = message

    def _read_marker(self, stat_key: tuple[int, int, int] | None = None) -> dict[str, Any] | None:
        if self._marker is None:
            return None
        try:
            data = orjson.loads(Path(self._marker).read_bytes())
            if stat_key is None:
                st = os.stat(self._marker)
                self._marker_seen = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            return None
        except (OSError, orjson.JSONDecodeError) as exc:
            log.warning("reload marker %s unreadable: %s", self._marker, exc)
            return None
        return data if isinstance(data, dict) else None

    def _write_marker(self, version: str, *, exclusive: bool = False) -> None:
        """Name ``version`` in the marker, atomically (write a temporary file, then rename)."""
        marker = Path(self._marker)
        tmp = marker.with_name(f".{marker.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        payload = {"version": version, "pid": os.getpid(), "written_at": time.time()}
        try:
            marker.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(orjson.dumps(payload))
            if exclusive:
                # First worker to start wins; the others keep what it wrote.
                with contextlib.suppress(FileExistsError):
                    os.link(tmp, marker)
                tmp.unlink()
            else:
                os.replace(tmp, marker)
            st = os.stat(marker)
        except OSError as exc:
            log.error(
                "cannot write reload marker %s: %s (other workers will not follow)", marker, exc
            )
            return
        self._marker_seen = (st.st_ino, st.st_mtime_ns, st.st_size)
        if exclusive:
            # Another worker may have won the race with a different choice: follow it.
            self._next_poll = 0.0
            self._marker_seen = None
