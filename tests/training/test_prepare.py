"""Tests of prepare(): the schema, imputer, matrices, response mapping and fingerprint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from scoring.features import frame_to_raw, numeric_matrix
from training.config import config_from_dict, load_config
from training.generate import FEATURES, write_demo
from training.prepare import categories_of, prepare

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    write_demo(out, n_customers=3000, seed=9)
    return out


@pytest.fixture(scope="module")
def prepared(demo_dir):
    return prepare(load_config(ROOT / "examples" / "demo.toml", {"data_dir": str(demo_dir)}))


def test_schema_follows_the_config(prepared):
    schema = prepared.schema
    assert schema.input_names == list(FEATURES)
    assert schema.numeric_names == [*FEATURES, "avg_order_value"]
    assert {f.name: f.kind for f in schema.inputs}["discount_usage"] == "ratio"
    assert schema.cluster_features == tuple(schema.numeric_names)
    assert schema.response_features == tuple(schema.numeric_names)
    assert "total_spend" in schema.log_features
    assert set(schema.log_features) <= set(schema.cluster_features)
    assert schema.id_column == "customer_id"


def test_required_means_no_missing_value_in_training(prepared):
    required = {f.name: f.required for f in prepared.schema.inputs}
    assert required["mobile_usage"] is False
    assert required["total_spend"] is True


def test_medians_and_ranges_come_from_the_data(prepared):
    frame = prepared.customers
    np.testing.assert_allclose(prepared.schema.medians(), prepared.imputer.statistics_)
    for f in prepared.schema.inputs:
        assert f.median == pytest.approx(frame[f.name].median())
        assert f.observed_min == frame[f.name].min()
        assert f.observed_max == frame[f.name].max()


def test_numeric_matrix_is_the_shared_derivation(prepared):
    raw, codes = frame_to_raw(prepared.customers, prepared.schema)
    np.testing.assert_array_equal(prepared.numeric, numeric_matrix(raw, prepared.schema))
    assert not np.isnan(prepared.numeric).any()
    aov = prepared.numeric[:, -1]
    spend, orders = prepared.numeric[:, 0], prepared.numeric[:, 1]
    np.testing.assert_allclose(aov[orders > 0], (spend / orders)[orders > 0])
    assert (aov[orders == 0] == 0).all()
    assert codes.shape == (len(prepared.customers), 0)


def test_responses_map_to_row_and_pool_positions(prepared, demo_dir):
    everything = pd.read_parquet(demo_dir / "responses.parquet")
    ids = prepared.customers.index.to_numpy()
    pool = [c.id for c in prepared.campaigns]
    # sent rows become the responses, the control arm's rows the controls, in file order
    for r, treated in ((prepared.responses, 1), (prepared.controls, 0)):
        original = everything[everything["treated"] == treated].reset_index(drop=True)
        assert len(r) == len(original)
        assert {str(t) for t in r.dtypes} == {"int64", "int8"}
        for i in (0, len(r) // 2, len(r) - 1):
            assert ids[r["customer_idx"].iloc[i]] == original["customer_id"].iloc[i]
            assert pool[r["campaign_idx"].iloc[i]] == original["campaign_id"].iloc[i]
            assert r["responded"].iloc[i] == original["responded"].iloc[i]


def test_truth_column_is_kept_apart_from_the_features(prepared):
    assert len(prepared.truth) == len(prepared.customers)
    assert "true_segment" not in prepared.customers.columns
    assert len(set(prepared.truth)) == 5


def test_customers_frame_is_indexed_by_id(prepared):
    assert prepared.customers.index.is_unique
    assert prepared.customers.index[0].startswith("W")


def test_fingerprint_is_stable_and_follows_the_data(demo_dir, prepared, tmp_path):
    config = load_config(ROOT / "examples" / "demo.toml", {"data_dir": str(demo_dir)})
    again = prepare(config)
    assert again.fingerprint == prepared.fingerprint
    assert prepared.fingerprint["rows"] == 3000
    assert prepared.fingerprint["columns"][0] == "customer_id"
    assert len(prepared.fingerprint["sources"]) == 3
    other = tmp_path / "other"
    write_demo(other, n_customers=3000, seed=10)
    changed = prepare(load_config(ROOT / "examples" / "demo.toml", {"data_dir": str(other)}))
    assert changed.fingerprint["sha256"] != prepared.fingerprint["sha256"]


def test_categoricals_are_ordered_by_frequency_then_name_and_capped():
    values = pd.Series(["b", "a", "c", "c", "b", None, "d"])
    assert categories_of(values) == ("b", "c", "a", "d")
    assert categories_of(values, limit=2) == ("b", "c")


def test_categorical_codes_and_explicit_lists(tmp_path):
    frame = pd.DataFrame(
        {
            "id": [f"x{i}" for i in range(30)],
            "a": np.arange(30, dtype=float),
            "b": np.linspace(1, 2, 30),
            "colour": ["red"] * 20 + ["blue"] * 9 + [None],
        }
    )
    frame.to_csv(tmp_path / "c.csv", index=False)
    config = config_from_dict(
        {
            "data": {"customers": "c.csv", "id_column": "id"},
            "features": {
                "numeric": ["a", "b"],
                "categorical": ["colour"],
                "cluster": ["b"],
                "response": ["a"],
                "log": [],
            },
            "segmentation": {"k_max": 4},
        },
        base_dir=tmp_path,
    )
    prepared = prepare(config)
    assert prepared.schema.categoricals[0].categories == ("red", "blue")
    assert prepared.codes[0, 0] == 0 and prepared.codes[25, 0] == 1
    assert np.isnan(prepared.codes[29, 0])
    assert prepared.schema.cluster_features == ("b",)
    assert prepared.schema.response_features == ("a",)
    assert prepared.schema.log_features == ()
    assert prepared.responses is None and prepared.campaigns == []
    assert prepared.truth is None
