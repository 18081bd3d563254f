"""The three real tables prepare from their example configs (skipped without ../shared/data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.config import load_config
from training.prepare import prepare

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.realdata


def prepared_example(name: str, shared_data: Path):
    config = load_config(ROOT / "examples" / f"{name}.toml")
    source = Path(config.data.customers)
    if not source.is_file():
        # the configs name ../shared/data; honour SHARED_DATA_DIR when it points elsewhere
        source = shared_data / source.parent.name / source.name
        config = load_config(ROOT / "examples" / f"{name}.toml", {"customers": str(source)})
    return prepare(config)


def test_cc_general_prepares_for_segmentation_only(shared_data):
    p = prepared_example("cc_general", shared_data)
    assert p.numeric.shape == (8950, 17)
    assert p.responses is None
    assert p.customers.index[0] == "C10001"
    optional = {f.name for f in p.schema.inputs if not f.required}
    assert optional == {"CREDIT_LIMIT", "MINIMUM_PAYMENTS"}
    assert not np.isnan(p.numeric).any()


def test_personality_prepares_with_six_campaigns(shared_data):
    p = prepared_example("personality", shared_data)
    assert p.numeric.shape[0] == 2240
    assert [c.id for c in p.campaigns] == [f"cmp{i}" for i in range(1, 7)]
    assert len(p.responses) == 2240 * 6
    last = p.responses[p.responses["campaign_idx"] == 5]["responded"].mean()
    assert 0.14 < last < 0.16  # Response is 14.9% positive
    assert {f.name for f in p.schema.inputs if not f.required} == {"Income"}
    assert p.schema.categorical_names == ["Education", "Marital_Status"]


def test_bank_marketing_prepares_with_one_campaign_and_row_ids(shared_data):
    p = prepared_example("bank_marketing", shared_data)
    assert len(p.customers) == 45211
    assert p.customers.index[:3].tolist() == ["0", "1", "2"]
    assert "duration" not in p.schema.numeric_names
    assert len(p.campaigns) == 1 and len(p.responses) == 45211
    assert 0.11 < p.responses["responded"].mean() < 0.125  # y is 11.7% yes
    assert len(p.schema.categoricals) == 9
