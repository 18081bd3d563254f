"""Served equals offline: HTTP answers for 10,000 customers match the plain sklearn/LightGBM path."""

from __future__ import annotations

import math

import numpy as np
import pytest
from bundle_builder import synthetic_customers

from scoring.reference import reference_propensities, reference_segments

N_CUSTOMERS = 10_000
BATCH = 1000


@pytest.fixture(scope="module")
def customers():
    """10,000 generated customers, with edge cases: no orders, zero spend, missing optionals."""
    frame, _ = synthetic_customers(N_CUSTOMERS, seed=2024)
    frame.loc[frame.index[:50], "order_count"] = 0
    frame.loc[frame.index[25:75], "total_spend"] = 0.0
    frame.loc[frame.index[100:200], "mobile_usage"] = np.nan
    return frame


def _records(frame) -> list[dict]:
    names = [c for c in frame.columns if c != "customer_id"]
    out = []
    for row in frame.itertuples(index=False):
        record = {"customer_id": row.customer_id}
        for name in names:
            value = getattr(row, name)
            if isinstance(value, float) and math.isnan(value):
                continue  # an optional input left out: the service imputes it
            record[name] = value.item() if hasattr(value, "item") else value
        out.append(record)
    return out


def _post_all(client, path, records, headers, **options) -> list[dict]:
    results = []
    for start in range(0, len(records), BATCH):
        body = {"customers": records[start : start + BATCH], **options}
        r = client.post(path, json=body, headers=headers)
        assert r.status_code == 200
        results.extend(r.get_json()["results"])
    return results


def test_http_answers_equal_the_offline_pipeline(
    client, scoring_headers, services, tiny_bundle, customers
):
    bundle = services.model.current.bundle
    assert bundle.version == tiny_bundle.version
    records = _records(customers)
    expected_segments = reference_segments(tiny_bundle, customers)
    expected_prob = reference_propensities(tiny_bundle, customers, expected_segments)

    segments = _post_all(client, "/predict-segment", records, scoring_headers)
    assert [r.get("error") for r in segments if "error" in r] == []
    served_segments = np.array([r["segment_id"] for r in segments])
    assert np.array_equal(served_segments, expected_segments)
    assert [r["customer_id"] for r in segments] == list(customers["customer_id"])

    ranked = _post_all(client, "/recommend", records, scoring_headers, top_k=len(bundle.campaigns))
    ids = [c.id for c in bundle.campaigns]
    eligible = {
        s: {
            c.id
            for c in bundle.campaigns
            if c.eligible_segments is None or name in c.eligible_segments
        }
        for s, name in enumerate(bundle.segment_names)
    }
    worst = 0.0
    for i, result in enumerate(ranked):
        assert result["segment_id"] == expected_segments[i]
        returned = {c["campaign_id"] for c in result["campaigns"]}
        assert returned == eligible[int(expected_segments[i])]
        for c in result["campaigns"]:
            worst = max(
                worst, abs(c["probability"] - expected_prob[i, ids.index(c["campaign_id"])])
            )
    assert worst <= 1e-9
