"""/recommend with frequency caps and commit, control-group records, and POST /feedback.

Against a real Redis: caps are counted there and feedback goes to a real stream.
"""

from __future__ import annotations

import copy

import pytest
import redis

from scoring.bundle import load_current, write_bundle
from scoring.campaigns import Campaign
from tests.api.conftest import SCORING

EVENT = {
    "event_id": "evt-1",
    "customer_id": "c-42",
    "campaign_id": "cashback",
    "type": "conversion",
    "value": 18.0,
    "timestamp": "2026-12-02T10:00:00Z",
    "model_version": "v1",
}


@pytest.fixture(scope="module")
def capped_root(tmp_path_factory, tiny_bundle_root):
    """A bundle whose campaigns allow one send per customer a day; savings_plan holds out 99%."""
    root = tmp_path_factory.mktemp("capped")
    bundle = copy.copy(load_current(tiny_bundle_root))
    changes = {"savings_plan": {"holdout_share": 0.99}}
    bundle.campaigns = [
        Campaign(**{**c.to_dict(), "per_customer_day": 1, **changes.get(c.id, {})})
        for c in bundle.campaigns
    ]
    bundle.manifest = {k: v for k, v in bundle.manifest.items() if k in ("config", "metrics")}
    bundle.manifest["pool"] = {"salt": "test-salt", "holdout_share": 0.0}
    write_bundle(bundle, root, version="v-capped")
    return root


@pytest.fixture
def capped_client(make_app, capped_root, redis_url, redis_prefix):
    app = make_app(MODEL_ROOT=str(capped_root), REDIS_URL=redis_url, CACHE_PREFIX=redis_prefix)
    return app.test_client()


def _recommend(client, body):
    r = client.post("/recommend", json=body, headers=SCORING)
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def test_commit_counts_and_a_capped_campaign_gives_way_to_the_next(capped_client, demo_request):
    body = {**demo_request, "top_k": 1}
    first = _recommend(capped_client, {**body, "commit": True})
    assert first["caps"] == {"status": "ok", "capped": [], "committed": True}
    sent = first["campaigns"][0]["campaign_id"]
    # a read-only request now sees the cap, and counts nothing
    for _ in range(2):
        peek = _recommend(capped_client, body)
        assert sent in peek["caps"]["capped"] and peek["caps"]["committed"] is False
        assert peek["campaigns"] and peek["campaigns"][0]["campaign_id"] != sent
    second = _recommend(capped_client, {**body, "commit": True})
    assert second["campaigns"][0]["campaign_id"] not in (sent,)
    assert sent in second["caps"]["capped"]
    # another customer is not affected
    other = _recommend(capped_client, {**body, "customer_id": "c-43", "commit": True})
    assert other["campaigns"]


def test_a_read_only_batch_sees_the_same_caps_as_single_requests(capped_client, demo_request):
    ids = [f"b-{i}" for i in range(6)]
    for cid in ids[:3]:  # half of them have had their best offer today
        _recommend(capped_client, {**demo_request, "customer_id": cid, "top_k": 1, "commit": True})
    singles = [_recommend(capped_client, {**demo_request, "customer_id": cid}) for cid in ids]
    batch = capped_client.post(
        "/recommend",
        json={"customers": [{**demo_request, "customer_id": cid} for cid in ids]},
        headers=SCORING,
    ).get_json()["results"]
    for one, many in zip(singles, batch, strict=True):
        assert many["caps"] == one["caps"]
        assert [c["campaign_id"] for c in many["campaigns"]] == [
            c["campaign_id"] for c in one["campaigns"]
        ]
    assert all(one["caps"]["capped"] for one in singles[:3])
    assert not any(one["caps"]["capped"] for one in singles[3:])


def test_every_campaign_at_its_cap_is_an_empty_answer_with_a_reason(capped_client, demo_request):
    body = {**demo_request, "customer_id": "c-cap-all"}
    first = _recommend(capped_client, {**body, "commit": True})
    assert first["campaigns"]
    again = _recommend(capped_client, {**body, "commit": True})
    assert again["campaigns"] == []
    assert again["reason"] == "every campaign with a positive gain is at a frequency cap"


def test_a_committed_hold_out_is_recorded_in_the_feedback_stream(
    capped_client, demo_request, redis_url, redis_prefix
):
    held = None
    for i in range(30):
        answer = _recommend(
            capped_client, {**demo_request, "customer_id": f"h-{i}", "commit": True}
        )
        if "savings_plan" in answer["held_out"]:
            held = f"h-{i}"
            break
    assert held is not None, "no customer drew the 99% control group of savings_plan"
    entries = redis.Redis.from_url(redis_url).xrange(f"{redis_prefix}:feedback")
    events = [e[1][b"event"] for e in entries]
    assert any(b'"type":"holdout"' in e and held.encode() in e for e in events)


def test_redis_down_fails_closed_when_configured(make_app, capped_root, demo_request):
    app = make_app(
        MODEL_ROOT=str(capped_root), REDIS_URL="redis://127.0.0.1:1/0", CAPS_FAIL="closed"
    )
    client = app.test_client()
    answer = _recommend(client, {**demo_request, "commit": True})
    assert answer["campaigns"] == []
    assert answer["caps"]["status"] == "failed_closed"
    assert "frequency caps cannot be checked" in answer["reason"]
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'segsvc_frequency_caps_unavailable_total{status="failed_closed"} 1.0' in metrics
    opened = make_app(MODEL_ROOT=str(capped_root), REDIS_URL="redis://127.0.0.1:1/0")
    answer = _recommend(opened.test_client(), {**demo_request, "commit": True})
    assert answer["campaigns"] and answer["caps"]["status"] == "failed_open"


# ---- feedback ---------------------------------------------------------------------------------
@pytest.fixture
def feedback_client(make_app, redis_url, redis_prefix):
    return make_app(REDIS_URL=redis_url, CACHE_PREFIX=redis_prefix).test_client()


def test_feedback_events_are_appended_to_the_stream(feedback_client, redis_url, redis_prefix):
    one = feedback_client.post("/feedback", json=EVENT, headers=SCORING)
    assert one.status_code == 202 and one.get_json()["accepted"] == 1
    batch = [{**EVENT, "event_id": f"e{i}", "type": "impression"} for i in range(5)]
    many = feedback_client.post("/feedback", json={"events": batch}, headers=SCORING)
    assert many.status_code == 202 and len(many.get_json()["stream_ids"]) == 5
    assert redis.Redis.from_url(redis_url).xlen(f"{redis_prefix}:feedback") == 6


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**EVENT, "campaign_id": "no_such"}, "campaign_id"),
        ({"events": [EVENT, {**EVENT, "campaign_id": "gone"}]}, "events.1.campaign_id"),
        ({**EVENT, "type": "purchase"}, "type"),
        ({**EVENT, "timestamp": "yesterday"}, "timestamp"),
        ({k: v for k, v in EVENT.items() if k != "event_id"}, "event_id"),
        ({**EVENT, "extra": 1}, "extra"),
    ],
)
def test_bad_feedback_is_refused_naming_the_field(feedback_client, body, field):
    r = feedback_client.post("/feedback", json=body, headers=SCORING)
    assert r.status_code == 422
    fields = r.get_json()["error"]["fields"]
    flat = str(fields)
    assert field.split(".")[-1] in flat, fields
    if "no_such" in str(body) or "gone" in str(body):
        assert "unknown campaign" in flat


def test_feedback_limits_and_needs_redis(make_app, redis_url, redis_prefix):
    small = make_app(
        REDIS_URL=redis_url, CACHE_PREFIX=redis_prefix, MAX_BATCH_ITEMS=2, MAX_BODY_BYTES=2048
    ).test_client()
    events = [{**EVENT, "event_id": f"e{i}"} for i in range(3)]
    r = small.post("/feedback", json={"events": events}, headers=SCORING)
    assert r.status_code == 422 and "events" in r.get_json()["error"]["fields"]
    big = [{**EVENT, "event_id": f"e{i}"} for i in range(40)]
    assert small.post("/feedback", json={"events": big}, headers=SCORING).status_code == 413
    no_redis = make_app().test_client()
    r = no_redis.post("/feedback", json=EVENT, headers=SCORING)
    assert r.status_code == 503 and r.get_json()["error"]["code"] == "feedback_unavailable"
    assert no_redis.post("/feedback", json=EVENT).status_code == 401


def test_feedback_with_redis_down_is_a_503_to_retry_and_records_nothing(make_app):
    """Redis unreachable: 503 feedback_unavailable with Retry-After, never a silent 202."""
    client = make_app(REDIS_URL="redis://127.0.0.1:1/0").test_client()  # nothing on port 1
    events = [{**EVENT, "event_id": f"down-{i}"} for i in range(3)]
    r = client.post("/feedback", json={"events": events}, headers=SCORING)
    assert r.status_code == 503
    error = r.get_json()["error"]
    assert (
        error["code"] == "feedback_unavailable" and "send the same events again" in error["message"]
    )
    assert r.headers["Retry-After"] == "1"
    assert "Traceback" not in r.get_data(as_text=True)
    # no Redis configured at all: still 503, but no promise that a retry will help
    r = make_app().test_client().post("/feedback", json=EVENT, headers=SCORING)
    assert r.status_code == 503 and "Retry-After" not in r.headers
