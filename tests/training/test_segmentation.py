"""Segmentation stage: the k rule, the silhouette shortcut, K-Means fit, relabelling, stability."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score, silhouette_score

from training.config import SegmentationConfig
from training.segmentation import (
    SILHOUETTE_MARGIN,
    choose_k,
    fit_segmentation,
    knee_point,
    outlier_thresholds,
    relabel_by_size,
    silhouettes,
)

FAST = SegmentationConfig(k_min=2, k_max=7, silhouette_sample=1500, stability_bootstraps=2)


@pytest.fixture(scope="module")
def blobs():
    """Four well-separated blobs of unequal size in 5 dimensions, with their labels."""
    X, y = make_blobs(
        n_samples=[900, 600, 400, 250],
        n_features=5,
        cluster_std=1.0,
        center_box=(-12, 12),
        random_state=3,
    )
    return X, y


def _row(k, inertia, sil, ch=100.0, db=1.0):
    return {
        "k": k,
        "inertia": inertia,
        "silhouette": sil,
        "calinski_harabasz": ch,
        "davies_bouldin": db,
    }


def test_knee_point_finds_the_elbow_of_a_convex_curve():
    ks = list(range(2, 11))
    inertia = [1000, 600, 300, 120, 100, 90, 82, 76, 71]
    assert knee_point(ks, inertia) == 5


def test_knee_point_is_none_for_a_straight_line_or_too_few_points():
    assert knee_point([2, 3, 4, 5], [40, 30, 20, 10]) is None
    assert knee_point([2, 3], [10, 5]) is None


def test_choose_k_takes_best_silhouette_near_the_knee():
    inertia = [1000, 600, 300, 120, 100, 90, 82]
    sils = [0.40, 0.45, 0.50, 0.62, 0.55, 0.41, 0.40]
    table = [_row(k, i, s) for k, i, s in zip(range(2, 9), inertia, sils, strict=True)]
    k, knee, reasoning = choose_k(table)
    assert (k, knee) == (5, 5)
    assert "elbow at k=5" in reasoning


def test_choose_k_lets_a_much_better_silhouette_overrule_the_elbow():
    inertia = [1000, 600, 300, 120, 100, 90, 82]
    sils = [0.30, 0.31, 0.32, 0.33, 0.33, 0.31, 0.33 + SILHOUETTE_MARGIN + 0.05]
    table = [_row(k, i, s) for k, i, s in zip(range(2, 9), inertia, sils, strict=True)]
    k, knee, reasoning = choose_k(table)
    assert knee == 5
    assert k == 8
    assert "clearly better silhouette" in reasoning


def test_choose_k_breaks_silhouette_ties_with_ch_and_db():
    inertia = [1000, 600, 300, 120, 100, 90, 82]
    sils = [0.2, 0.2, 0.2, 0.500, 0.501, 0.2, 0.2]
    # k=5 (index 3) has the better CH and DB, k=6 the marginally better silhouette
    ch = [10, 10, 10, 500, 100, 10, 10]
    db = [2, 2, 2, 0.5, 0.9, 2, 2]
    table = [
        _row(k, i, s, c, d)
        for k, i, s, c, d in zip(range(2, 9), inertia, sils, ch, db, strict=True)
    ]
    assert choose_k(table)[0] == 5


def test_silhouettes_match_scikit_learn(blobs):
    X, _ = blobs
    X = X[:800]
    labelings = [KMeans(k, n_init=1, random_state=0).fit(X).labels_ for k in (2, 3, 5)]
    ours = silhouettes(X, labelings, chunk=300)
    theirs = [silhouette_score(X, lab) for lab in labelings]
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_silhouette_of_a_singleton_cluster_counts_zero():
    X = np.array([[0.0], [0.1], [0.2], [10.0]])
    lab = np.array([0, 0, 0, 1])
    np.testing.assert_allclose(silhouettes(X, [lab]), [silhouette_score(X, lab)], atol=1e-6)


def test_fit_recovers_planted_clusters_and_k(blobs):
    X, y = blobs
    seg = fit_segmentation(X, FAST)
    assert seg.k == 4
    assert seg.selection.chosen == 4 and not seg.selection.overridden
    assert adjusted_rand_score(y, seg.labels) >= 0.99
    assert [r["k"] for r in seg.selection.table] == list(range(2, 8))
    assert seg.stability["bootstraps"] == 2
    assert seg.stability["ari_min"] >= 0.95


def test_segment_ids_are_ordered_by_size(blobs):
    X, _ = blobs
    seg = fit_segmentation(X, FAST)
    sizes = np.bincount(seg.labels)
    assert list(sizes) == sorted(sizes, reverse=True)
    # the stored model agrees with the stored labels after relabelling
    P = seg.pca.transform(seg.scaler.transform(X))
    np.testing.assert_array_equal(seg.kmeans.predict(P), seg.labels)


def test_reseeding_gives_the_same_segments(blobs):
    X, _ = blobs
    a = fit_segmentation(X, FAST)
    b = fit_segmentation(X, dataclasses.replace(FAST, seed=FAST.seed + 101))
    assert a.k == b.k
    # same ids, not merely the same partition: ids are tied to segment sizes
    assert np.mean(a.labels == b.labels) >= 0.99


def test_k_override_is_used_and_recorded(blobs):
    X, _ = blobs
    seg = fit_segmentation(X, dataclasses.replace(FAST, k=3))
    assert seg.k == 3
    assert seg.selection.overridden
    assert "set by configuration" in seg.selection.reasoning
    assert len(seg.selection.table) == 6  # the evidence is still computed


def test_pca_keeps_the_requested_variance(blobs):
    X, _ = blobs
    seg = fit_segmentation(X, dataclasses.replace(FAST, pca_variance=0.8))
    kept = np.sum(seg.pca.explained_variance_ratio_)
    assert kept >= 0.8
    fewer = seg.pca.n_components_ - 1
    assert fewer == 0 or np.sum(seg.pca.explained_variance_ratio_[:fewer]) < 0.8
    fixed = fit_segmentation(X, dataclasses.replace(FAST, pca_components=2, k=4))
    assert fixed.pca.n_components_ == 2


def test_input_matrix_is_not_modified(blobs):
    X, _ = blobs
    before = X.copy()
    fit_segmentation(X, FAST)
    np.testing.assert_array_equal(X, before)


def test_outlier_threshold_is_the_distance_quantile_per_segment(blobs):
    X, _ = blobs
    seg = fit_segmentation(X, FAST)
    for s in range(seg.k):
        d = seg.distances[seg.labels == s]
        assert seg.outlier_thresholds[s] == pytest.approx(np.quantile(d, FAST.outlier_quantile))
        assert np.mean(d > seg.outlier_thresholds[s]) <= 1 - FAST.outlier_quantile + 0.01


def test_outlier_thresholds_of_an_empty_segment_are_zero():
    t = outlier_thresholds(np.array([1.0, 2.0, 3.0]), np.array([0, 0, 2]), 3, 0.5)
    assert t[1] == 0.0 and t[0] == pytest.approx(1.5) and t[2] == pytest.approx(3.0)


def test_relabel_by_size_permutes_centres_consistently():
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(0, 0.1, (10, 2)), rng.normal(5, 0.1, (30, 2))])
    km = KMeans(2, n_init=1, random_state=0).fit(X)
    labels = relabel_by_size(km, km.labels_)
    assert np.bincount(labels).tolist() == [30, 10]
    np.testing.assert_array_equal(km.predict(X), labels)


def test_too_few_rows_is_an_error_naming_the_numbers():
    with pytest.raises(ValueError, match="n_samples=2"):
        fit_segmentation(np.zeros((2, 3)), FAST)


def test_choose_k_never_picks_a_k_with_a_segment_under_the_minimum_share():
    inertia = [1000, 600, 300, 120, 100, 90, 82]
    sils = [0.40, 0.45, 0.50, 0.62, 0.55, 0.41, 0.40]
    shares = [0.3, 0.2, 0.1, 0.004, 0.05, 0.03, 0.02]  # k=5, the rule's pick, has a 0.4% segment
    table = [
        _row(k, i, s) | {"min_share": m}
        for k, i, s, m in zip(range(2, 9), inertia, sils, shares, strict=True)
    ]
    k, knee, reasoning = choose_k(table, min_share=0.01)
    assert knee == 5 and k == 6
    assert "not chosen: k=5 (a segment under 1% of customers)" in reasoning
    assert [r["too_small"] for r in table] == [False, False, False, True, False, False, False]
    assert choose_k(table, min_share=0.0)[0] == 5


def test_choose_k_says_so_when_every_k_has_a_tiny_segment():
    inertia = [1000, 600, 300, 120, 100, 90, 82]
    sils = [0.40, 0.45, 0.50, 0.62, 0.55, 0.41, 0.40]
    table = [
        _row(k, i, s) | {"min_share": 0.001}
        for k, i, s in zip(range(2, 9), inertia, sils, strict=True)
    ]
    k, _, reasoning = choose_k(table, min_share=0.01)
    assert k == 5
    assert "every k searched has a segment under 1%" in reasoning


def test_a_handful_of_far_customers_do_not_become_a_segment(blobs):
    X, _ = blobs
    far = 80.0 + np.random.default_rng(0).normal(size=(3, X.shape[1]))
    X = np.vstack([X, far])  # 3 of 2,153 customers (0.14%) far from everyone
    config = SegmentationConfig(k_min=2, k_max=6, stability_bootstraps=0, seed=0)
    seg = fit_segmentation(X, config)
    sizes = np.bincount(seg.labels)
    assert sizes.min() / len(X) >= 0.01
    assert any(r["too_small"] for r in seg.selection.table)
    free = fit_segmentation(X, dataclasses.replace(config, min_segment_share=0.0))
    assert free.selection.chosen != seg.selection.chosen
