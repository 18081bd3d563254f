"""API keys: scoring and admin keys are separate, compared in constant time, never logged."""

from __future__ import annotations

import logging

import pytest

from api.auth import ADMIN, SCORING, KeyRing
from api.errors import Forbidden, Unauthorized

ENDPOINTS = ["/predict-segment", "/recommend"]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 401, "unauthorized"),
        ({"X-API-Key": ""}, 401, "unauthorized"),
        ({"X-API-Key": "wrong-key"}, 401, "unauthorized"),
        ({"X-API-Key": "test-scoring-key "}, 401, "unauthorized"),
        ({"X-API-Key": "test-admin-key"}, 403, "forbidden"),
    ],
    ids=["missing", "empty", "unknown", "near-miss", "admin-key"],
)
def test_scoring_needs_a_scoring_key(client, demo_request, endpoint, headers, status, code):
    r = client.post(endpoint, json=demo_request, headers=headers)
    assert r.status_code == status
    assert r.get_json()["error"]["code"] == code


def test_auth_is_checked_before_the_body(client):
    # An anonymous caller learns nothing about the body's validity.
    r = client.post("/predict-segment", data=b"{", content_type="application/json")
    assert r.status_code == 401


@pytest.mark.parametrize(
    ("headers", "status"),
    [({}, 401), ({"X-API-Key": "nope"}, 401), ({"X-API-Key": "test-scoring-key"}, 403)],
    ids=["missing", "unknown", "scoring-key"],
)
def test_admin_needs_an_admin_key(client, headers, status):
    r = client.post("/admin/reload", json={}, headers=headers)
    assert r.status_code == status
    assert "error" in r.get_json()


def test_health_endpoints_are_open(client):
    for path in ("/healthz", "/readyz", "/version", "/metrics", "/openapi.json"):
        assert client.get(path).status_code == 200, path


def test_without_api_keys_scoring_is_refused_with_a_warning(
    make_app, demo_request, scoring_headers, caplog
):
    with caplog.at_level(logging.WARNING):
        app = make_app(API_KEYS="")
    assert any("API_KEYS is empty" in rec.getMessage() for rec in caplog.records)
    r = app.test_client().post("/predict-segment", json=demo_request, headers=scoring_headers)
    assert r.status_code == 401


def test_several_keys_each_work(make_app, demo_request):
    client = make_app(API_KEYS="key-one,key-two").test_client()
    for key in ("key-one", "key-two"):
        r = client.post("/predict-segment", json=demo_request, headers={"X-API-Key": key})
        assert r.status_code == 200


def test_keys_never_reach_the_logs_or_responses(make_app, demo_request, caplog):
    with caplog.at_level(logging.DEBUG):
        app = make_app(API_KEYS="very-secret-scoring", ADMIN_API_KEYS="very-secret-admin")
        client = app.test_client()
        client.post("/predict-segment", json=demo_request, headers={"X-API-Key": "guess-123"})
        ok = client.post(
            "/predict-segment", json=demo_request, headers={"X-API-Key": "very-secret-scoring"}
        )
        denied = client.post("/admin/reload", json={}, headers={"X-API-Key": "very-secret-scoring"})
    logged = "\n".join(rec.getMessage() for rec in caplog.records)
    for secret in ("very-secret-scoring", "very-secret-admin", "guess-123"):
        assert secret not in logged
        assert secret not in ok.get_data(as_text=True)
        assert secret not in denied.get_data(as_text=True)
    from api.extensions import get_services

    assert "very-secret" not in repr(get_services(app).settings)


def test_keyring_kinds():
    ring = KeyRing(["s1-key"], ["a1-key"])
    assert ring.kind_of("s1-key") == SCORING
    assert ring.kind_of("a1-key") == ADMIN
    assert ring.kind_of("s1-ke") is None
    assert ring.kind_of(None) is None
    assert ring.kind_of("ünïcödé") is None
    with pytest.raises(Unauthorized):
        ring.require("x", SCORING)
    with pytest.raises(Forbidden):
        ring.require("a1-key", SCORING)
    ring.require("a1-key", ADMIN)
