"""The compiled trees' one walk per customer for every campaign (``forest_campaigns``): the same
bits as ``forest_root`` row by row, used by the batch and single paths, and left unused (with the
reason) when it is absent or does not reproduce ``forest_root``."""

from __future__ import annotations

import json

import lightgbm as lgb
import numpy as np
import pytest
from bundle_builder import CAMPAIGNS

from scoring import compiled_trees, propensity
from scoring import engine as engine_module
from scoring.bundle import COMPILED, MANIFEST, load_current
from scoring.compiled_trees import TOLERANCE, CompiledForest, check_sample, compile_model
from scoring.engine import ScoringEngine


def _edit_platform(root, edit):
    path = root / "v-compiled" / MANIFEST
    manifest = json.loads(path.read_text())
    edit(manifest[COMPILED]["platform"])
    path.write_text(json.dumps(manifest))


def _every_campaign(rows, slot, m):
    wide = np.repeat(rows, m, axis=0)
    wide[:, slot] = np.tile(np.arange(m, dtype=np.float64), rows.shape[0])
    return wide


def _customer_rows(engine, frame):
    batch = engine.batch_from_frame(frame)
    segment = engine.assign(batch).segment
    layout = engine.tables.layout
    rows = layout.dense_rows(batch.numeric, batch.codes, segment, 1)
    rows[::5, 1] = np.nan  # and gaps the model never saw
    return batch, segment, rows


def test_one_walk_gives_forest_roots_bits_for_every_campaign(compiled_root, demo_customers):
    bundle = load_current(compiled_root)
    forest = bundle.compiled_forest
    engine = ScoringEngine(bundle)
    slot, m = engine.tables.layout.campaign_slot, len(CAMPAIGNS)
    assert (forest.campaign_slot, forest.campaigns) == (slot, m)
    assert bundle.compiled_status.reason.endswith(f"one walk for {m} campaigns")
    _, _, rows = _customer_rows(engine, demo_customers[0])
    # the campaign column is not read: garbage there changes nothing
    rows[:, slot] = np.random.default_rng(0).normal(size=rows.shape[0]) * 1e6
    wide = _every_campaign(rows, slot, m)
    got = forest.predict_campaigns(rows)
    assert got.shape == (rows.shape[0], m)
    np.testing.assert_array_equal(got.ravel(), forest.predict(wide))
    np.testing.assert_allclose(
        got.ravel(), bundle.response_model.predict(wide), rtol=0, atol=TOLERANCE
    )
    out = np.empty((rows.shape[0], m))
    assert forest.predict_campaigns(rows, out) is out
    assert forest.predict_campaigns(rows[:0]).shape == (0, m)
    with pytest.raises(ValueError, match="shape"):
        forest.predict_campaigns(rows, np.empty((rows.shape[0], m + 1)))


@pytest.mark.parametrize("major", [False, True])
def test_propensities_are_the_same_bits_with_or_without_the_one_walk(
    compiled_root, demo_customers, monkeypatch, major
):
    """Every pair, a dense mask and a sparse one (walked pair by pair), with and without the
    walk order, in small blocks: the same bits as serving every row through forest_root."""
    if major:
        monkeypatch.setattr(propensity, "CAMPAIGN_MAJOR_TREES", 1)
    monkeypatch.setattr(engine_module, "BLOCK", 7)
    one_walk = ScoringEngine(load_current(compiled_root))
    assert one_walk.model.campaigns_at_once(one_walk.tables.layout.campaign_slot, len(CAMPAIGNS))
    plain_bundle = load_current(compiled_root)
    plain_bundle.compiled_forest.drop_grouped()
    plain = ScoringEngine(plain_bundle)
    assert not plain.model.campaigns_at_once(plain.tables.layout.campaign_slot, len(CAMPAIGNS))
    batch, segment, _ = _customer_rows(one_walk, demo_customers[0])
    rng = np.random.default_rng(7)
    n, m = len(batch), len(CAMPAIGNS)
    dense = rng.random((n, m)) < 0.7
    dense[::9] = False  # customers with nothing to score
    sparse = rng.random((n, m)) < 0.1
    for mask in (None, dense, sparse):
        got = one_walk.propensities(batch, segment, mask)
        np.testing.assert_array_equal(got, plain.propensities(batch, segment, mask))
        if mask is not None:
            np.testing.assert_array_equal(np.isnan(got), ~mask)
    customer, campaign = np.nonzero(np.ones((n, m), dtype=bool))
    expected = one_walk.model.booster.predict(
        one_walk.model_rows(batch, segment, customer, campaign)
    )
    np.testing.assert_allclose(
        one_walk.propensities(batch, segment).ravel(), expected, rtol=0, atol=TOLERANCE
    )


def test_single_customer_variants_take_the_one_walk(compiled_root):
    bundle = load_current(compiled_root)
    forest = bundle.compiled_forest
    slot, width = forest.campaign_slot, forest.n_features
    calls = []
    entry = forest._grouped

    def counted(*args):
        calls.append(args)
        return entry(*args)

    forest._grouped = counted
    row = [float(v) for v in range(width)]
    row[1] = float("nan")
    for codes in ([3.0, 0.0, 2.0], [1.0], [0.0, 1.0, 2.0, 3.0]):
        before = len(calls)
        assert forest.predict_variants(row, slot, codes) == forest.predict_rows(
            _variants(row, slot, codes)
        )
        assert len(calls) == before + 1
    # a value that is not one of its campaigns, or another column: the rows one by one
    for other_slot, codes in ((slot, [1.0, 4.0]), (slot, [0.5]), (0, [1.0, 2.0])):
        before = len(calls)
        assert forest.predict_variants(row, other_slot, codes) == forest.predict_rows(
            _variants(row, other_slot, codes)
        )
        assert len(calls) == before
    assert forest.predict_variants(row, slot, []) == []


@pytest.mark.parametrize(
    "params",
    [{}, {"zero_as_missing": True}, {"use_missing": False}],
    ids=["nan-missing", "zero-missing", "no-missing"],
)
def test_a_numerical_campaign_column_is_decided_as_lleaves_does(tmp_path, params):
    """The campaign split decided at compile time, for a numerical column too (with zero as
    missing, it goes the default way): the same bits as forest_root."""
    rng = np.random.default_rng(2)
    m, n = 5, 3000
    X = rng.normal(size=(n, 4))
    X[:, 3] = rng.integers(0, m, size=n)
    X[rng.random((n, 4)) < 0.1] = np.nan
    X[:, 3] = np.where(np.isnan(X[:, 3]), 0.0, X[:, 3])
    y = ((X[:, 0] > 0) ^ (X[:, 3] % 2 == 1)).astype(int)
    model = lgb.train(
        {"objective": "binary", "verbosity": -1, "num_leaves": 8, **params},
        lgb.Dataset(X, y),
        num_boost_round=40,
    )
    splits = model.feature_importance("split")
    assert splits[3] > 0
    artifact = compile_model(model.model_to_string(), check_sample(X), campaign_slot=3, campaigns=m)
    assert artifact.platform["grouped"] == {
        "entry": compiled_trees.GROUPED_ENTRY,
        "campaign_slot": 3,
        "campaigns": m,
    }
    path = tmp_path / compiled_trees.OBJECT_FILE
    path.write_bytes(artifact.object_code)
    forest, status = compiled_trees.load_checked(path, artifact.platform, artifact.sample, model)
    assert forest is not None and forest.campaigns == m, status.reason
    wide = _every_campaign(X[:400], 3, m)
    got = forest.predict_campaigns(X[:400]).ravel()
    np.testing.assert_array_equal(got, forest.predict(wide))
    np.testing.assert_allclose(got, model.predict(wide), rtol=0, atol=TOLERANCE)


def test_one_walk_that_differs_from_forest_root_is_not_used(compiled_copy, demo_customers):
    # the record names another column: the check at load sees other numbers and drops it
    _edit_platform(compiled_copy, lambda p: p["grouped"].update(campaign_slot=0))
    bundle = load_current(compiled_copy)
    assert bundle.compiled_forest is not None and bundle.compiled_forest.campaigns == 0
    assert "forest_campaigns not used: it differs" in bundle.compiled_status.reason
    engine = ScoringEngine(bundle)
    batch, segment, _ = _customer_rows(engine, demo_customers[0])
    n, m = len(batch), len(CAMPAIGNS)
    customer, campaign = np.nonzero(np.ones((n, m), dtype=bool))
    expected = bundle.response_model.predict(engine.model_rows(batch, segment, customer, campaign))
    np.testing.assert_allclose(
        engine.propensities(batch, segment).ravel(), expected, rtol=0, atol=TOLERANCE
    )


def test_artifact_without_the_one_walk_serves_through_forest_root(compiled_copy):
    # an artifact built before forest_campaigns existed: its record has no "grouped"
    _edit_platform(compiled_copy, lambda p: p.pop("grouped"))
    bundle = load_current(compiled_copy)
    assert bundle.compiled_forest is not None and bundle.compiled_forest.campaigns == 0
    assert "one walk" not in bundle.compiled_status.reason
    with pytest.raises(RuntimeError, match="no campaign-grouped entry"):
        bundle.compiled_forest.predict_campaigns(np.zeros((1, bundle.compiled_forest.n_features)))
    path = compiled_copy / "v-compiled" / compiled_trees.OBJECT_FILE
    loaded = CompiledForest.load(path, bundle.compiled_forest.n_features, None)
    assert loaded.campaigns == 0


def _variants(row, slot, codes):
    """``row`` once per value in ``codes``, that value in column ``slot``."""
    return [[*row[:slot], v, *row[slot + 1 :]] for v in codes]
