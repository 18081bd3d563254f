"""The master's preloaded bundle: a forked worker takes it only when it is the bundle it would load.

In-process stand-in for the fork (the module global a worker inherits); tests/reliability runs
the real thing (a recycled worker is ready at once) under gunicorn.
"""

from __future__ import annotations

import json
import shutil
import time

import pytest

from api import model
from api.metrics import Metrics
from api.settings import Settings
from scoring.bundle import load_current, write_bundle


@pytest.fixture
def root(tiny_bundle_root, tmp_path):
    copy = tmp_path / "bundles"
    shutil.copytree(tiny_bundle_root, copy, symlinks=True)
    return copy


@pytest.fixture(autouse=True)
def _no_preload(monkeypatch):
    monkeypatch.setattr(model, "_preloaded", None)


def _settings(root, **extra):
    return Settings.load({"MODEL_ROOT": str(root), "MODEL_VERSION": "", **extra}, environ={})


def test_a_worker_serves_the_preloaded_bundle_without_loading_it(root):
    settings = _settings(root)
    preloaded = model.preload(settings)
    assert preloaded is not None and model.preloaded_folder() == preloaded.folder
    state = model.ModelState(settings, Metrics())
    state.start()
    assert state.current is preloaded  # the very object: nothing was loaded again
    assert state.current.schemas is preloaded.schemas


def test_another_bundle_or_a_replaced_manifest_is_loaded_afresh(root):
    settings = _settings(root)
    preloaded = model.preload(settings)
    other = write_bundle(load_current(root), root, version="v2-other", make_current=False).name
    state = model.ModelState(settings, Metrics())
    assert state._load(other) is not preloaded
    assert state._load(other).folder == "v2-other"
    # the preloaded folder itself rewritten in place (a new manifest file): not the same bundle
    manifest = preloaded.bundle.path / "manifest.json"
    text = manifest.read_bytes()
    manifest.unlink()
    manifest.write_bytes(text)
    assert state._load(None) is not preloaded


def test_a_bundle_that_fails_is_not_preloaded(root):
    settings = _settings(root)
    assert model.preload(settings, "no-such-bundle") is None
    assert model.preloaded_folder() is None


def test_a_worker_leaves_a_master_roll_out_to_its_replacement_then_follows_it_late(root, tmp_path):
    """A marker with ``replace`` (SIGHUP roll-out): no load in the serving worker, unless the
    replacement has not come within REPLACE_GRACE_SECONDS."""
    from api.fleet import write_marker

    marker = tmp_path / "reload.json"
    settings = _settings(root, RELOAD_MARKER=str(marker), RELOAD_POLL_SECONDS="0")
    state = model.ModelState(settings, Metrics())
    state.start()
    first = state.current.folder
    other = write_bundle(load_current(root), root, version="v3-roll", make_current=False).name
    assert write_marker(marker, other, "v3-roll", replace=True)
    state.poll()
    assert not state.following and state.current.folder == first
    # the master's replacement never came: once the marker is old enough, the worker follows
    stale = {"folder": other, "version": "v3-roll", "replace": True}
    stale["written_at"] = time.time() - model.REPLACE_GRACE_SECONDS - 1
    marker.write_text(json.dumps(stale))
    state.poll()
    state.wait_for_follower(60)
    assert state.current.folder == other
