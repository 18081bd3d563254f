"""``python -m training score`` answers exactly what ``/recommend`` answers, ids kept as text."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from bundle_builder import synthetic_customers

from api import create_app
from training.cli import main

N_CUSTOMERS = 3000
BATCH = 1000
KEY = "batch-cli-key"


@pytest.fixture(scope="module")
def customers() -> pd.DataFrame:
    """Generated customers whose ids look like numbers with leading zeros ("0000042", "007")."""
    frame, _ = synthetic_customers(N_CUSTOMERS, seed=31)
    frame["customer_id"] = [f"{i:07d}" for i in range(N_CUSTOMERS)]
    frame.loc[frame.index[:3], "customer_id"] = ["007", "00", "0.50"]
    frame.loc[frame.index[3:40], "order_count"] = 0  # the derived feature's fill value
    return frame


def _records(frame: pd.DataFrame) -> list[dict]:
    out = []
    for row in frame.to_dict("records"):
        out.append({k: v for k, v in row.items() if not (isinstance(v, float) and math.isnan(v))})
    return out


def _recommend(bundle_root, records: list[dict]) -> list[dict]:
    app = create_app(
        {
            "MODEL_ROOT": str(bundle_root),
            "MODEL_VERSION": "",
            "BUNDLE_HMAC_KEY": "",
            "API_KEYS": KEY,
            "ADMIN_API_KEYS": "",
            "REDIS_URL": "",
            "RELOAD_MARKER": "",
            "PROMETHEUS_MULTIPROC_DIR": "",
            "BENCH_FLOOR": "0",
        }
    )
    client = app.test_client()
    results = []
    for start in range(0, len(records), BATCH):
        r = client.post(
            "/recommend",
            json={"customers": records[start : start + BATCH]},
            headers={"X-API-Key": KEY},
        )
        assert r.status_code == 200, r.get_data(as_text=True)
        results.extend(r.get_json()["results"])
    return results


def test_batch_command_output_equals_recommend(tiny_bundle_root, tiny_bundle, customers, tmp_path):
    source, target = tmp_path / "customers.csv", tmp_path / "scored.parquet"
    customers.to_csv(source, index=False)  # ids written bare: 007, not "007"
    assert main(["-q", "score", "--bundle", str(tiny_bundle_root), "--input", str(source),
                 "--output", str(target), "--batch-size", "700"]) == 0  # fmt: skip
    scored = pd.read_parquet(target)
    served = _recommend(tiny_bundle_root, _records(customers))

    # ids come out as written, leading zeros and all (regression: "007" came out as 7)
    assert scored["customer_id"].tolist() == customers["customer_id"].tolist()
    assert [r["customer_id"] for r in served] == scored["customer_id"].tolist()
    ids = [c.id for c in tiny_bundle.campaigns]
    for row, answer in zip(scored.to_dict("records"), served, strict=True):
        assert row["segment_id"] == answer["segment_id"]
        assert row["segment_name"] == answer["segment_name"]
        assert row["distance"] == answer["distance"]
        assert row["atypical"] == answer["atypical"]
        ranked = answer["campaigns"]
        if ranked:
            assert row["best_campaign"] == ranked[0]["campaign_id"]
            assert row["best_expected_value"] == ranked[0]["expected_value"]
        else:
            assert row["best_campaign"] is None and np.isnan(row["best_expected_value"])
        probability = {c["campaign_id"]: c["probability"] for c in ranked}
        for cid in ids:
            if cid in probability:
                assert row[f"p_{cid}"] == probability[cid]
            else:
                assert np.isnan(row[f"p_{cid}"])
