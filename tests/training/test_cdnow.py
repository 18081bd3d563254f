"""CDNOW raw transactions train a segmentation-only bundle through ``[data.transactions]``.

Uses examples/cdnow_rfm.toml on ../shared/data/cdnow_lifetimes/CDNOW_master.txt (skipped when the
shared data is absent).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from scoring.bundle import load_bundle
from training.config import load_config
from training.pipeline import train
from training.prepare import prepare

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def cdnow(shared_data, tmp_path_factory):
    folder = shared_data / "cdnow_lifetimes"
    if not (folder / "CDNOW_master.txt").is_file():
        pytest.skip("CDNOW_master.txt is absent")
    out = tmp_path_factory.mktemp("cdnow")
    config = load_config(
        ROOT / "examples" / "cdnow_rfm.toml", {"data_dir": str(folder), "output": str(out)}
    )
    return train(config), folder / "CDNOW_master.txt"


def test_every_customer_gets_a_segment_and_no_response_model(cdnow):
    result, source = cdnow
    raw = pd.read_csv(source, sep=r"\s+", dtype={"customer_id": str})
    assert sum(p["size"] for p in result.bundle.profiles) == raw["customer_id"].nunique()
    assert result.response is None
    assert 2 <= result.segmentation.k <= 8
    manifest = json.loads((result.path / "manifest.json").read_text())
    assert manifest["metrics"]["response_model_skipped"].startswith("disabled")


def test_rfm_features_match_the_transactions(shared_data):
    folder = shared_data / "cdnow_lifetimes"
    config = load_config(ROOT / "examples" / "cdnow_rfm.toml", {"data_dir": str(folder)})
    prepared = prepare(config)
    raw = pd.read_csv(folder / "CDNOW_master.txt", sep=r"\s+", dtype={"customer_id": str})
    assert prepared.customers.index[0] == "00001"  # leading zeros kept
    customer = raw["customer_id"].iloc[len(raw) // 2]
    rows = raw[raw["customer_id"] == customer]
    days = pd.to_datetime(rows["date"].astype(str), format="%Y%m%d")
    as_of = pd.Timestamp("1998-07-01")
    got = prepared.customers.loc[customer]
    assert got["recency_days"] == (as_of - days.max()).days
    assert got["tenure_days"] == (as_of - days.min()).days
    assert got["frequency"] == days.nunique()
    assert got["monetary_total"] == pytest.approx(rows["dollar_value"].sum())


def test_the_bundle_loads_and_verifies(cdnow):
    result, _ = cdnow
    bundle = load_bundle(result.path)
    assert bundle.segment_names == result.bundle.segment_names
