"""Features by customer id: stored records in a real Redis complete requests that name a customer."""

from __future__ import annotations

import json
import socket

import pytest
import redis

from scoring.online import (
    CAMPAIGNS,
    MODEL_VERSION,
    SCORED_AT,
    SEGMENT_ID,
    SEGMENT_NAME,
    encode_record,
    record_key,
)

FEATURES = {
    "total_spend": 1250.0,
    "order_count": 14,
    "days_since_last_purchase": 12,
    "unique_products": 9,
    "discount_usage": 0.2,
    "return_rate": 0.05,
    "mobile_usage": 0.8,
}


@pytest.fixture
def redis_client(redis_url):
    """A client of the test Redis (the test command starts one)."""
    client = redis.Redis.from_url(redis_url, socket_timeout=2)
    client.ping()
    yield client
    client.close()


@pytest.fixture
def store_app(make_app, redis_url, redis_prefix):
    """The service with a feature store under this test's key prefix."""
    return make_app(REDIS_URL=redis_url, CACHE_PREFIX=redis_prefix)


@pytest.fixture
def put(redis_client, redis_prefix, tiny_bundle):
    """``put(customer_id, fields)``: store a raw hash for the customer (as the loaders do)."""

    def write(customer_id, fields: dict) -> str:
        key = record_key(redis_prefix, tiny_bundle.schema, customer_id)
        redis_client.delete(key)
        redis_client.hset(key, mapping=fields)
        return key

    return write


def _store(put, tiny_bundle, customer_id, features=FEATURES, **extra):
    return put(
        customer_id, {**encode_record(features, tiny_bundle.schema, updated_at=1.0), **extra}
    )


@pytest.fixture
def closed_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _without_volatile(body: dict) -> dict:
    return {k: v for k, v in body.items() if k not in ("customer_id", "last_scored")}


@pytest.mark.parametrize("endpoint", ["/predict-segment", "/recommend"])
def test_id_alone_answers_as_the_stored_features_would(
    store_app, put, tiny_bundle, scoring_headers, endpoint
):
    _store(put, tiny_bundle, "c-1")
    client = store_app.test_client()
    by_id = client.post(endpoint, json={"customer_id": "c-1"}, headers=scoring_headers)
    by_features = client.post(
        endpoint, json={"customer_id": "c-1", **FEATURES}, headers=scoring_headers
    )
    assert by_id.status_code == 200, by_id.get_json()
    assert by_id.get_json()["customer_id"] == "c-1"
    assert _without_volatile(by_id.get_json()) == _without_volatile(by_features.get_json())


def test_request_features_override_stored_ones(store_app, put, tiny_bundle, scoring_headers):
    dormant = {**FEATURES, "total_spend": 20.0, "order_count": 0, "days_since_last_purchase": 400}
    _store(put, tiny_bundle, "c-2", dormant)
    client = store_app.test_client()
    override = {"total_spend": 5000.0, "order_count": 60, "days_since_last_purchase": 1}
    by_id = client.post(
        "/predict-segment", json={"customer_id": "c-2", **override}, headers=scoring_headers
    )
    # total_spend is sent, but unique_products is not: the request still names a stored customer.
    expected = client.post(
        "/predict-segment",
        json={"customer_id": "c-2", **dormant, **override},
        headers=scoring_headers,
    )
    stored_only = client.post(
        "/predict-segment", json={"customer_id": "c-2"}, headers=scoring_headers
    )
    assert by_id.status_code == 200
    assert _without_volatile(by_id.get_json()) == _without_volatile(expected.get_json())
    assert by_id.get_json()["segment_id"] != stored_only.get_json()["segment_id"]


def test_null_in_the_request_keeps_the_stored_value(store_app, put, tiny_bundle, scoring_headers):
    _store(put, tiny_bundle, "c-3")
    client = store_app.test_client()
    with_null = client.post(
        "/predict-segment",
        json={"customer_id": "c-3", "mobile_usage": None},
        headers=scoring_headers,
    )
    stored = client.post("/predict-segment", json={"customer_id": "c-3"}, headers=scoring_headers)
    assert with_null.get_json()["distance"] == stored.get_json()["distance"]


def test_unknown_id_is_404_in_the_envelope(store_app, scoring_headers, read_metric):
    r = store_app.test_client().post(
        "/recommend", json={"customer_id": "nobody"}, headers=scoring_headers
    )
    assert r.status_code == 404
    assert r.get_json() == {
        "error": {
            "code": "customer_not_found",
            "message": "no stored features for customer 'nobody'",
        }
    }
    assert read_metric(store_app, "segsvc_feature_lookups_total", result="not_found") == 1


def test_integer_and_string_ids_name_the_same_customer(
    store_app, put, tiny_bundle, scoring_headers
):
    _store(put, tiny_bundle, 7)
    r = store_app.test_client().post(
        "/predict-segment", json={"customer_id": "7"}, headers=scoring_headers
    )
    assert r.status_code == 200


@pytest.mark.parametrize(
    ("change", "field", "fragment"),
    [
        ({"old_feature": "3.5"}, "old_feature", "not an input"),
        ({"total_spend": "lots"}, "total_spend", "not a number"),
        ({"total_spend": "-5.0"}, "total_spend", "greater than or equal to 0"),
        ({"discount_usage": "1.5"}, "discount_usage", "less than or equal to 1"),
        ({"order_count": None}, "order_count", "Missing data"),
    ],
)
def test_stale_record_is_409_naming_the_fields(
    store_app, put, tiny_bundle, scoring_headers, read_metric, change, field, fragment
):
    fields = encode_record(FEATURES, tiny_bundle.schema)
    for name, value in change.items():
        if value is None:
            fields.pop(name)
        else:
            fields[name] = value
    put("c-stale", fields)
    r = store_app.test_client().post(
        "/predict-segment", json={"customer_id": "c-stale"}, headers=scoring_headers
    )
    assert r.status_code == 409
    error = r.get_json()["error"]
    assert error["code"] == "stale_features"
    assert list(error["fields"]) == [field]
    assert fragment in error["fields"][field][0]
    assert read_metric(store_app, "segsvc_feature_lookups_total", result="stale") == 1


def test_a_stale_field_the_request_overrides_is_no_conflict(
    store_app, put, tiny_bundle, scoring_headers
):
    put("c-fix", {**encode_record(FEATURES, tiny_bundle.schema), "total_spend": "-5"})
    r = store_app.test_client().post(
        "/predict-segment",
        json={"customer_id": "c-fix", "total_spend": 100.0},
        headers=scoring_headers,
    )
    assert r.status_code == 200


def test_bad_fields_in_the_request_are_still_422(store_app, put, tiny_bundle, scoring_headers):
    _store(put, tiny_bundle, "c-4")
    r = store_app.test_client().post(
        "/recommend",
        json={"customer_id": "c-4", "total_spend": "12", "top_k": 0},
        headers=scoring_headers,
    )
    assert r.status_code == 422
    assert set(r.get_json()["error"]["fields"]) == {"total_spend", "top_k"}


def test_recommend_by_id_applies_the_options(store_app, put, tiny_bundle, scoring_headers):
    _store(put, tiny_bundle, "c-5")
    r = store_app.test_client().post(
        "/recommend", json={"customer_id": "c-5", "top_k": 1}, headers=scoring_headers
    )
    assert r.status_code == 200
    assert len(r.get_json()["campaigns"]) == 1


def test_last_scored_comes_back_when_the_stream_job_wrote_it(
    store_app, put, tiny_bundle, scoring_headers
):
    _store(
        put,
        tiny_bundle,
        "c-6",
        **{
            SEGMENT_ID: "2",
            SEGMENT_NAME: "Dormant",
            CAMPAIGNS: json.dumps(["win_back", "cashback"]),
            MODEL_VERSION: "v1-tiny",
            SCORED_AT: "1700000000.5",
        },
    )
    client = store_app.test_client()
    body = client.post(
        "/predict-segment", json={"customer_id": "c-6"}, headers=scoring_headers
    ).get_json()
    assert body["last_scored"] == {
        "segment_id": 2,
        "segment_name": "Dormant",
        "campaigns": ["win_back", "cashback"],
        "model_version": "v1-tiny",
        "scored_at": 1700000000.5,
    }
    # A request that carries its features does not read the store: nothing to report.
    full = client.post(
        "/predict-segment", json={"customer_id": "c-6", **FEATURES}, headers=scoring_headers
    ).get_json()
    assert "last_scored" not in full


def test_batch_of_ids_answers_item_by_item(store_app, put, tiny_bundle, scoring_headers):
    _store(put, tiny_bundle, "b-1")
    put("b-stale", {"total_spend": "x"})
    _store(put, tiny_bundle, "b-3", {**FEATURES, "total_spend": 3.0})
    client = store_app.test_client()
    customers = [
        {"customer_id": "b-1"},
        {"customer_id": "b-missing"},
        {"customer_id": "b-stale"},
        {"customer_id": "b-full", **FEATURES},
        {"customer_id": "b-3", "total_spend": "bad"},
        {"order_count": 3},
        {"customer_id": "b-3"},
    ]
    r = client.post(
        "/recommend", json={"customers": customers, "top_k": 2}, headers=scoring_headers
    )
    assert r.status_code == 200
    results = r.get_json()["results"]
    assert results[0]["customer_id"] == "b-1" and len(results[0]["campaigns"]) <= 2
    assert results[1]["error"]["code"] == "customer_not_found"
    assert results[2]["error"]["code"] == "stale_features"
    assert set(results[2]["error"]["fields"]) == {"total_spend"}
    assert results[3]["customer_id"] == "b-full"
    assert results[4]["error"]["code"] == "validation_error"
    assert results[5]["error"]["code"] == "validation_error"  # no id: must carry its features
    # Batch and single answers agree (to rounding: the batch path is vectorised).
    for item, body in ((results[6], {"customer_id": "b-3"}), (results[0], {**customers[3]})):
        one = client.post("/recommend", json={**body, "top_k": 2}, headers=scoring_headers)
        one = one.get_json()
        assert item["segment_id"] == one["segment_id"]
        assert item["distance"] == pytest.approx(one["distance"], rel=1e-12)
        assert [c["campaign_id"] for c in item["campaigns"]] == [
            c["campaign_id"] for c in one["campaigns"]
        ]


def test_redis_down_is_503_with_retry_after_and_features_still_work(
    make_app, closed_port, scoring_headers, read_metric
):
    app = make_app(REDIS_URL=f"redis://127.0.0.1:{closed_port}/0", REDIS_TIMEOUT_MS=50)
    client = app.test_client()
    for endpoint in ("/predict-segment", "/recommend"):
        r = client.post(endpoint, json={"customer_id": "c-1"}, headers=scoring_headers)
        assert r.status_code == 503
        assert r.get_json()["error"]["code"] == "feature_store_unavailable"
        assert int(r.headers["Retry-After"]) >= 1
        ok = client.post(endpoint, json={"customer_id": "c-1", **FEATURES}, headers=scoring_headers)
        assert ok.status_code == 200
    batch = client.post(
        "/predict-segment",
        json={"customers": [{"customer_id": "c-1"}, {"customer_id": "c-2", **FEATURES}]},
        headers=scoring_headers,
    )
    assert batch.status_code == 200
    assert int(batch.headers["Retry-After"]) >= 1
    results = batch.get_json()["results"]
    assert results[0]["error"]["code"] == "feature_store_unavailable"
    assert results[1]["customer_id"] == "c-2"
    assert read_metric(app, "segsvc_feature_lookups_total", result="unavailable") == 3


def test_without_redis_a_missing_feature_is_still_422(client, scoring_headers):
    r = client.post("/predict-segment", json={"customer_id": "c-1"}, headers=scoring_headers)
    assert r.status_code == 422
    assert "total_spend" in r.get_json()["error"]["fields"]


def test_schema_change_reads_other_keys(tiny_bundle):
    from dataclasses import replace

    from scoring.online import schema_id

    schema = tiny_bundle.schema
    retrained = replace(
        schema, inputs=tuple(replace(f, median=f.median + 1) for f in schema.inputs)
    )
    other = replace(schema, inputs=schema.inputs[:-1])
    assert schema_id(retrained) == schema_id(schema)
    assert schema_id(other) != schema_id(schema)


def test_metrics_expose_the_stream_jobs_counters(store_app, redis_client, redis_prefix):
    from prometheus_client.parser import text_string_to_metric_families

    from scoring.online import counters_key

    redis_client.hset(
        counters_key(redis_prefix),
        mapping={
            "updates": 12,
            "segment_changes": 3,
            "dead_letters": 2,
            "dead_letters:bad_json": 1,
            "dead_letters:late": 1,
        },
    )
    text = store_app.test_client().get("/metrics").get_data(as_text=True)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("segsvc_stream_segment_changes_total", ())] == 3
    assert samples[("segsvc_stream_updates_total", ())] == 12
    assert samples[("segsvc_stream_dead_letters_total", (("reason", "late"),))] == 1
    assert samples[("segsvc_stream_dead_letters_total", (("reason", "bad_json"),))] == 1


def test_metrics_without_a_stream_job_have_no_stream_counters(store_app):
    text = store_app.test_client().get("/metrics").get_data(as_text=True)
    assert "segsvc_stream_" not in text


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"customer_id": "c-1", "top_k": 0}, "top_k"),
        ({"customer_id": "c-1", "channel": "fax"}, "channel"),
        ({"customer_id": "x" * 129}, "customer_id"),
        ({"customer_id": True}, "customer_id"),
    ],
)
def test_an_id_alone_with_bad_options_is_422(
    store_app, put, tiny_bundle, scoring_headers, body, field
):
    _store(put, tiny_bundle, "c-1")
    r = store_app.test_client().post("/recommend", json=body, headers=scoring_headers)
    assert r.status_code == 422
    assert field in r.get_json()["error"]["fields"]


def test_compact_answer_refused_for_items_naming_a_stored_customer(
    store_app, put, tiny_bundle, scoring_headers
):
    # the stored record's last scoring has no place in the compact tables: 422 naming the option
    _store(put, tiny_bundle, "c-9")
    body = {"customers": [{"customer_id": "c-9"}, FEATURES], "answer": "compact"}
    r = store_app.test_client().post("/recommend", json=body, headers=scoring_headers)
    assert r.status_code == 422, r.get_json()
    assert "stored customer" in r.get_json()["error"]["fields"]["answer"][0]


def test_a_batch_looks_up_only_items_that_name_a_stored_customer(
    store_app, put, tiny_bundle, scoring_headers, monkeypatch
):
    # items the column check accepts carry every required input: no store look-up for them,
    # so a batch without id-only items never reaches complete_batch; one with them answers as
    # the item-by-item path does
    from api import views

    _store(put, tiny_bundle, "s-1")
    looked_up = []
    real = views.complete_batch

    def spy(store, schemas, schema, items):
        looked_up.append(len(items))
        return real(store, schemas, schema, items)

    monkeypatch.setattr(views, "complete_batch", spy)
    client = store_app.test_client()
    plain = [{"customer_id": "p-1", **FEATURES}, {**FEATURES}, {"order_count": "bad"}]
    for answer in ("full", "compact"):
        r = client.post(
            "/recommend", json={"customers": plain, "answer": answer}, headers=scoring_headers
        )
        assert r.status_code == 200
        assert r.get_json()["results"][2]["error"]["code"] == "validation_error"
    assert looked_up == []
    r = client.post(
        "/recommend", json={"customers": [*plain, {"customer_id": "s-1"}]}, headers=scoring_headers
    )
    assert r.status_code == 200 and looked_up == [4]
    results = r.get_json()["results"]
    assert results[3]["customer_id"] == "s-1" and "segment_id" in results[3]
