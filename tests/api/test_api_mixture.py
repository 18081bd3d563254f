"""A bundle serving the Gaussian mixture: the API answers carry the membership probabilities."""

from __future__ import annotations

import pytest

from api.schemas import PredictSegmentResponse


@pytest.fixture
def mixture_client(make_app, mixture_bundle):
    return make_app(MODEL_ROOT=str(mixture_bundle[0])).test_client()


def test_predict_segment_and_recommend_return_memberships(
    mixture_client, scoring_headers, demo_request
):
    one = mixture_client.post("/predict-segment", json=demo_request, headers=scoring_headers)
    assert one.status_code == 200
    body = one.get_json()
    assert PredictSegmentResponse().validate(body) == {}
    member = body["membership"]
    assert sum(member) == pytest.approx(1.0)
    assert body["segment_id"] == member.index(max(member))
    batch = mixture_client.post(
        "/predict-segment", json={"customers": [demo_request]}, headers=scoring_headers
    ).get_json()
    assert batch["results"][0]["membership"] == member
    ranked = mixture_client.post(
        "/recommend", json={**demo_request, "explain": True}, headers=scoring_headers
    ).get_json()
    assert ranked["membership"] == member
    info = mixture_client.get("/bundle", headers=scoring_headers).get_json()
    assert info["served_model"] == "gaussian_mixture"
