"""The bundle format: round trip, atomic `current`, and refusal of anything unverified."""

from __future__ import annotations

import json
import os

import joblib
import numpy as np
import pytest
from bundle_builder import build_bundle

from scoring import bundle as bundle_format
from scoring.bundle import BundleError, list_versions, load_bundle, load_current, set_current


def test_round_trip_restores_every_part(fresh_bundle_root):
    loaded = load_current(fresh_bundle_root)
    assert loaded.version == "v1"
    assert loaded.n_segments == 3 == len(loaded.profiles)
    assert [c.id for c in loaded.campaigns] == ["cashback", "savings_plan", "win_back", "wealth"]
    assert loaded.schema.input_names[0] == "total_spend"
    manifest = loaded.manifest
    assert set(manifest["files"]) >= {"kmeans.joblib", "response_model.txt", "profiles.json"}
    assert manifest["library_versions"]["scikit-learn"]
    # LightGBM's own text model is the same model as the pickle
    import lightgbm as lgb

    text_model = lgb.Booster(model_file=str(loaded.path / "response_model.txt"))
    x = np.zeros((2, len(loaded.schema.response_model_columns)))
    np.testing.assert_allclose(text_model.predict(x), loaded.response_model.predict(x))


def test_new_bundle_switches_current_and_keeps_the_old(fresh_bundle_root):
    build_bundle(fresh_bundle_root, n=800, seed=5, version="v2")
    assert list_versions(fresh_bundle_root) == ["v1", "v2"]
    assert load_current(fresh_bundle_root).version == "v2"
    set_current(fresh_bundle_root, "v1")
    assert load_current(fresh_bundle_root).version == "v1"
    assert load_current(fresh_bundle_root, "v2").version == "v2"


def test_tampered_file_is_refused_before_unpickling(fresh_bundle_root):
    path = fresh_bundle_root / "v1" / "kmeans.joblib"
    # a pickle that would run code if loaded: verification must stop it first
    with open(path, "wb") as fh:
        joblib.dump(_Boom(), fh)
    with pytest.raises(BundleError, match=r"kmeans.joblib: SHA-256 .* does not match"):
        load_current(fresh_bundle_root)


class _Boom:
    def __reduce__(self):
        return (os.system, ("echo PWNED > /dev/null",))


def test_missing_file_is_refused(fresh_bundle_root):
    (fresh_bundle_root / "v1" / "pca.joblib").unlink()
    with pytest.raises(BundleError, match=r"pca.joblib: listed in the manifest but missing"):
        load_current(fresh_bundle_root)


def test_unlisted_pickle_is_refused(fresh_bundle_root):
    joblib.dump({"x": 1}, fresh_bundle_root / "v1" / "extra.joblib")
    with pytest.raises(BundleError, match=r"not in the manifest: extra.joblib"):
        load_current(fresh_bundle_root)


def test_manifest_edit_is_refused(fresh_bundle_root):
    mpath = fresh_bundle_root / "v1" / "manifest.json"
    manifest = json.loads(mpath.read_text())
    del manifest["files"]["scaler.joblib"]
    mpath.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"scaler.joblib is not listed"):
        load_current(fresh_bundle_root)


def test_library_version_mismatch_is_refused(fresh_bundle_root):
    mpath = fresh_bundle_root / "v1" / "manifest.json"
    manifest = json.loads(mpath.read_text())
    manifest["library_versions"]["scikit-learn"] = "0.1.0"
    mpath.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"written with scikit-learn 0.1.0"):
        load_current(fresh_bundle_root)


def test_hmac_signature(tmp_path):
    key = b"k" * 32
    bundle = build_bundle(tmp_path / "unsigned", n=500, version="u")
    bundle_format.write_bundle(bundle, tmp_path / "signed", version="s", hmac_key=key)
    assert load_current(tmp_path / "signed", hmac_key=key).signature_verified
    with pytest.raises(BundleError, match=r"signature does not match"):
        load_current(tmp_path / "signed", hmac_key=b"other-key")
    with pytest.raises(BundleError, match=r"unsigned bundle"):
        load_current(tmp_path / "unsigned", hmac_key=key)


def test_failed_write_leaves_nothing(fresh_bundle_root, monkeypatch):
    bundle = load_current(fresh_bundle_root)

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(bundle_format, "dump_json", fail)
    with pytest.raises(OSError, match=r"disk full"):
        bundle_format.write_bundle(bundle, fresh_bundle_root, version="v3")
    assert list_versions(fresh_bundle_root) == ["v1"]
    assert sorted(p.name for p in fresh_bundle_root.iterdir()) == ["current", "v1"]
    assert load_current(fresh_bundle_root).version == "v1"


def test_bad_version_names_and_missing_root(tmp_path):
    with pytest.raises(BundleError, match=r"no current bundle"):
        load_current(tmp_path)
    with pytest.raises(BundleError, match=r"invalid bundle version"):
        load_current(tmp_path, "../etc")
    with pytest.raises(BundleError, match=r"missing"):
        load_bundle(tmp_path / "nope")
