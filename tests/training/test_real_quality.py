"""The three real tables train from their shipped example configs and meet the quality targets.

Skipped when ../shared/data (or $SHARED_DATA_DIR) is absent.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from scoring.bundle import load_bundle
from training.config import load_config
from training.pipeline import train

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.realdata]


def run(example: str, table: Path, output: Path):
    """Train ``examples/<example>.toml`` on ``table`` into ``output``; return the result."""
    config = load_config(
        ROOT / "examples" / f"{example}.toml", {"customers": str(table), "output": str(output)}
    )
    result = train(config, environ={})
    bundle = load_bundle(result.path)
    assert bundle.n_segments == result.segmentation.k
    assert len(set(bundle.segment_names)) == bundle.n_segments
    assert config.segmentation.k_min <= result.segmentation.k <= config.segmentation.k_max
    # the HTML evidence report builds for every real table, each chart drawn
    page = result.html_report_path.read_text()
    assert "could not be drawn" not in page
    charts = 11 if bundle.response_model is not None else 7
    assert page.count('<img class="chart"') == charts
    assert len(bundle.manifest["comparison"]["methods"]) >= 7
    return result, bundle


def test_customer_personality_pooled_auc(shared_data, tmp_path):
    table = shared_data / "customer_personality" / "marketing_campaign.csv"
    _, bundle = run("personality", table, tmp_path)
    metrics = bundle.manifest["metrics"]["response_model"]
    assert len(bundle.campaigns) == 6
    assert set(metrics["auc_per_campaign"]) == {c.id for c in bundle.campaigns}
    assert metrics["auc"] >= 0.90
    # every customer's six answers stay on one side of the split
    assert metrics["n_train_rows"] == 6 * metrics["n_train_customers"]


def test_bank_marketing_auc_without_duration(shared_data, tmp_path):
    table = shared_data / "bank_marketing" / "bank-full.csv"
    _, bundle = run("bank_marketing", table, tmp_path)
    assert "duration" not in bundle.schema.numeric_names
    assert "duration" not in bundle.schema.response_features
    assert bundle.manifest["metrics"]["response_model"]["auc"] >= 0.79


def test_cc_general_segments_without_responses(shared_data, tmp_path):
    table = shared_data / "cc_general" / "CC_GENERAL.csv"
    _, bundle = run("cc_general", table, tmp_path)
    assert bundle.response_model is None
    assert bundle.manifest["metrics"]["response_model"] is None
    assert all(p["response_rate"] == {} for p in bundle.profiles)
    assert bundle.manifest["stability"]["bootstraps"] > 0
    assert sum(p["size"] for p in bundle.profiles) == 8950
