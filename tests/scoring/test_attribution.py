"""Path attribution (explain) equals a per-row walk of the dumped trees and sums to the raw score."""

from __future__ import annotations

import math

import numpy as np
import pytest

from scoring.attribution import GATHER_ROWS, PathAttribution
from scoring.engine import ScoringEngine
from scoring.propensity import SINGLE_ROW_MAX, PropensityModel


def _goes_left(node: dict, x: float) -> bool:
    """LightGBM's decision at a split of the dump (numerical ``<=`` or categorical ``==``)."""
    if node["decision_type"] == "==":
        if math.isnan(x) or x < 0:
            return False
        return str(int(x)) in node["threshold"].split("||")
    missing = node["missing_type"]
    if math.isnan(x):
        if missing == "NaN":
            return node["default_left"]
        x = 0.0
    if missing == "Zero" and x == 0.0:
        return node["default_left"]
    return x <= node["threshold"]


def _leaves_below(node: dict) -> list[dict]:
    if "leaf_value" in node:
        return [node]
    return _leaves_below(node["left_child"]) + _leaves_below(node["right_child"])


def _mean(node: dict) -> float:
    """Cover-weighted mean output of the leaves below ``node``, from the leaves themselves."""
    leaves = _leaves_below(node)
    return sum(x["leaf_value"] * x["leaf_count"] for x in leaves) / sum(
        x["leaf_count"] for x in leaves
    )


def _reference(booster, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(leaves, contributions, expected value) by walking each row down every dumped tree."""
    dump = booster.dump_model()
    trees = [t["tree_structure"] for t in dump["tree_info"]]
    leaves = np.zeros((rows.shape[0], len(trees)), dtype=np.intp)
    contrib = np.zeros((rows.shape[0], booster.num_feature()))
    for i, row in enumerate(rows):
        for t, node in enumerate(trees):
            while "leaf_value" not in node:
                child = node[
                    "left_child" if _goes_left(node, row[node["split_feature"]]) else "right_child"
                ]
                contrib[i, node["split_feature"]] += _mean(child) - _mean(node)
                node = child
            leaves[i, t] = node.get("leaf_index", 0)
    return leaves, contrib, sum(_mean(t) for t in trees)


@pytest.fixture(scope="module")
def engine(tiny_bundle):
    return ScoringEngine(tiny_bundle)


@pytest.fixture(scope="module")
def rows(engine, demo_customers):
    """Model rows of 60 customers x every campaign, a few with missing values (the walk of
    ``_goes_left`` follows LightGBM's missing-value rules)."""
    frame, _ = demo_customers
    batch = engine.batch_from_frame(frame.head(60))
    seg = engine.assign(batch).segment
    m = len(engine.campaigns)
    customer, campaign = np.repeat(np.arange(60), m), np.tile(np.arange(m), 60)
    out = engine.model_rows(batch, seg, customer, campaign)
    out[:8, 0] = np.nan
    out[8:12, engine.tables.layout.segment_slot] = np.nan
    return out


def test_path_contributions_equal_a_walk_of_the_dumped_trees(engine, tiny_bundle, rows):
    leaves, expected, bias = _reference(tiny_bundle.response_model, rows)
    model = engine.model
    np.testing.assert_array_equal(model.leaves(rows), leaves)
    np.testing.assert_allclose(model.contributions(rows, "path"), expected, rtol=0, atol=1e-12)
    assert model.attribution.expected_value == pytest.approx(bias, abs=1e-12)


def test_path_contributions_sum_to_the_raw_score_minus_treeshaps_expected_value(
    engine, tiny_bundle, rows
):
    booster = tiny_bundle.response_model
    raw = booster.predict(rows, raw_score=True)
    attribution = engine.model.attribution
    got = engine.model.contributions(rows, "path").sum(axis=1) + attribution.expected_value
    np.testing.assert_allclose(got, raw, rtol=0, atol=1e-9)
    # the same expected value as TreeSHAP's bias column
    bias = booster.predict(rows[:3], pred_contrib=True)[:, -1]
    np.testing.assert_allclose(bias, attribution.expected_value, rtol=0, atol=1e-9)


def test_single_row_and_matrix_leaf_paths_agree(engine, tiny_bundle, rows):
    assert rows.shape[0] > SINGLE_ROW_MAX  # the matrix call
    whole = engine.model.leaves(rows)
    few = np.vstack([engine.model.leaves(rows[i : i + 3]) for i in range(0, rows.shape[0], 3)])
    np.testing.assert_array_equal(whole, few)
    plain = PropensityModel(tiny_bundle.response_model)
    plain._fast = False  # Booster.predict(pred_leaf=True)
    np.testing.assert_array_equal(plain.leaves(rows), whole)


def test_treeshap_method_is_lightgbms_pred_contrib(engine, tiny_bundle, rows):
    expected = tiny_bundle.response_model.predict(rows, pred_contrib=True)[:, :-1]
    np.testing.assert_allclose(engine.model.contributions(rows, "treeshap"), expected, atol=1e-12)
    with pytest.raises(ValueError, match="method='exact'"):
        engine.model.contributions(rows, "exact")


def test_a_single_leaf_tree_contributes_nothing():
    class Stump:
        def dump_model(self):
            tree = {"num_leaves": 1, "tree_structure": {"leaf_value": 0.25}}
            return {"max_feature_idx": 2, "tree_info": [tree]}

    a = PathAttribution(Stump())
    assert a.expected_value == 0.25
    np.testing.assert_array_equal(a.contributions(np.zeros((2, 1))), np.zeros((2, 3)))


def test_engine_refuses_an_unknown_explain_method(tiny_bundle):
    with pytest.raises(ValueError, match="explain_method='shap'"):
        ScoringEngine(tiny_bundle, explain_method="shap")


def test_a_big_batch_is_gathered_in_blocks_with_the_same_bits(engine, rows):
    many = np.vstack([rows] * 3)
    assert many.shape[0] > GATHER_ROWS
    together = engine.model.contributions(many, "path")
    apart = np.vstack(
        [engine.model.contributions(many[i : i + 5], "path") for i in range(0, len(many), 5)]
    )
    np.testing.assert_array_equal(together, apart)


def test_the_native_walk_serves_path_explain_with_the_tables_bits(engine, tiny_bundle, rows):
    model = engine.model
    walker = model._walker
    assert walker is not None  # numba is a service requirement
    table_path = model.attribution.contributions(model.leaves(rows))
    np.testing.assert_array_equal(model.contributions(rows, "path"), table_path)
    np.testing.assert_array_equal(walker.leaves(rows), model.leaves(rows))


def test_the_native_walk_follows_lightgbms_decisions_at_every_edge(engine):
    """Thresholds and the floats beside them, every category and halves of them, zero, -0.0,
    values LightGBM reads as zero (|x| <= 1e-35), negatives and NaN."""
    model, walker = engine.model, engine.model._walker
    edges = walker.check_rows(seed=11, n=3000)
    assert np.isnan(edges).any() and (edges == 1e-40).any()
    np.testing.assert_array_equal(walker.leaves(edges), model.leaves(edges))
    np.testing.assert_array_equal(
        walker.contributions(edges), model.attribution.contributions(model.leaves(edges))
    )


def test_a_walk_that_disagrees_with_lightgbm_is_not_used(tiny_bundle):
    attribution = PathAttribution(tiny_bundle.response_model)
    model = PropensityModel(tiny_bundle.response_model)

    def off_by_one(rows):
        leaves = model.leaves(rows)
        leaves[:, 0] = (leaves[:, 0] + 1) % 2
        return leaves

    assert attribution.walker(model.leaves) is not None
    assert attribution.walker(off_by_one) is None


def test_without_numba_explain_uses_pred_leaf_and_the_tables(tiny_bundle, rows, monkeypatch):
    from scoring import attribution_walk

    monkeypatch.setattr(attribution_walk, "available", lambda: False)
    plain = PropensityModel(tiny_bundle.response_model)
    got = plain.contributions(rows, "path")
    assert plain._walker is None
    np.testing.assert_array_equal(got, plain.attribution.contributions(plain.leaves(rows)))


@pytest.mark.parametrize("k", [1, 3, 40])
def test_top_k_is_a_stable_argsort_of_magnitudes(k):
    from scoring.attribution_walk import top_k

    rng = np.random.default_rng(k)
    pool = np.array([0.0, -0.0, 1.5, -1.5, 2.0, np.nan, 0.3, -0.3, np.inf, -np.inf])
    for _ in range(50):
        values = rng.choice(pool, size=(rng.integers(1, 9), rng.integers(1, 20)))
        expected = np.argsort(-np.abs(values), axis=1, kind="stable")[:, :k]
        np.testing.assert_array_equal(top_k(values, k), expected)
        normal = rng.normal(size=values.shape)
        expected = np.argsort(-np.abs(normal), axis=1, kind="stable")[:, :k]
        np.testing.assert_array_equal(top_k(normal, k), expected)
