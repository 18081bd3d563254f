"""Response model stage: split by customer, LightGBM fit, trimmed booster, held-out metrics."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from training.config import ResponseModelConfig, load_config
from training.generate import write_demo
from training.prepare import prepare
from training.response import (
    calibration_table,
    fit_response_model,
    model_feature_names,
    response_matrix,
    split_customers,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """4,000 generated demo customers, prepared as training sees them."""
    data = tmp_path_factory.mktemp("demo")
    write_demo(data, n_customers=4000, seed=5)
    config = load_config(ROOT / "examples" / "demo.toml", {"data_dir": str(data)})
    return prepare(config)


@pytest.fixture(scope="module")
def labels(prepared):
    """A stand-in segmentation: the planted segments as integer ids."""
    _, codes = np.unique(prepared.truth, return_inverse=True)
    return codes.astype(np.int32)


def test_split_keeps_each_customer_on_one_side():
    customer_idx = np.repeat(np.arange(1000), 4)
    train, valid = split_customers(customer_idx, ResponseModelConfig(validation_fraction=0.25))
    train_c, valid_c = set(customer_idx[train]), set(customer_idx[valid])
    assert not train_c & valid_c
    assert len(train_c) + len(valid_c) == 1000
    assert len(valid_c) == 250
    assert len(train) + len(valid) == customer_idx.size


def test_split_caps_rows_by_sampling_whole_customers():
    customer_idx = np.repeat(np.arange(1000), 4)
    train, valid = split_customers(customer_idx, ResponseModelConfig(max_train_rows=800))
    rows = np.concatenate([train, valid])
    assert rows.size <= 800 + 4
    kept = customer_idx[rows]
    # every kept customer keeps all four of its rows
    assert (np.bincount(kept)[np.unique(kept)] == 4).all()


def test_split_is_deterministic_under_the_seed():
    customer_idx = np.repeat(np.arange(300), 3)
    a = split_customers(customer_idx, ResponseModelConfig(seed=1))
    b = split_customers(customer_idx, ResponseModelConfig(seed=1))
    c = split_customers(customer_idx, ResponseModelConfig(seed=2))
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_response_matrix_follows_the_schema_column_order(prepared, labels):
    X, y = response_matrix(prepared, labels)
    schema = prepared.schema
    assert X.shape == (len(prepared.responses), len(schema.response_model_columns))
    cust = prepared.responses["customer_idx"].to_numpy()
    np.testing.assert_array_equal(X[:, -1], prepared.responses["campaign_idx"].to_numpy())
    np.testing.assert_array_equal(X[:, -2], labels[cust])
    first = schema.response_index()[0]
    np.testing.assert_array_equal(X[:, 0], prepared.numeric[cust, first])
    np.testing.assert_array_equal(y, prepared.responses["responded"].to_numpy())


def test_fit_learns_the_planted_signal_and_reports_metrics(prepared, labels):
    model = fit_response_model(prepared, labels, ResponseModelConfig())
    m = model.metrics
    assert m["auc"] > 0.75
    assert set(m["auc_per_campaign"]) <= {c.id for c in prepared.campaigns}
    assert 0 < m["base_rate"] < 1
    assert m["log_loss"] < 0.5 and 0 < m["brier"] < 0.25
    assert len(m["calibration"]) == 10
    assert sum(b["n"] for b in m["calibration"]) == m["n_valid_rows"]
    assert m["n_train_rows"] + m["n_valid_rows"] == len(prepared.responses)
    # the saved booster holds exactly the best iteration
    assert model.booster.current_iteration() == m["best_iteration"]
    assert model.booster.num_feature() == len(prepared.schema.response_model_columns)


def test_fit_is_deterministic(prepared, labels):
    a = fit_response_model(prepared, labels, ResponseModelConfig(max_rounds=40))
    b = fit_response_model(prepared, labels, ResponseModelConfig(max_rounds=40))
    X, _ = response_matrix(prepared, labels, np.arange(200))
    np.testing.assert_array_equal(a.booster.predict(X), b.booster.predict(X))


def test_no_history_or_disabled_means_no_model(prepared, labels):
    assert (
        fit_response_model(
            dataclasses.replace(prepared, responses=None), labels, ResponseModelConfig()
        )
        is None
    )
    assert fit_response_model(prepared, labels, ResponseModelConfig(enabled=False)) is None


def test_model_feature_names_are_unique_and_lightgbm_safe():
    names = model_feature_names(["age", "campaign", "a:b", "segment", "campaign"])
    assert names == ["age", "campaign", "a_b", "segment", "campaign_"]


def test_calibration_bins_are_equal_count_and_ordered():
    rng = np.random.default_rng(0)
    p = rng.random(1000)
    y = (rng.random(1000) < p).astype(float)
    table = calibration_table(y, p)
    assert [b["n"] for b in table] == [100] * 10
    means = [b["mean_predicted"] for b in table]
    assert means == sorted(means)
    assert table[-1]["observed_rate"] > table[0]["observed_rate"]
