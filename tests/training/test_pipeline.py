"""End to end: generated demo data -> train() -> a bundle that loads and recovers the truth."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from scoring.bundle import load_bundle, load_current, resolve
from scoring.features import cluster_matrix
from training.config import ConfigError, load_config
from training.generate import SEGMENTS, write_demo
from training.pipeline import train
from training.prepare import prepare

ROOT = Path(__file__).resolve().parents[2]
N_CUSTOMERS = 6000


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    """Generated demo data with planted segments."""
    folder = tmp_path_factory.mktemp("demo")
    write_demo(folder, n_customers=N_CUSTOMERS, seed=11)
    return folder


def demo_config(demo_dir: Path, output: Path, **overrides):
    """The shipped demo config pointed at the generated data and a private output root."""
    return load_config(
        ROOT / "examples" / "demo.toml",
        {"data_dir": str(demo_dir), "output": str(output), **overrides},
    )


@pytest.fixture(scope="module")
def trained(demo_dir, tmp_path_factory):
    """One training run on the demo data (shared by the tests that only read its result)."""
    out = tmp_path_factory.mktemp("artifacts")
    config = demo_config(demo_dir, out)
    return config, train(config, environ={})


def test_the_rule_picks_the_planted_k_and_recovers_the_segments(trained, demo_dir):
    config, result = trained
    assert result.segmentation.k == len(SEGMENTS)
    assert not result.segmentation.selection.overridden
    assert result.truth_ari >= 0.9
    truth = prepare(config).truth
    assert adjusted_rand_score(truth, result.segmentation.labels) == pytest.approx(result.truth_ari)


def test_bundle_round_trip(trained):
    config, result = trained
    bundle = load_current(config.output.root)
    assert bundle.path == result.path
    assert bundle.segment_names == [n.name for n in result.names]
    assert len(set(bundle.segment_names)) == bundle.n_segments
    assert bundle.response_model is not None
    assert [c.id for c in bundle.campaigns] == [c.id for c in result.bundle.campaigns]
    # the loaded chain assigns the training rows exactly as training did
    prepared = prepare(config)
    X = cluster_matrix(prepared.numeric, bundle.schema)
    labels = bundle.kmeans.predict(bundle.pca.transform(bundle.scaler.transform(X)))
    np.testing.assert_array_equal(labels, result.segmentation.labels)
    # the imputer stored is the one the schema's medians come from
    np.testing.assert_allclose(bundle.imputer.statistics_, bundle.schema.medians())


def test_manifest_carries_the_evidence(trained):
    config, result = trained
    manifest = json.loads((result.path / "manifest.json").read_text())
    for key in (
        "data_fingerprint",
        "config",
        "code_revision",
        "k_selection",
        "stability",
        "metrics",
        "timings",
        "library_versions",
        "feature_schema",
        "files",
    ):
        assert key in manifest, key
    ks = manifest["k_selection"]
    assert ks["chosen_k"] == result.segmentation.k
    assert [r["k"] for r in ks["table"]] == list(
        range(config.segmentation.k_min, config.segmentation.k_max + 1)
    )
    assert ks["reasoning"]
    assert manifest["stability"]["ari_mean"] >= 0.9
    rm = manifest["metrics"]["response_model"]
    assert rm["auc"] > 0.75 and len(rm["calibration"]) == 10
    assert manifest["metrics"]["segmentation"]["truth_ari"] == pytest.approx(result.truth_ari)
    assert set(manifest["timings"]) >= {"prepare", "segmentation", "response_model"}
    assert manifest["config"]["segmentation"]["k_max"] == config.segmentation.k_max
    assert manifest["data_fingerprint"]["rows"] == N_CUSTOMERS


def test_profiles_cover_every_segment_and_sum_to_the_population(trained):
    _, result = trained
    profiles = json.loads((result.path / "profiles.json").read_text())
    assert [p["segment_id"] for p in profiles] == list(range(result.segmentation.k))
    assert sum(p["size"] for p in profiles) == N_CUSTOMERS
    assert all(0 < len(p["default_campaigns"]) <= 3 for p in profiles)
    assert all(p["response_rate"] for p in profiles)
    assert "avg_order_value" in profiles[0]["mean"]


def test_report_is_written_beside_the_bundle(trained):
    _, result = trained
    assert result.report_path == result.path.parent / "reports" / f"{result.path.name}.md"
    text = result.report_path.read_text()
    assert f"k = {result.segmentation.k}" in text
    for name in result.bundle.segment_names:
        assert name in text


def test_retraining_with_another_seed_gives_the_same_segments(trained, demo_dir, tmp_path):
    _config, result = trained
    other = train(demo_config(demo_dir, tmp_path, seed=7), environ={})
    assert other.segmentation.k == result.segmentation.k
    assert other.bundle.segment_names == result.bundle.segment_names
    assert np.mean(other.segmentation.labels == result.segmentation.labels) >= 0.99


def test_k_flag_overrides_the_rule(demo_dir, tmp_path):
    result = train(demo_config(demo_dir, tmp_path, k=3), environ={})
    assert result.segmentation.k == 3
    assert load_bundle(result.path).n_segments == 3


def test_signed_bundle_when_the_key_is_set(demo_dir, tmp_path):
    config = demo_config(demo_dir, tmp_path, k=5)
    result = train(config, environ={config.output.hmac_key_env: "s3cret"})
    assert (result.path / "manifest.sig").is_file()
    assert load_bundle(result.path, hmac_key=b"s3cret").signature_verified


def test_a_failed_run_writes_nothing(demo_dir, tmp_path):
    good = demo_config(demo_dir, tmp_path, k=5)
    first = train(good, environ={})
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"0": "Same", "1": "Same"}))
    bad = dataclasses.replace(
        good, segmentation=dataclasses.replace(good.segmentation, names_file=str(names))
    )
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ConfigError, match="unique"):
        train(bad, environ={})
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert resolve(tmp_path) == first.path


def test_names_file_overrides_generated_names(demo_dir, tmp_path, trained):
    _, reference = trained
    names = tmp_path / "names.toml"
    generated = reference.bundle.segment_names[0]
    names.write_text(f'"{generated}" = "Top Tier"\n1 = "Second"\n')
    config = demo_config(demo_dir, tmp_path / "out")
    config = dataclasses.replace(
        config, segmentation=dataclasses.replace(config.segmentation, names_file=str(names))
    )
    result = train(config, environ={})
    assert result.bundle.segment_names[:2] == ["Top Tier", "Second"]
    assert result.bundle.profiles[0]["name"] == "Top Tier"


def test_response_model_is_compiled_for_serving(trained):
    """Training writes the compiled trees, listed and hashed; loading checks and uses them."""
    config, _ = trained
    bundle = load_current(config.output.root)
    entry = bundle.manifest["compiled_response_model"]
    assert {entry["file"], entry["sample"]} <= set(bundle.manifest["files"])
    assert bundle.compiled_status.compiled, bundle.compiled_status.reason
    assert "compile" in bundle.manifest["timings"]


def test_compiling_can_be_turned_off(demo_dir, tmp_path):
    config = demo_config(demo_dir, tmp_path)
    config = dataclasses.replace(
        config, response_model=dataclasses.replace(config.response_model, compile=False)
    )
    train(config, environ={})
    bundle = load_current(tmp_path)
    assert "compiled_response_model" not in bundle.manifest
    assert not (bundle.path / "response_model.o").exists()
    assert bundle.compiled_forest is None and bundle.response_model is not None
