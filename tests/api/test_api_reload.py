"""/admin/reload: good bundles swap in (in every worker), bad ones are refused, old one serves on."""

from __future__ import annotations

from pathlib import Path

import pytest

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


def test_reload_reaches_every_worker_through_the_marker(
    fresh_bundle_root, tmp_path_factory, make_app, admin_headers
):
    marker = tmp_path_factory.mktemp("run") / "reload.json"
    settings = {
        "MODEL_ROOT": str(fresh_bundle_root),
        "RELOAD_MARKER": str(marker),
        "RELOAD_POLL_SECONDS": 0,
    }
    first = make_app(**settings).test_client()
    second = make_app(**settings).test_client()
    assert marker.is_file()
    _add_version(fresh_bundle_root, "v2", make_current=True)

    r = first.post("/admin/reload", json={}, headers=admin_headers)
    assert r.get_json()["scope"] == "all_workers"
    assert _version(first) == "v2"
    assert _version(second) == "v2"  # followed the marker on its next request

    # A worker started later (gunicorn's max_requests) serves what the others serve, even
    # when `current` has moved since.
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
    assert _version(second) == "v2"
