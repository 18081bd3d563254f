"""A bundle trained with [clv] answers /predict-segment with its segment's lifetime value."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from api.schemas import PredictSegmentResponse
from training.config import config_from_dict
from training.pipeline import train

FEATURES = ["recency_days", "frequency", "monetary_total", "tenure_days", "monetary_avg"]


@pytest.fixture(scope="module")
def clv_bundle_root(tmp_path_factory):
    """A bundle trained from 6,000 synthetic transactions of 800 customers, with CLV."""
    folder = tmp_path_factory.mktemp("clv")
    rng = np.random.default_rng(5)
    n = 6000
    pd.DataFrame(
        {
            "customer_id": rng.integers(0, 800, n).astype(str),
            "date": pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 365, n), "D"),
            "amount": np.round(rng.gamma(2.0, 20.0, n), 2),
        }
    ).to_csv(folder / "tx.csv", index=False)
    config = config_from_dict(
        {
            "data": {"transactions": {"path": "tx.csv"}},
            "features": {"numeric": FEATURES},
            "segmentation": {"k": 3, "stability_bootstraps": 0},
            "response_model": {"enabled": False},
            "clv": {"enabled": True},
            "output": {"root": str(folder / "bundles"), "report": False},
        },
        base_dir=folder,
    )
    train(config)
    return folder / "bundles"


def test_predict_segment_carries_the_segments_clv(make_app, clv_bundle_root, scoring_headers):
    app = make_app(MODEL_ROOT=str(clv_bundle_root))
    client = app.test_client()
    body = {"recency_days": 20, "frequency": 6, "monetary_total": 300.0, "tenure_days": 300,
            "monetary_avg": 50.0}  # fmt: skip
    r = client.post("/predict-segment", json=body, headers=scoring_headers)
    assert r.status_code == 200, r.get_json()
    answer = r.get_json()
    PredictSegmentResponse().load(answer)
    from api.extensions import get_services

    profile = get_services(app).model.current.engine.profile(answer["segment_id"])
    assert answer["segment_stats"]["clv"] == profile["clv"]
    assert set(profile["clv"]) == {"mean", "total", "share"}
