"""/admin/reload: good bundles swap in (in every worker), bad ones are refused, old one serves on."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest

from api.extensions import get_services
from api.fleet import Roster
from scoring.bundle import load_current, set_current, write_bundle


def _add_version(root: Path, version: str, *, make_current: bool = False) -> Path:
    """Write a copy of the current bundle under a new version name."""
    bundle = load_current(root)
    return write_bundle(bundle, root, version=version, make_current=make_current)


def _version(client) -> str:
    return client.get("/version").get_json()["model_version"]


def test_reload_current_and_named_version(
    fresh_bundle_root, make_app, admin_headers, scoring_headers, demo_request
):
    client = make_app(MODEL_ROOT=str(fresh_bundle_root)).test_client()
    assert _version(client) == "v1"
    _add_version(fresh_bundle_root, "v2", make_current=True)
    assert _version(client) == "v1"  # nothing changes until asked

    r = client.post("/admin/reload", json={}, headers=admin_headers)
    assert r.status_code == 200
    assert r.get_json() == {"model_version": "v2", "previous_version": "v1", "scope": "this_worker"}
    assert _version(client) == "v2"
    scored = client.post("/predict-segment", json=demo_request, headers=scoring_headers)
    assert scored.get_json()["model_version"] == "v2"

    r = client.post("/admin/reload", json={"version": "v1"}, headers=admin_headers)
    assert r.status_code == 200 and r.get_json()["model_version"] == "v1"
    assert _version(client) == "v1"


def test_tampered_bundle_is_refused_and_old_one_keeps_serving(
    fresh_bundle_root, make_app, admin_headers, scoring_headers, demo_request
):
    client = make_app(MODEL_ROOT=str(fresh_bundle_root)).test_client()
    path = _add_version(fresh_bundle_root, "v2-tampered")
    profiles = path / "profiles.json"
    profiles.write_text(profiles.read_text().replace('"size"', '"size" ', 1))

    r = client.post("/admin/reload", json={"version": "v2-tampered"}, headers=admin_headers)
    assert r.status_code == 409
    error = r.get_json()["error"]
    assert error["code"] == "bundle_rejected"
    assert "SHA-256" in error["message"]
    assert str(fresh_bundle_root) not in error["message"]
    assert _version(client) == "v1"
    assert (
        client.post("/predict-segment", json=demo_request, headers=scoring_headers).status_code
        == 200
    )

    # the same through `current`
    set_current(fresh_bundle_root, "v2-tampered")
    assert client.post("/admin/reload", json={}, headers=admin_headers).status_code == 409
    assert _version(client) == "v1"


def test_unsigned_bundle_is_refused_when_a_key_is_configured(
    fresh_bundle_root, make_app, admin_headers
):
    client = make_app(MODEL_ROOT=str(fresh_bundle_root)).test_client()
    keyed = make_app(MODEL_ROOT=str(fresh_bundle_root), BUNDLE_HMAC_KEY="k" * 32).test_client()
    assert keyed.get("/readyz").status_code == 503  # the unsigned v1 is not served
    assert client.get("/readyz").status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"version": "does-not-exist"}, 404, "bundle_not_found"),
        ({"version": "../etc"}, 422, "validation_error"),
        ({"version": ".hidden"}, 422, "validation_error"),
        ({"version": 3}, 422, "validation_error"),
        ({"other": 1}, 422, "validation_error"),
    ],
)
def test_reload_bad_requests(fresh_bundle_root, make_app, admin_headers, body, status, code):
    client = make_app(MODEL_ROOT=str(fresh_bundle_root)).test_client()
    r = client.post("/admin/reload", json=body, headers=admin_headers)
    assert r.status_code == status
    assert r.get_json()["error"]["code"] == code
    assert _version(client) == "v1"


def _followed(app) -> str:
    """The version ``app`` serves once it has followed the marker (a background load)."""
    client = app.test_client()
    _version(client)  # the request that notices the marker changed
    get_services(app).model.wait_for_follower(timeout=60)
    return _version(client)


def test_reload_reaches_every_worker_through_the_marker(
    fresh_bundle_root, tmp_path_factory, make_app, admin_headers
):
    marker = tmp_path_factory.mktemp("run") / "reload.json"
    settings = {
        "MODEL_ROOT": str(fresh_bundle_root),
        "RELOAD_MARKER": str(marker),
        "RELOAD_POLL_SECONDS": 0,
    }
    first_app, second_app = make_app(**settings), make_app(**settings)
    first = first_app.test_client()
    assert marker.is_file()
    _add_version(fresh_bundle_root, "v2", make_current=True)

    r = first.post("/admin/reload", json={}, headers=admin_headers)
    assert r.get_json()["scope"] == "all_workers"
    assert _version(first) == "v2"
    assert _followed(second_app) == "v2"

    # A worker started later (recycling) serves what the others serve, even when `current`
    # has moved since.
    _add_version(fresh_bundle_root, "v3", make_current=True)
    third = make_app(**settings).test_client()
    assert _version(third) == "v2"

    # A marker naming a bad bundle is refused by the followers; they keep serving.
    bad = _add_version(fresh_bundle_root, "v4-bad")
    (bad / "campaigns.json").write_text("[]\n")
    assert (
        first.post("/admin/reload", json={"version": "v4-bad"}, headers=admin_headers).status_code
        == 409
    )
    assert _followed(second_app) == "v2"


def test_a_folder_named_unlike_its_version_reaches_every_worker(
    fresh_bundle_root, tmp_path_factory, make_app, admin_headers
):
    """Issue 11 (3): workers load by folder and report the manifest's version."""
    marker = tmp_path_factory.mktemp("run") / "reload.json"
    settings = {
        "MODEL_ROOT": str(fresh_bundle_root),
        "RELOAD_MARKER": str(marker),
        "RELOAD_POLL_SECONDS": 0,
    }
    first_app, second_app = make_app(**settings), make_app(**settings)
    written = _add_version(fresh_bundle_root, "v2")
    shutil.copytree(written, fresh_bundle_root / "renamed-copy")
    set_current(fresh_bundle_root, "renamed-copy")

    r = first_app.test_client().post("/admin/reload", json={}, headers=admin_headers)
    assert r.status_code == 200 and r.get_json()["model_version"] == "v2"
    assert json.loads(marker.read_bytes())["folder"] == "renamed-copy"
    assert _followed(second_app) == "v2"
    assert get_services(second_app).model.current.folder == "renamed-copy"
    # and a worker started later loads the same folder
    assert _version(make_app(**settings).test_client()) == "v2"


def test_a_refused_reload_is_logged_with_its_reason(
    fresh_bundle_root, make_app, admin_headers, caplog
):
    """Issue 11 (6): the server log says which reload was refused and why."""
    client = make_app(MODEL_ROOT=str(fresh_bundle_root)).test_client()
    bad = _add_version(fresh_bundle_root, "v2-bad")
    (bad / "profiles.json").write_text("[]\n")
    with caplog.at_level(logging.WARNING, logger="api.model"):
        r = client.post("/admin/reload", json={"version": "v2-bad"}, headers=admin_headers)
    assert r.status_code == 409
    refused = [rec.getMessage() for rec in caplog.records if "refused" in rec.getMessage()]
    assert refused and "v2-bad" in refused[0] and "SHA-256" in refused[0]
    assert "still serving v1" in refused[0]


def test_readyz_and_version_describe_every_worker(fresh_bundle_root, tmp_path_factory, make_app):
    """Issue 11 (8): one answer shows the state of every worker in the roster."""
    run = tmp_path_factory.mktemp("run")
    settings = {
        "MODEL_ROOT": str(fresh_bundle_root),
        "RELOAD_MARKER": str(run / "reload.json"),
        "WORKER_ROSTER": str(run / "workers"),
    }
    app = make_app(**settings)
    # a second worker of the same server that could not load its bundle
    Roster(run / "workers").publish(os.getpid() + 100_000, ready=False, version=None, folder=None)
    body = app.test_client().get("/readyz").get_json()
    assert body["ready"] is True and body["workers_ready"] == 1
    assert [w["ready"] for w in body["workers"]] == [True, False]
    assert body["workers"][0] == {"pid": os.getpid(), "ready": True, "model_version": "v1"}
    assert app.test_client().get("/version").get_json()["workers"] == {"v1": 1}
