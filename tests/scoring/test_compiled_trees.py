"""Compiled response models: stored, hashed and verified like every file; used only when they
run on this platform and reproduce LightGBM on their check sample; LightGBM serves otherwise."""

from __future__ import annotations

import json

import lightgbm as lgb
import numpy as np
import pytest

from scoring import compiled_trees, propensity
from scoring.bundle import COMPILED, MANIFEST, BundleError, load_current
from scoring.compiled_trees import TOLERANCE, check_sample, compile_model, platform_mismatch
from scoring.engine import ScoringEngine


def _rewrite_manifest(root, edit):
    """Edit the manifest and re-record nothing: for tests of what the loader then refuses."""
    path = root / "v-compiled" / MANIFEST
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def test_compiled_bundle_lists_and_hashes_the_native_code(compiled_root):
    bundle = load_current(compiled_root)
    files = bundle.manifest["files"]
    assert {compiled_trees.OBJECT_FILE, compiled_trees.SAMPLE_FILE} <= set(files)
    entry = bundle.manifest[COMPILED]
    assert entry["platform"]["compiler"] == "lleaves"
    assert entry["platform"]["triple"]
    assert bundle.compiled_status.compiled, bundle.compiled_status.reason
    assert bundle.compiled_forest is not None
    # the check sample has rows with gaps, so the missing-value branches were compared too
    sample = np.load(compiled_root / "v-compiled" / compiled_trees.SAMPLE_FILE)
    assert np.isnan(sample).any() and (~np.isnan(sample)).all(axis=1).any()


def test_compiled_trees_equal_lightgbm(compiled_root, demo_customers):
    bundle = load_current(compiled_root)
    frame, _ = demo_customers
    engine = ScoringEngine(bundle)
    assert engine.model.compiled is bundle.compiled_forest
    batch = engine.batch_from_frame(frame)
    segment = engine.assign(batch).segment
    n, m = len(batch), len(engine.campaigns)
    customer, campaign = np.nonzero(np.ones((n, m), dtype=bool))
    rows = engine.model_rows(batch, segment, customer, campaign)
    rows[::7, 2] = np.nan  # and with gaps the model never saw in training
    expected = bundle.response_model.predict(rows)
    np.testing.assert_allclose(bundle.compiled_forest.predict(rows), expected, rtol=0, atol=1e-12)
    # the few-rows path used by single-customer requests, without numpy
    few = bundle.compiled_forest.predict_rows(rows[:6].tolist())
    np.testing.assert_allclose(few, expected[:6], rtol=0, atol=1e-12)
    # one customer's row for several campaigns (the single path): the same bits either way,
    # compiled or through LightGBM's own fallback
    slot = engine.tables.layout.campaign_slot
    row = rows[0].tolist()
    codes = [3.0, 0.0, 5.0, 1.0]
    variants = []
    for v in codes:
        r = list(row)
        r[slot] = v
        variants.append(r)
    compiled = bundle.compiled_forest.predict_variants(row, slot, codes)
    assert compiled == bundle.compiled_forest.predict_rows(variants)
    assert engine.model.predict_variants(row, slot, codes) == compiled
    assert bundle.compiled_forest.predict_variants(row, slot, []) == []
    engine.model.compiled = None
    np.testing.assert_allclose(
        engine.model.predict_variants(row, slot, codes), compiled, rtol=0, atol=1e-12
    )


def test_two_threads_give_the_same_numbers(compiled_root, demo_customers):
    bundle = load_current(compiled_root)
    frame, _ = demo_customers
    big = frame.sample(30_000, replace=True, random_state=0)
    one, two = ScoringEngine(bundle, threads=1), ScoringEngine(bundle, threads=2)
    batch = one.batch_from_frame(big)
    segment = one.assign(batch).segment
    np.testing.assert_array_equal(
        one.propensities(batch, segment), two.propensities(batch, segment)
    )


def test_tampered_native_code_is_refused_before_loading(compiled_copy):
    path = compiled_copy / "v-compiled" / compiled_trees.OBJECT_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"response_model.o: SHA-256 .* does not match"):
        load_current(compiled_copy)


def test_unlisted_native_code_is_refused(compiled_copy):
    (compiled_copy / "v-compiled" / "extra.so").write_bytes(b"\x7fELF")
    with pytest.raises(BundleError, match=r"not in the manifest: extra\.so"):
        load_current(compiled_copy)


def test_compiled_entry_must_list_its_files(compiled_copy):
    def drop(manifest):
        del manifest["files"][compiled_trees.SAMPLE_FILE]

    _rewrite_manifest(compiled_copy, drop)
    with pytest.raises(BundleError, match=r"required file response_model_check\.npy is not listed"):
        load_current(compiled_copy)


def _lacked_feature() -> str:
    """A CPU feature LLVM knows and this CPU lacks (LLVM lists it with a minus)."""
    features = compiled_trees._host()["features"].split(",")
    return next(f[1:] for f in features if f.startswith("-"))


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"triple": "aarch64-unknown-linux-gnu"}, "built for aarch64-unknown-linux-gnu"),
        ({"features": "+FEATURE"}, "FEATURE, which this CPU lacks"),
        ({"lleaves": "2.0.0"}, "built with lleaves 2.0.0"),
        ({"compiler": "tl2cgen"}, "compiled by 'tl2cgen'"),
    ],
)
def test_other_platform_falls_back_to_lightgbm(compiled_root, change, reason):
    here = load_current(compiled_root).manifest[COMPILED]["platform"]
    assert platform_mismatch(here) is None
    if change.get("features") == "+FEATURE":
        feature = _lacked_feature()
        change, reason = {"features": f"+{feature}"}, f"{feature}, which this CPU lacks"
    assert reason in platform_mismatch({**here, **change})


def test_compiled_in_its_own_environment_loaded_by_the_service(compiled_root):
    """lleaves (llvmlite < 0.44) compiles in .venv-compile; the service's llvmlite loads it."""
    import llvmlite

    platform = load_current(compiled_root).manifest[COMPILED]["platform"]
    assert platform["llvmlite"].startswith("0.43")
    assert not llvmlite.__version__.startswith("0.43")
    assert platform["n_features"] == load_current(compiled_root).response_model.num_feature()


def test_foreign_artifact_serves_through_lightgbm(compiled_copy, demo_request):
    """A verified bundle whose artifact targets another platform still loads and scores."""
    from scoring.bundle import load_bundle

    bundle_dir = compiled_copy / "v-compiled"
    # re-sign nothing: the platform is part of the manifest, so edit it and re-hash nothing else
    manifest = json.loads((bundle_dir / MANIFEST).read_text())
    manifest[COMPILED]["platform"]["triple"] = "riscv64-unknown-linux-gnu"
    (bundle_dir / MANIFEST).write_text(json.dumps(manifest))
    bundle = load_bundle(bundle_dir)
    assert bundle.compiled_forest is None
    assert not bundle.compiled_status.compiled
    assert "riscv64" in bundle.compiled_status.describe()
    engine = ScoringEngine(bundle)
    assert engine.model.compiled is None
    assert engine.recommend_one(demo_request)["campaigns"]


def test_artifact_that_disagrees_with_lightgbm_is_not_used(compiled_copy, tmp_path):
    """Object code of another model (hashes recorded, platform right) fails the check sample."""
    from scoring.bundle import _sha256

    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 11))
    other = lgb.train(
        {"objective": "binary", "verbosity": -1, "num_leaves": 4},
        lgb.Dataset(X, (X[:, 0] > 0).astype(int)),
        num_boost_round=5,
    )
    artifact = compile_model(other.model_to_string(), check_sample(X))
    bundle_dir = compiled_copy / "v-compiled"
    obj = bundle_dir / compiled_trees.OBJECT_FILE
    obj.write_bytes(artifact.object_code)
    manifest = json.loads((bundle_dir / MANIFEST).read_text())
    manifest["files"][obj.name] = {"sha256": _sha256(obj), "bytes": obj.stat().st_size}
    (bundle_dir / MANIFEST).write_text(json.dumps(manifest))

    bundle = load_current(compiled_copy)
    assert bundle.compiled_forest is None
    assert f"(> {TOLERANCE:g})" in bundle.compiled_status.reason


def test_portable_artifact_needs_no_cpu_feature_and_equals_lightgbm(monkeypatch, tmp_path):
    """TREE_COMPILER_CPU=generic (the image's bake stage): compiled for the architecture's
    baseline, so it loads on any CPU of that architecture, with the same numbers."""
    from scoring.compiled_trees import CompiledForest

    rng = np.random.default_rng(1)
    X = rng.normal(size=(500, 6))
    model = lgb.train(
        {"objective": "binary", "verbosity": -1, "num_leaves": 8},
        lgb.Dataset(X, (X[:, 0] + X[:, 1] > 0).astype(int)),
        num_boost_round=20,
    )
    monkeypatch.setenv(compiled_trees.COMPILER_CPU_ENV, "generic")
    artifact = compile_model(model.model_to_string(), check_sample(X))
    assert artifact.platform["cpu"] == "generic" and artifact.platform["features"] == ""
    assert platform_mismatch(artifact.platform) is None
    path = tmp_path / compiled_trees.OBJECT_FILE
    path.write_bytes(artifact.object_code)
    forest = CompiledForest.load(path, 6)
    np.testing.assert_allclose(forest.predict(X), model.predict(X), rtol=0, atol=TOLERANCE)


def test_artifact_for_another_feature_count_is_never_run(compiled_copy):
    def other_width(manifest):
        manifest[COMPILED]["platform"]["n_features"] += 1

    _rewrite_manifest(compiled_copy, other_width)
    bundle = load_current(compiled_copy)
    assert bundle.compiled_forest is None
    assert "features compiled, the model has" in bundle.compiled_status.reason


def test_no_compiler_means_no_artifact_and_says_how_to_get_one(monkeypatch):
    monkeypatch.setenv(compiled_trees.COMPILER_ENV, "")
    monkeypatch.setattr(compiled_trees, "PROJECT_ROOT", compiled_trees.PROJECT_ROOT / "nowhere")
    with pytest.raises(RuntimeError, match=r"run scripts/compile-venv\.sh"):
        compile_model("tree", np.zeros((2, 2)))


def test_bundle_without_compiled_trees_says_so(fresh_bundle_root):
    bundle = load_current(fresh_bundle_root)
    assert bundle.compiled_forest is None
    assert bundle.compiled_status.describe() == "LightGBM C API (the bundle has no compiled trees)"


def test_row_order_follows_the_forest_size(compiled_root, demo_customers, monkeypatch):
    # campaign-major rows only for a large compiled forest; the propensities do not change
    bundle = load_current(compiled_root)
    engine = ScoringEngine(bundle)
    trees = bundle.response_model.num_trees()
    assert engine.model.campaign_major is (trees >= propensity.CAMPAIGN_MAJOR_TREES)
    frame, _ = demo_customers
    batch = engine.batch_from_frame(frame)
    segment = engine.assign(batch).segment
    before = engine.propensities(batch, segment)
    monkeypatch.setattr(propensity, "CAMPAIGN_MAJOR_TREES", 1)
    large = ScoringEngine(bundle)
    assert large.model.campaign_major
    np.testing.assert_array_equal(large.propensities(batch, segment), before)
    # LightGBM's own predictor keeps the customer-major order
    assert not propensity.PropensityModel(bundle.response_model).campaign_major


def test_walk_order_groups_segments_then_orders_the_column():
    segment = np.array([2, 0, 1, 0, 2, 1, 0])
    column = np.array([5.0, 3.0, np.nan, -1.0, 1.0, 7.0, np.nan])
    order = propensity.walk_order(segment, column)
    assert sorted(order.tolist()) == list(range(7))
    # segments ascending; within one, the column ascending with missing values last
    assert [segment[i] for i in order] == [0, 0, 0, 1, 1, 2, 2]
    assert order.tolist() == [3, 1, 6, 5, 2, 4, 0]
    # a column with one value (or none) leaves the segments to decide
    flat = propensity.walk_order(segment, np.full(7, np.nan))
    assert [segment[i] for i in flat] == sorted(segment.tolist())
    assert sorted(propensity.walk_order(segment, np.ones(7)).tolist()) == list(range(7))


def test_walk_order_leaves_every_probability_where_it_was(
    compiled_root, demo_customers, monkeypatch
):
    # a large compiled forest walks customers by segment and its most-split column; the
    # probabilities are the same bits in the same places, for every pair and for a mask
    monkeypatch.setattr(propensity, "CAMPAIGN_MAJOR_TREES", 1)
    engine = ScoringEngine(load_current(compiled_root))
    model = engine.model
    layout = engine.tables.layout
    counts = model.booster.feature_importance("split")
    numeric = range(layout.width)[layout.numeric_slots]
    assert model.order_slot in numeric
    assert counts[model.order_slot] == max(counts[s] for s in numeric) > 0
    frame, _ = demo_customers
    batch = engine.batch_from_frame(frame)
    segment = engine.assign(batch).segment
    n, m = len(batch), len(engine.campaigns)
    customer, campaign = np.nonzero(np.ones((n, m), dtype=bool))
    expected = model.booster.predict(engine.model_rows(batch, segment, customer, campaign))
    expected = expected.reshape(n, m)
    mask = np.random.default_rng(5).random((n, m)) < 0.6
    monkeypatch.setattr("scoring.engine.BLOCK", 7)
    ordered = engine.propensities(batch, segment)
    masked = engine.propensities(batch, segment, mask)
    np.testing.assert_allclose(ordered, expected, rtol=0, atol=TOLERANCE)
    np.testing.assert_array_equal(np.isnan(masked), ~mask)
    np.testing.assert_array_equal(masked[mask], ordered[mask])
    monkeypatch.setattr(model, "order_slot", None)
    np.testing.assert_array_equal(engine.propensities(batch, segment), ordered)
    np.testing.assert_array_equal(engine.propensities(batch, segment, mask), masked)
    # LightGBM's own predictor keeps customers as given
    assert propensity.PropensityModel(model.booster, order_slots=numeric).order_slot is None


def test_the_compiler_command_explains_itself(capsys):
    from scoring import compiled_trees

    assert compiled_trees.main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "SLOT CAMPAIGNS" in text and compiled_trees.COMPILER_CPU_ENV in text
    assert compiled_trees.main(["compile", "only-one-path"]) == 2
    assert "usage:" in capsys.readouterr().err
