"""Bundle lifecycle in the service: load and verify, ready flag, atomic swap, reload in every worker.

A worker serves one :class:`LoadedModel` at a time; a request takes a reference to it once, so
a swap in the middle of a request never mixes two versions. Loading verifies the bundle
(SHA-256 of every file, signature, library versions) before anything is unpickled; a bundle that
fails is refused and the current one keeps serving.

Which bundle every worker of one gunicorn server serves is written in a small JSON *reload
marker* (``RELOAD_MARKER``; gunicorn.conf.py gives each server its own): the bundle's *folder*
under the model root and the *version* its manifest declares (the two may differ: a folder can
be renamed or copied; workers load by folder and report the manifest's version). The first
worker to load writes the bundle it chose; ``/admin/reload`` rewrites it (atomically, by rename)
after loading and verifying the bundle itself, and a SIGHUP makes the master do the same after a
full trial load in a separate process (gunicorn.conf.py), so a bundle that fails verification
never reaches the marker. Every worker looks at the marker's ``stat`` at most once per
``RELOAD_POLL_SECONDS`` while serving and, when it names another bundle, loads it in a background
thread and swaps it in when ready: requests never wait for a load. Workers that gunicorn starts
later (recycling, a crash) read the same marker, so the fleet never drifts on its own. Without a
marker (one process, e.g. the Flask test client) a reload affects the answering process only.
A marker the master wrote after preloading the new bundle says ``"replace": true``: the master
then replaces every worker by one forked with that bundle (``api/fleet.py``), and workers leave
the load to it for up to ``REPLACE_GRACE_SECONDS`` before loading it themselves.

Each state change is also published to the worker roster (``WORKER_ROSTER``, see
``api/fleet.py``), which ``/readyz`` and the master's recycler read.

**Preloaded in the master.** Under gunicorn the master loads and verifies the bundle the marker
names once (:func:`preload`, from gunicorn.conf.py) and keeps it; a worker forked afterwards finds
it in this module and serves it without loading anything, provided it is the bundle that worker
would load (same folder, same manifest file). A replacement worker (recycling, a crash) is then
ready within milliseconds instead of after a full import and load. Only the loaded model crosses
the fork; everything with a process or a thread of its own (metrics, Redis connections, the
roster entry, LightGBM's per-thread prediction handles) is created by each worker.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from api.batch_answer import BatchEncoder, column_encoder
from api.errors import NotReady
from api.fleet import Roster, write_marker
from api.metrics import Metrics
from api.schemas import RequestSchemas
from api.settings import Settings
from scoring.bundle import MANIFEST, Bundle, BundleError, load_current, resolve
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
    #: the version the bundle's manifest declares (what answers report)
    version: str
    loaded_at: float
    #: the bundle's folder under the model root (what the reload marker names)
    folder: str
    #: the fixed JSON pieces of batch /recommend answers; None when the bundle's batches take
    #: the dict path (api/batch_answer.py)
    columns: BatchEncoder | None = None


#: the bundle the gunicorn master loaded before forking (see the module docstring)
_preloaded: tuple[LoadedModel, tuple[int, int, int]] | None = None


def _identity(folder_path: Path) -> tuple[int, int, int]:
    """Which manifest file a bundle folder holds now (a folder replaced in place differs)."""
    st = os.stat(folder_path / MANIFEST)
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def load_model(settings: Settings, folder: str | None, schemas: dict | None = None) -> LoadedModel:
    """Verify and load bundle ``folder`` (None: the one ``current`` names) with its schemas.

    Raises BundleMissingError or BundleError. ``schemas`` caches request schemas by version.
    """
    root = settings.MODEL_ROOT
    if folder and not (Path(root) / folder / MANIFEST).is_file():
        raise BundleMissingError(f"no bundle version {folder!r} under the model root")
    bundle = load_current(root, folder or None, hmac_key=settings.BUNDLE_HMAC_KEY)
    engine = ScoringEngine(bundle, explain_method=settings.EXPLAIN_METHOD)
    name = bundle.path.name if bundle.path is not None else engine.version
    if name != engine.version:
        log.warning(
            "bundle folder %s declares version %s in its manifest: serving it as %s",
            name,
            engine.version,
            engine.version,
        )
    cache = schemas if schemas is not None else {}
    request_schemas = cache.get(engine.version)
    if request_schemas is None:
        request_schemas = RequestSchemas(engine, settings.MAX_BATCH_ITEMS)
        cache[engine.version] = request_schemas
    return LoadedModel(
        bundle,
        engine,
        request_schemas,
        engine.version,
        time.time(),
        name,
        column_encoder(engine),
    )


def preload(settings: Settings, folder: str | None = None) -> LoadedModel | None:
    """In the gunicorn master: load the bundle workers will serve, for them to inherit.

    ``folder`` None: the one the reload marker names, else the one the settings select. Returns
    None (and workers load for themselves) when it cannot be loaded; the refusal is logged by
    the workers as usual.
    """
    global _preloaded
    if folder is None:
        marker = _read_json(settings.RELOAD_MARKER) if settings.RELOAD_MARKER else None
        folder = _marker_folder(marker) if marker else settings.MODEL_VERSION
    try:
        loaded = load_model(settings, folder)
        identity = _identity(loaded.bundle.path) if loaded.bundle.path is not None else None
    except (BundleError, OSError) as exc:
        _preloaded = None
        log.warning("master: bundle not preloaded (workers load it themselves): %s", exc)
        return None
    _preloaded = (loaded, identity) if identity is not None else None
    return loaded


def preloaded_folder() -> str | None:
    """The folder of the bundle the master holds (None: none)."""
    return _preloaded[0].folder if _preloaded is not None else None


def _inherited(settings: Settings, folder: str | None) -> LoadedModel | None:
    """The master's preloaded model when it is the bundle ``folder`` names, now."""
    held = _preloaded
    if held is None or held[0].bundle.path is None:
        return None
    loaded, identity = held
    try:
        path = resolve(settings.MODEL_ROOT, folder or None).resolve()
        if path != loaded.bundle.path.resolve() or _identity(path) != identity:
            return None
    except (BundleError, OSError):
        return None
    return loaded


def _read_json(path: os.PathLike | str) -> dict[str, Any] | None:
    try:
        data = orjson.loads(Path(path).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


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
        self._follower: threading.Thread | None = None
        self.roster = Roster(settings.WORKER_ROSTER) if settings.WORKER_ROSTER else None

    # ---- reading ---------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """True once a verified bundle is loaded."""
        return self.current is not None

    @property
    def follows_marker(self) -> bool:
        """True when reloads reach every worker (a reload marker is configured)."""
        return self._marker is not None

    @property
    def following(self) -> bool:
        """True while a bundle named by the marker is being loaded in the background."""
        follower = self._follower
        return follower is not None and follower.is_alive()

    # ---- start-up --------------------------------------------------------------------------
    def start(self, warm_up: Callable[[LoadedModel], None] | None = None) -> None:
        """Load the bundle the marker names (a restarted worker) or the settings select.

        ``warm_up`` is called with the loaded bundle before this worker says it is ready
        (``create_app`` passes :func:`api.warm.warm_up`). A failure leaves the service alive but
        not ready; it is retried while serving.
        """
        marker = self._read_marker()
        if marker is not None:
            try:
                loaded = self._load(_marker_folder(marker))
            except BundleError as exc:
                self._fail(f"marker names a bundle that cannot be loaded: {exc}")
            else:
                if warm_up is not None:
                    warm_up(loaded)
                self._swap(loaded, initial=True)
                return
        try:
            loaded = self._load(self.settings.MODEL_VERSION)
        except BundleError as exc:
            self._fail(str(exc))
            return
        if warm_up is not None:
            warm_up(loaded)
        self._swap(loaded, initial=True)
        if self._marker is not None and marker is None:
            self._write_marker(loaded, exclusive=True)

    # ---- per request -----------------------------------------------------------------------
    def serving(self) -> LoadedModel:
        """The model to answer with (following a reload if one is due); 503 when none is loaded."""
        self.poll()
        loaded = self.current
        if loaded is None:
            raise NotReady("no verified model bundle is loaded yet")
        return loaded

    def poll(self) -> None:
        """Follow the reload marker (cheap: a clock read unless the poll interval has passed).

        A bundle the marker names is loaded by a background thread; this request, and those
        after it, are answered with the current bundle until the new one is verified and loaded.
        """
        now = self.clock()
        if now < self._next_poll:
            return
        self._next_poll = now + self._poll_every
        if self.current is None:
            with self._lock:
                if self.current is None:
                    self.start()
            return
        if self._marker is None or self.following:
            return
        try:
            st = os.stat(self._marker)
        except OSError:
            return
        seen = (st.st_ino, st.st_mtime_ns, st.st_size)
        if seen == self._marker_seen:
            return
        with self._lock:
            if seen == self._marker_seen or self.following:
                return
            self._marker_seen = seen
            marker = self._read_marker(stat_key=seen)
            folder = _marker_folder(marker) if marker else None
            if not folder or folder == self.current.folder:
                return
            if _replacing(marker):
                # The master replaces this worker by one forked with the new bundle: loading
                # it here too would only slow this worker's requests. Look again next poll, and
                # follow after all if the replacement has not come in time.
                self._marker_seen = None
                return
            self._follower = threading.Thread(
                target=self._follow, args=(folder,), name="bundle-follower", daemon=True
            )
            self._follower.start()

    def wait_for_follower(self, timeout: float | None = None) -> None:
        """Block until a background load started by :meth:`poll` has finished (tests, tools)."""
        follower = self._follower
        if follower is not None:
            follower.join(timeout)

    def _follow(self, folder: str) -> None:
        try:
            loaded = self._load(folder)
        except BundleError as exc:
            self.metrics.reloads.labels("rejected").inc()
            self._fail(f"reload marker names {folder!r}, refused: {exc}")
            return
        with self._lock:
            self._swap(loaded)
        log.info("followed the reload marker to bundle %s (folder %s)", loaded.version, folder)

    # ---- admin ---------------------------------------------------------------------------------
    def reload(self, version: str | None = None) -> tuple[LoadedModel, str | None]:
        """Load ``version`` (a bundle folder, or the one ``current`` names), swap it in, tell
        the other workers.

        Raises BundleMissingError or BundleError; the bundle being served is then unchanged and
        the refusal is logged with its reason.
        """
        with self._lock:
            previous = self.current.version if self.current else None
            try:
                loaded = self._load(version)
            except BundleError as exc:
                self.metrics.reloads.labels("rejected").inc()
                log.warning(
                    "reload to %s refused, still serving %s: %s",
                    repr(version) if version else "the bundle `current` names",
                    previous,
                    exc,
                )
                raise
            self._swap(loaded)
            if self._marker is not None:
                self._write_marker(loaded)
            return loaded, previous

    # ---- internals ---------------------------------------------------------------------------
    def _load(self, folder: str | None) -> LoadedModel:
        """Verify and load a bundle; ``folder`` None means the one ``current`` names.

        When the master preloaded that very bundle (same folder, same manifest file), a forked
        worker already holds it, verified by the master's load: it is taken as it is.
        """
        inherited = _inherited(self.settings, folder)
        if inherited is not None:
            self._schemas.setdefault(inherited.version, inherited.schemas)
            return inherited
        return load_model(self.settings, folder, self._schemas)

    def _swap(self, loaded: LoadedModel, *, initial: bool = False) -> None:
        previous = self.current.version if self.current else None
        # One reference assignment: requests already running keep the model they took.
        self.current = loaded
        self.last_error = None
        self.metrics.serving(loaded.version, previous)
        if not initial or previous is not None:
            self.metrics.reloads.labels("loaded").inc()
        self._publish()
        status = loaded.bundle.compiled_status
        control = loaded.bundle.compiled_control_status
        log.info(
            "serving bundle %s (previous: %s)%s%s",
            loaded.version,
            previous,
            "" if status is None else f"; campaign probabilities: {status.describe()}",
            "" if control is None else f"; without the campaign: {control.describe()}",
        )

    def _fail(self, message: str) -> None:
        if message != self.last_error:
            # Log each distinct failure once, not once per poll.
            log.error("bundle not loaded: %s", message)
            self._publish()
        self.last_error = message

    def _publish(self) -> None:
        if self.roster is not None:
            loaded = self.current
            self.roster.publish(
                os.getpid(),
                ready=loaded is not None,
                version=loaded.version if loaded else None,
                folder=loaded.folder if loaded else None,
            )

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

    def _write_marker(self, loaded: LoadedModel, *, exclusive: bool = False) -> None:
        """Name ``loaded``'s bundle in the marker, atomically (temporary file, then rename)."""
        ok = write_marker(Path(self._marker), loaded.folder, loaded.version, exclusive=exclusive)
        if not ok:
            return
        try:
            st = os.stat(self._marker)
        except OSError:
            return
        self._marker_seen = (st.st_ino, st.st_mtime_ns, st.st_size)
        if exclusive:
            # Another worker may have won the race with a different choice: follow it.
            self._next_poll = 0.0
            self._marker_seen = None


#: how long a worker leaves a roll-out to the master's replacements before loading it itself
REPLACE_GRACE_SECONDS = 60.0


def _replacing(marker: dict[str, Any]) -> bool:
    """True while a marker the master wrote says it replaces the workers itself (and is recent)."""
    if not marker.get("replace"):
        return False
    written = marker.get("written_at")
    return isinstance(written, (int, float)) and time.time() - written < REPLACE_GRACE_SECONDS


def _marker_folder(marker: dict[str, Any]) -> str | None:
    """The bundle folder a marker names (markers written before folders were recorded: version)."""
    folder = marker.get("folder") or marker.get("version")
    return folder if isinstance(folder, str) and folder else None


def trial_load(settings: Settings) -> LoadedModel:
    """Verify and load the bundle ``settings`` select, exactly as a worker would, and return it.

    The master runs this in a separate process (a fork of itself, or ``python -m api.model``
    when it has not imported the model libraries) before a SIGHUP roll-out, so a bundle no
    worker could load never reaches the reload marker.
    """
    return load_model(settings, settings.MODEL_VERSION)


def _main() -> int:
    """``python -m api.model``: trial-load the selected bundle; print one JSON line about it."""
    try:
        loaded = trial_load(Settings.load())
    except BundleError as exc:
        print(orjson.dumps({"ok": False, "error": str(exc)}).decode(), flush=True)
        return 1
    print(
        orjson.dumps({"ok": True, "folder": loaded.folder, "version": loaded.version}).decode(),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
