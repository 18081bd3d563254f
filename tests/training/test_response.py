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
    Fit,
    calibration_table,
    fit_response_model,
    leaf_options,
    model_feature_names,
    response_matrix,
    smallest_within,
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


# ---- keeping the smallest model within an AUC tolerance ------------------------------------------
def _fake_fit(leaves: int, auc: list[float]) -> Fit:
    return Fit(leaves=leaves, booster=None, best=len(auc), auc=auc)


def test_smallest_model_within_the_tolerance_is_kept():
    big = _fake_fit(31, [0.70, 0.78, 0.80, 0.805, 0.806])
    small = _fake_fit(7, [0.65, 0.72, 0.79, 0.799, 0.8045, 0.805])
    chosen, rounds, evidence = smallest_within([big, small], tolerance=0.002)
    # best 0.806 (31 leaves, 5 rounds); within 0.002: 31x4=124 leaves or 7x5=35 leaves
    assert (chosen.leaves, rounds) == (7, 5)
    assert evidence["best"] == {"leaves": 31, "rounds": 5, "auc": 0.806}
    assert evidence["chosen"]["auc"] == pytest.approx(0.8045)
    # no tolerance: the best itself (the smallest model reaching it)
    chosen, rounds, _ = smallest_within([big, small], tolerance=0.0)
    assert (chosen.leaves, rounds) == (31, 5)


def test_leaf_options_halve_twice_and_stop_at_four():
    assert leaf_options(31) == [31, 15, 7]
    assert leaf_options(15) == [15, 7]
    assert leaf_options(8) == [8, 4]
    assert leaf_options(4) == [4]


def test_size_selection_trades_rounds_for_auc_and_says_so(prepared, labels):
    config = ResponseModelConfig(learning_rate=0.2, num_leaves=15, auc_tolerance=0.005)
    selected = fit_response_model(prepared, labels, config)
    full = fit_response_model(prepared, labels, dataclasses.replace(config, select_smallest=False))
    sel = selected.metrics["size_selection"]
    assert sel["enabled"] and "fewer leaves to walk" in sel["traded"]
    assert sel["chosen"]["auc"] >= sel["best"]["auc"] - 0.005
    assert [c["leaves"] for c in sel["candidates"]] == [15, 7]
    chosen_size = selected.booster.current_iteration() * selected.metrics["params"]["num_leaves"]
    full_size = full.booster.current_iteration() * full.metrics["params"]["num_leaves"]
    assert chosen_size <= full_size
    assert full.metrics["size_selection"] == {"enabled": False}
    assert full.metrics["params"]["num_leaves"] == 15
    # the held-out AUC of the kept model, as the metrics report it, honours the tolerance
    assert selected.metrics["auc"] >= sel["best"]["auc"] - 0.005 - 1e-3


def test_auc_tolerance_is_checked(tmp_path):
    from training.config import ConfigError

    cfg = tmp_path / "bad.toml"
    text = (ROOT / "examples" / "demo.toml").read_text()
    cfg.write_text(
        text.replace("seed = 42\n\n[output]", "seed = 42\nauc_tolerance = -1\n\n[output]")
    )
    with pytest.raises(ConfigError, match=r"response_model\.auc_tolerance"):
        load_config(cfg)
