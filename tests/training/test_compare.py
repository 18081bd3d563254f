"""The algorithm comparison: a row per method, measures that mean what they say, outliers found."""

from __future__ import annotations

import numpy as np
import pytest

from training.compare import METHODS, compare_methods, dbscan_eps, size_balance
from training.config import ComparisonConfig


@pytest.fixture(scope="module")
def blobs():
    """Three tight, well-separated blobs in 3-D and 6 far-away points (ids o0..o5)."""
    rng = np.random.default_rng(3)
    centres = np.array([[0.0, 0.0, 0.0], [8.0, 0.0, 0.0], [0.0, 8.0, 0.0]])
    P = np.vstack([c + rng.normal(0, 0.5, size=(300, 3)) for c in centres])
    far = np.array(
        [
            [30.0, 30.0, 30.0],
            [-30, 25, 30],
            [30, -30, 25],
            [-25, -30, 30],
            [28, 30, -30],
            [-30, 30, -28],
        ]
    )
    P = np.vstack([P, far])
    ids = np.array([f"c{i}" for i in range(900)] + [f"o{i}" for i in range(6)])
    # third feature is what makes the far points unusual in "original units"
    raw = P.copy()
    Z = (P - P.mean(axis=0)) / P.std(axis=0)
    return P, ids, Z, raw


def run(blobs, **config):
    P, ids, Z, raw = blobs
    return compare_methods(
        P,
        3,
        ComparisonConfig(**({"sample": 2000, "seeds": 1} | config)),
        seed=0,
        ids=ids,
        Z=Z,
        raw=raw,
        features=["a", "b", "c"],
    )


def test_one_row_per_method_and_kmeans_is_the_served_one(blobs):
    result = run(blobs)
    assert [m["method"] for m in result["methods"]] == [m.key for m in METHODS]
    served = [m for m in result["methods"] if m["served"]]
    assert [m["method"] for m in served] == ["kmeans"]
    for m in result["methods"]:
        assert m["error"] is None, m
        assert m["fit_seconds"] >= 0
        assert set(m) >= {
            "silhouette",
            "calinski_harabasz",
            "davies_bouldin",
            "size_balance",
            "noise_share",
            "stability_ari",
        }


def test_the_measures_see_the_planted_structure(blobs):
    rows = {m["method"]: m for m in run(blobs)["methods"]}
    for key in ("kmeans", "ward", "gaussian_mixture"):
        assert rows[key]["clusters"] == 3
        assert rows[key]["silhouette"] > 0.5
        assert rows[key]["stability_ari"] > 0.9
    assert rows["kmeans"]["noise_share"] == 0.0
    assert not rows["dbscan"]["assigns_new_customers"]
    assert "compared, not served" in rows["dbscan"]["note"]


def test_density_methods_list_the_far_points_as_outliers(blobs):
    result = run(blobs)
    outliers = result["outliers"]["dbscan"]
    assert outliers["count"] >= 6
    # the most unusual come first: the six far points
    assert set(outliers["ids"][:6]) == {f"o{i}" for i in range(6)}
    # the far points lie 25-30 out on every axis, in both directions
    assert len(outliers["features"]) == 3
    assert all(f["mean_abs_z"] > 1 for f in outliers["features"])
    assert 0 < outliers["share"] < 0.05


def test_the_sample_bounds_the_work(blobs):
    result = run(blobs, sample=200)
    assert result["sample_rows"] == 200 and result["rows"] == 906


def test_kprototypes_joins_when_categoricals_are_given(blobs):
    P, ids, Z, raw = blobs
    codes = np.repeat(np.array([[0.0], [1.0], [2.0]]), 302, axis=0)[: P.shape[0]]
    codes[5, 0] = np.nan
    result = compare_methods(
        P,
        3,
        ComparisonConfig(sample=300, seeds=0, categorical=("kind",)),
        seed=0,
        ids=ids,
        Z=Z,
        raw=raw,
        features=["a", "b", "c"],
        codes=codes,
    )
    row = result["methods"][-1]
    assert row["method"] == "kprototypes" and row["error"] is None
    assert row["clusters"] == 3 and row["assigns_new_customers"]


def test_size_balance():
    assert size_balance(np.array([0, 1, 2] * 10)) == pytest.approx(1.0)
    assert size_balance(np.array([0] * 97 + [1, 2, 3])) < 0.3
    assert size_balance(np.array([0, 0, -1])) is None


def test_dbscan_eps_sits_at_the_knee_of_the_k_distance_curve(blobs):
    P = blobs[0][:900]
    eps = dbscan_eps(P, 6)
    # within-blob neighbour distances are ~0.5; between blobs ~8
    assert 0.1 < eps < 3.0
