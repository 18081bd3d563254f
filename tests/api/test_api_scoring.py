"""/predict-segment and /recommend through the test client: contract, ranking, batches."""

from __future__ import annotations

import numpy as np
import pytest

from api.extensions import get_services
from api.schemas import (
    PredictSegmentResponse,
    RecommendBatchResponse,
    RecommendResponse,
    SegmentBatchResponse,
)


def test_predict_segment_answer_matches_its_schema(client, scoring_headers, demo_request, services):
    r = client.post("/predict-segment", json=demo_request, headers=scoring_headers)
    assert r.status_code == 200
    body = r.get_json()
    PredictSegmentResponse().load(body)  # raises on a missing, extra or mistyped field
    engine = services.model.current.engine
    assert body["customer_id"] == demo_request["customer_id"]
    assert body["model_version"] == engine.version
    assert body["segment_name"] == engine.segment_names[body["segment_id"]]
    profile = engine.profile(body["segment_id"])
    assert body["recommended_campaigns"] == profile["default_campaigns"]
    assert body["segment_stats"] == {
        "size": profile["size"],
        "share": profile["share"],
        "mean": profile["mean"],
    }
    assert body["distance"] >= 0


def test_customer_id_is_optional_and_may_be_an_integer(client, scoring_headers, demo_request):
    without = {k: v for k, v in demo_request.items() if k != "customer_id"}
    body = client.post("/predict-segment", json=without, headers=scoring_headers).get_json()
    assert "customer_id" not in body
    body = client.post(
        "/predict-segment", json={**without, "customer_id": 17}, headers=scoring_headers
    ).get_json()
    assert body["customer_id"] == 17


def test_optional_input_may_be_missing_or_null(client, scoring_headers, demo_request, services):
    optional = [s.name for s in services.model.current.engine.schema.inputs if not s.required]
    assert optional, "the tiny bundle has an optional input (mobile_usage)"
    name = optional[0]
    absent = {k: v for k, v in demo_request.items() if k != name}
    a = client.post("/predict-segment", json=absent, headers=scoring_headers)
    b = client.post("/predict-segment", json={**demo_request, name: None}, headers=scoring_headers)
    assert a.status_code == b.status_code == 200
    assert a.get_json()["segment_id"] == b.get_json()["segment_id"]


def test_zero_orders_are_handled(client, scoring_headers, demo_request):
    body = {**demo_request, "order_count": 0, "total_spend": 0.0}
    r = client.post("/recommend", json=body, headers=scoring_headers)
    assert r.status_code == 200
    RecommendResponse().load(r.get_json())


def test_atypical_customer_is_flagged(client, scoring_headers, demo_request):
    extreme = {**demo_request, "total_spend": 1e9, "order_count": 1, "unique_products": 5000}
    body = client.post("/predict-segment", json=extreme, headers=scoring_headers).get_json()
    assert body["atypical"] is True
    normal = client.post("/predict-segment", json=demo_request, headers=scoring_headers).get_json()
    assert normal["distance"] < body["distance"]


def test_recommend_ranks_eligible_campaigns_by_expected_value(
    client, scoring_headers, demo_request, services
):
    r = client.post("/recommend", json=demo_request, headers=scoring_headers)
    assert r.status_code == 200
    body = r.get_json()
    RecommendResponse().load(body)
    engine = services.model.current.engine
    segment = body["segment_name"]
    campaigns = body["campaigns"]
    assert campaigns
    values = [c["expected_value"] for c in campaigns]
    assert values == sorted(values, reverse=True)
    pool = {c.id: c for c in engine.campaigns}
    for c in campaigns:
        eligible = pool[c["campaign_id"]].eligible_segments
        assert eligible is None or segment in eligible
        assert 0 < c["probability"] < 1
        assert c["expected_value"] == pytest.approx(c["probability"] * c["value"], rel=1e-12)
        assert c["eligibility"]
        assert "contributions" not in c
    expected = {
        cid
        for cid, c in pool.items()
        if c.eligible_segments in (None,) or segment in c.eligible_segments
    }
    assert {c["campaign_id"] for c in campaigns} == expected


def test_recommend_options(client, scoring_headers, demo_request, services):
    engine = services.model.current.engine
    full = client.post("/recommend", json=demo_request, headers=scoring_headers).get_json()
    ids = [c["campaign_id"] for c in full["campaigns"]]

    top = client.post("/recommend", json={**demo_request, "top_k": 1}, headers=scoring_headers)
    assert [c["campaign_id"] for c in top.get_json()["campaigns"]] == ids[:1]

    excluded = client.post(
        "/recommend",
        json={**demo_request, "exclude": [ids[0], "retired_x"]},
        headers=scoring_headers,
    ).get_json()
    assert [c["campaign_id"] for c in excluded["campaigns"]] == ids[1:]

    for channel in sorted(engine.channels):
        body = client.post(
            "/recommend", json={**demo_request, "channel": channel}, headers=scoring_headers
        ).get_json()
        assert all(c["channel"] in (channel, "any") for c in body["campaigns"])
        assert [c["campaign_id"] for c in body["campaigns"]] == [
            i
            for i in ids
            if engine.campaigns[engine.campaign_ids.index(i)].channel in (channel, "any")
        ]

    explained = client.post(
        "/recommend", json={**demo_request, "explain": True, "top_k": 2}, headers=scoring_headers
    ).get_json()
    RecommendResponse().load(explained)
    assert len(explained["campaigns"]) == 2
    for c in explained["campaigns"]:
        assert c["contributions"]
        names = engine.schema.response_model_columns
        assert all(x["feature"] in names for x in c["contributions"])


@pytest.mark.parametrize("method", ["path", "treeshap"])
def test_explain_method_setting_picks_the_contributions(
    make_app, scoring_headers, demo_request, method
):
    app = make_app(EXPLAIN_METHOD=method)
    engine = get_services(app).model.current.engine
    body = {**demo_request, "explain": True, "top_k": 2}
    single = app.test_client().post("/recommend", json=body, headers=scoring_headers).get_json()
    RecommendResponse().load(single)
    assert single["explain_method"] == method
    # the contributions are the method's own: recompute them for the first offer
    record = {k: v for k, v in demo_request.items() if k != "customer_id"}
    batch = engine.batch_from_records([record])
    seg = engine.assign(batch).segment
    j = engine.campaign_ids.index(single["campaigns"][0]["campaign_id"])
    rows = engine.model_rows(batch, seg, np.array([0]), np.array([j]))
    values = engine.model.contributions(rows, method)[0]
    columns = engine.schema.response_model_columns
    for x in single["campaigns"][0]["contributions"]:
        assert x["contribution"] == values[columns.index(x["feature"])]
    # a batch of one answers the same
    batch_body = {"customers": [demo_request], "explain": True, "top_k": 2}
    answer = app.test_client().post("/recommend", json=batch_body, headers=scoring_headers)
    item = answer.get_json()["results"][0]
    assert item["campaigns"] == single["campaigns"] and item["explain_method"] == method


@pytest.mark.parametrize("endpoint", ["/predict-segment", "/recommend"])
def test_batch_answers_in_order_with_a_bad_item(client, scoring_headers, demo_request, endpoint):
    good_a = {**demo_request, "customer_id": "a"}
    bad = {**demo_request, "customer_id": "b", "order_count": -5}
    good_c = {**demo_request, "customer_id": "c", "total_spend": 3.0, "order_count": 1}
    r = client.post(
        endpoint,
        json={"customers": [good_a, bad, good_c, "not an object"]},
        headers=scoring_headers,
    )
    assert r.status_code == 200
    body = r.get_json()
    schema = SegmentBatchResponse if endpoint == "/predict-segment" else RecommendBatchResponse
    schema().load(body)
    results = body["results"]
    assert len(results) == 4
    assert results[0]["customer_id"] == "a"
    assert results[1]["error"]["code"] == "validation_error"
    assert "order_count" in results[1]["error"]["fields"]
    assert results[2]["customer_id"] == "c"
    assert "error" in results[3]
    # a batch item scores exactly like the same customer sent alone
    alone = client.post(endpoint, json=good_c, headers=scoring_headers).get_json()
    alone.pop("model_version")
    assert results[2] == alone


def test_batch_options_apply_to_every_customer(client, scoring_headers, demo_request):
    customers = [demo_request, {**demo_request, "total_spend": 20.0, "order_count": 2}]
    body = client.post(
        "/recommend",
        json={"customers": customers, "top_k": 1, "explain": True},
        headers=scoring_headers,
    ).get_json()
    for item in body["results"]:
        assert len(item["campaigns"]) == 1
        assert "contributions" in item["campaigns"][0]


def test_all_bad_batch_still_answers_200(client, scoring_headers):
    r = client.post("/predict-segment", json={"customers": [{}, {"x": 1}]}, headers=scoring_headers)
    assert r.status_code == 200
    assert all("error" in item for item in r.get_json()["results"])


def test_recommend_without_response_model_is_409(tmp_path, make_app, scoring_headers, demo_request):
    from bundle_builder import build_bundle

    build_bundle(tmp_path, n=600, seed=3, version="seg-only", with_response_model=False)
    client = make_app(MODEL_ROOT=str(tmp_path)).test_client()
    r = client.post("/recommend", json=demo_request, headers=scoring_headers)
    assert r.status_code == 409
    assert r.get_json()["error"]["code"] == "no_response_model"
    assert (
        client.post("/predict-segment", json=demo_request, headers=scoring_headers).status_code
        == 200
    )


def test_no_bundle_means_not_ready(tmp_path, make_app, scoring_headers, demo_request):
    client = make_app(MODEL_ROOT=str(tmp_path)).test_client()
    assert client.get("/healthz").status_code == 200
    r = client.get("/readyz")
    assert r.status_code == 503
    assert r.get_json()["ready"] is False
    r = client.post("/predict-segment", json=demo_request, headers=scoring_headers)
    assert r.status_code == 503
    assert r.get_json()["error"]["code"] == "not_ready"


def test_service_becomes_ready_when_a_bundle_appears(
    tmp_path, make_app, scoring_headers, demo_request
):
    from bundle_builder import build_bundle

    client = make_app(MODEL_ROOT=str(tmp_path), RELOAD_POLL_SECONDS=0).test_client()
    assert client.get("/readyz").status_code == 503
    build_bundle(tmp_path, n=600, seed=4, version="late")
    assert client.get("/readyz").get_json() == {
        "ready": True,
        "model_version": "late",
        "redis": "disabled",
    }


def test_health_and_version(client, services):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json() == {
        "ready": True,
        "model_version": services.model.current.version,
        "redis": "disabled",
    }
    version = client.get("/version").get_json()
    bundle = services.model.current.bundle
    assert version["model_version"] == bundle.version
    assert version["k"] == bundle.n_segments
    assert version["segment_names"] == bundle.segment_names
    assert version["created_at"] == bundle.manifest["created_at"]
    assert version["app_version"]
    # the test bundle's response model is compiled, and the compiled trees serve
    assert version["propensity"].startswith("compiled trees (lleaves")


def test_bench_floor_only_when_enabled(make_app, scoring_headers):
    assert make_app().test_client().post("/bench/floor", json={}).status_code == 404
    client = make_app(BENCH_FLOOR="1").test_client()
    assert client.post("/bench/floor", json={"a": 1}).status_code == 401
    r = client.post("/bench/floor", json={"a": 1}, headers=scoring_headers)
    assert r.status_code == 200 and r.get_json() == {"ok": True}
    assert (
        client.post(
            "/bench/floor", data=b"{", headers=scoring_headers, content_type="application/json"
        ).status_code
        == 400
    )


def test_metrics_count_requests_segments_and_customers(
    client, app, scoring_headers, demo_request, read_metric
):
    client.post("/predict-segment", json=demo_request, headers=scoring_headers)
    body = client.post(
        "/recommend", json={"customers": [demo_request] * 3}, headers=scoring_headers
    ).get_json()
    client.post("/recommend", json={}, headers=scoring_headers)
    version = body["model_version"]
    segment = body["results"][0]["segment_name"]
    text = client.get("/metrics").get_data(as_text=True)
    assert "segsvc_http_request_duration_seconds_bucket" in text
    assert (
        read_metric(
            app, "segsvc_http_requests_total", endpoint="/recommend", method="POST", status="200"
        )
        == 1
    )
    assert (
        read_metric(
            app, "segsvc_http_requests_total", endpoint="/recommend", method="POST", status="422"
        )
        == 1
    )
    assert (
        read_metric(app, "segsvc_segment_assignments_total", model_version=version, segment=segment)
        == 4
    )
    assert read_metric(app, "segsvc_customers_scored_total", endpoint="recommend") == 3
    assert read_metric(app, "segsvc_bundle_loaded", model_version=version) == 1
