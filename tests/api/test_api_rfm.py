"""The demo config trained with ``segmentation.method = "rfm"`` (and CLV-weighted gains), served:
/predict-segment and /recommend answer with the RFM group as the segment, one customer or a
batch, and their documented response schemas hold."""

from __future__ import annotations

import pandas as pd
import pytest

from api.schemas import PredictSegmentResponse, RecommendResponse
from scoring.bundle import load_current
from scoring.rfm import GROUPS


@pytest.fixture
def rfm_client(make_app, rfm_bundle):
    return make_app(MODEL_ROOT=str(rfm_bundle[0])).test_client()


@pytest.fixture(scope="module")
def bodies(rfm_bundle):
    frame = pd.read_parquet(rfm_bundle[1] / "customers.parquet").head(40)
    out = []
    for row in frame.drop(columns=["true_segment"], errors="ignore").to_dict("records"):
        body = {k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()}
        out.append(body)
    return out


def test_predict_segment_answers_the_rfm_group(rfm_client, scoring_headers, bodies):
    for body in bodies[:10]:
        res = rfm_client.post("/predict-segment", json=body, headers=scoring_headers)
        assert res.status_code == 200, res.get_json()
        answer = res.get_json()
        assert PredictSegmentResponse().validate(answer) == {}
        assert answer["segment_name"] == GROUPS[answer["segment_id"]] == answer["rfm"]["group"]
        stats = answer["segment_stats"]
        assert stats["rfm"]["groups"] == {answer["segment_name"]: 1.0}
        assert "clv" in stats
    batch = rfm_client.post(
        "/predict-segment", json={"customers": bodies[:10]}, headers=scoring_headers
    ).get_json()
    singles = [
        rfm_client.post("/predict-segment", json=b, headers=scoring_headers).get_json()
        for b in bodies[:10]
    ]
    for one, item in zip(singles, batch["results"], strict=True):
        one.pop("model_version")
        assert item == one


def test_recommend_weights_gains_by_customer_value(rfm_client, scoring_headers, bodies, rfm_bundle):
    batch = rfm_client.post(
        "/recommend", json={"customers": bodies}, headers=scoring_headers
    ).get_json()
    eligible_for_win_back = set()
    for body, item in zip(bodies, batch["results"], strict=True):
        one = rfm_client.post("/recommend", json=body, headers=scoring_headers).get_json()
        assert RecommendResponse().validate(one) == {}
        assert one["gain_weight"] == "clv"
        assert one["customer_value"]["weight"] >= 0
        one.pop("model_version")
        assert item == one  # the one-customer path and the batch agree to the bit
        if any(c["campaign_id"] == "win_back" for c in one["campaigns"]):
            eligible_for_win_back.add(one["segment_name"])
    pool = {c.id: c for c in load_current(rfm_bundle[0]).campaigns}
    # the pool's eligible_segments name RFM groups, and only those groups get the campaign
    assert eligible_for_win_back
    assert eligible_for_win_back <= set(pool["win_back"].eligible_segments)
    explained = rfm_client.post(
        "/recommend", json={**bodies[0], "explain": True}, headers=scoring_headers
    ).get_json()
    assert explained["rfm"] == batch["results"][0]["rfm"]
    assert [c["campaign_id"] for c in explained["campaigns"]] == [
        c["campaign_id"] for c in batch["results"][0]["campaigns"]
    ]


def test_a_missing_rfm_feature_is_a_field_error(rfm_client, scoring_headers, bodies):
    body = {k: v for k, v in bodies[0].items() if k != "recency_days"}
    res = rfm_client.post("/predict-segment", json=body, headers=scoring_headers)
    assert res.status_code == 422
    assert "recency_days" in res.get_json()["error"]["fields"]


def test_the_bundle_endpoint_says_rfm_serves(rfm_client, scoring_headers):
    info = rfm_client.get("/bundle", headers=scoring_headers).get_json()
    assert info["served_model"] == "rfm"
    assert [s["name"] for s in info["segments"]] == list(GROUPS)


def test_answer_rules_name_the_clv_weight(rfm_client, scoring_headers, bodies):
    answer = rfm_client.post("/recommend", json=bodies[0], headers=scoring_headers).get_json()
    for item in answer["campaigns"]:
        assert any("x value x the customer's CLV weight - cost" in r for r in item["rules"])
