"""Algorithm comparison: the served K-Means against other clustering methods on the same features.

Every method is fitted on one seeded random sample of the rows in the bundle's PCA space (the
features the served K-Means sees), so the quadratic methods stay affordable and every method is
measured on exactly the same points:

========================  ==========================================================  =========
method                    how                                                         assigns
                                                                                      new rows
========================  ==========================================================  =========
K-Means                   ``sklearn.cluster.KMeans`` with the chosen k                yes
MiniBatch K-Means         ``sklearn.cluster.MiniBatchKMeans``                         yes
Gaussian mixture          ``sklearn.mixture.GaussianMixture`` (full covariances)      yes
DBSCAN                    ``min_samples`` = 2 x dimensions; eps at the knee of the    no
                          sorted k-distance curve (kneedle, as for k)
HDBSCAN                   ``sklearn.cluster.HDBSCAN``, min cluster size 1% of rows    no
Ward agglomerative        ``scipy.cluster.hierarchy.linkage(method="ward")`` cut at k  no
spectral                  ``sklearn.cluster.SpectralClustering`` (k-NN affinity)      no
k-prototypes              ``kmodes.kprototypes.KPrototypes`` with the categoricals    yes
                          named in ``comparison.categorical`` (only then)
========================  ==========================================================  =========

Measures per method: silhouette, Calinski-Harabasz and Davies-Bouldin on the clustered rows
(noise left out), size balance (entropy of the cluster shares over log(number of clusters):
1 = equal sizes), the noise share, stability (mean adjusted Rand index between the fit and
refits on 80% sub-samples with other seeds, on the shared rows) and fit time. Methods that cannot
assign a new customer are compared, never served. DBSCAN's and HDBSCAN's noise points are the
outliers: their count, share, a few customer ids and the features that set them apart.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from sklearn.cluster import DBSCAN, HDBSCAN, KMeans, MiniBatchKMeans, SpectralClustering
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import (
    adjusted_rand_score,
    calinski_harabasz_score,
    davies_bouldin_score,
    silhouette_score,
)
from sklearn.mixture import GaussianMixture
from sklearn.neighbors import NearestNeighbors
from threadpoolctl import threadpool_limits

from training.config import ComparisonConfig
from training.segmentation import knee_point

log = logging.getLogger(__name__)

#: share of the sample each stability refit sees
STABILITY_SHARE = 0.8
#: customer ids listed per outlier method
OUTLIER_IDS = 10
#: features named per outlier method (largest mean |z| of the outliers)
OUTLIER_FEATURES = 3
#: rows on which each method's silhouette is measured (a seeded sub-sample of the clustered rows)
SILHOUETTE_ROWS = 1_000
#: the method the service answers with unless the config serves the mixture
SERVED = "kmeans"


@dataclass(frozen=True)
class Method:
    """One clustering method of the comparison."""

    key: str
    label: str
    #: True when a fitted model can assign a customer it has not seen (so it could be served)
    assigns_new: bool
    #: fit on (rows, k, seed) -> labels, -1 for noise
    fit: Callable[[np.ndarray, int, int], np.ndarray]
    note: str = ""


def _kmeans(X: np.ndarray, k: int, seed: int) -> np.ndarray:
    return KMeans(n_clusters=k, n_init=3, random_state=seed).fit_predict(X)


def _minibatch(X: np.ndarray, k: int, seed: int) -> np.ndarray:
    return MiniBatchKMeans(n_clusters=k, n_init=3, random_state=seed, batch_size=1024).fit_predict(
        X
    )


def _gmm(X: np.ndarray, k: int, seed: int) -> np.ndarray:
    return GaussianMixture(n_components=k, covariance_type="full", random_state=seed).fit_predict(X)


def dbscan_eps(X: np.ndarray, min_samples: int) -> float:
    """eps at the knee of the sorted distances to the ``min_samples``-th neighbour (kneedle).

    The knee is :func:`training.segmentation.knee_point`'s (the k rule's kneedle: the point of
    the normalized convex curve farthest from its chord). The ``kneed`` package did the same
    here until a measurement: importing it imports ``matplotlib.pyplot``, 1.7 s of a 4.1 s
    comparison stage on a busy machine (bench/RESULTS.md, issue 13).
    """
    nn = NearestNeighbors(n_neighbors=min_samples).fit(X)
    dist = np.sort(nn.kneighbors(X)[0][:, -1])
    at = knee_point(list(range(dist.size)), dist.tolist())
    knee = None if at is None else dist[at]
    # no knee (a straight curve): the 95th percentile keeps most rows in clusters
    eps = float(knee) if knee is not None and knee > 0 else float(np.quantile(dist, 0.95))
    return max(eps, 1e-9)


def _dbscan(X: np.ndarray, k: int, seed: int) -> np.ndarray:
    min_samples = max(4, 2 * X.shape[1])
    return DBSCAN(eps=dbscan_eps(X, min_samples), min_samples=min_samples).fit_predict(X)


def _hdbscan(X: np.ndarray, k: int, seed: int) -> np.ndarray:
    return HDBSCAN(min_cluster_size=max(5, X.shape[0] // 100), copy=True).fit_predict(X)


def _ward(X: np.ndarray, k: int, seed: int) -> np.ndarray:
    return fcluster(linkage(X, method="ward"), t=k, criterion="maxclust").astype(int) - 1


def _spectral(X: np.ndarray, k: int, seed: int) -> np.ndarray:
    return SpectralClustering(
        n_clusters=k,
        affinity="nearest_neighbors",
        n_neighbors=min(10, X.shape[0] - 1),
        assign_labels="cluster_qr",
        random_state=seed,
    ).fit_predict(X)


METHODS: tuple[Method, ...] = (
    Method("kmeans", "K-Means", True, _kmeans),
    Method("minibatch_kmeans", "MiniBatch K-Means", True, _minibatch),
    Method("gaussian_mixture", "Gaussian mixture", True, _gmm),
    Method("dbscan", "DBSCAN", False, _dbscan, "eps from the k-distance knee"),
    Method("hdbscan", "HDBSCAN", False, _hdbscan),
    Method("ward", "Ward agglomerative", False, _ward),
    Method("spectral", "spectral", False, _spectral),
)


def kprototypes_method(codes: np.ndarray) -> Method:
    """k-prototypes over the numeric rows plus the categorical ``codes`` of the same rows.

    ``codes`` holds every row of the table; the fit receives row positions appended as the last
    numeric column, so sub-samples find their own codes.
    """

    def fit(X: np.ndarray, k: int, seed: int) -> np.ndarray:
        from kmodes.kprototypes import KPrototypes

        rows = X[:, -1].astype(np.intp)
        numeric = X[:, :-1]
        cats = np.where(np.isnan(codes[rows]), -1, codes[rows]).astype(int)
        data = np.hstack([numeric, cats]).astype(object)
        cat_cols = list(range(numeric.shape[1], data.shape[1]))
        model = KPrototypes(n_clusters=k, init="Cao", n_init=1, max_iter=20, random_state=seed)
        return np.asarray(model.fit_predict(data, categorical=cat_cols), dtype=int)

    return Method(
        "kprototypes", "k-prototypes", True, fit, "numeric and categorical features (kmodes)"
    )


# ---- measures ---------------------------------------------------------------------------------
def size_balance(labels: np.ndarray) -> float | None:
    """Entropy of the cluster shares over log(number of clusters); 1 = equal sizes."""
    sizes = np.bincount(labels[labels >= 0]) if np.any(labels >= 0) else np.array([])
    sizes = sizes[sizes > 0]
    if sizes.size < 2:
        return None
    p = sizes / sizes.sum()
    return float(-(p * np.log(p)).sum() / np.log(sizes.size))


def cluster_measures(X: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Silhouette, CH, DB on the clustered rows (noise left out), sizes, balance, noise share."""
    clustered = labels >= 0
    n_clusters = int(np.unique(labels[clustered]).size)
    out: dict[str, Any] = {
        "clusters": n_clusters,
        "noise_share": float(1.0 - clustered.mean()),
        "size_balance": size_balance(labels),
        "smallest_share": None,
        "silhouette": None,
        "calinski_harabasz": None,
        "davies_bouldin": None,
    }
    if n_clusters >= 1:
        sizes = np.bincount(labels[clustered])
        out["smallest_share"] = float(sizes[sizes > 0].min() / labels.size)
    if 2 <= n_clusters < clustered.sum():
        Xc, lc = X[clustered], labels[clustered]
        out["silhouette"] = float(
            silhouette_score(Xc, lc, sample_size=min(SILHOUETTE_ROWS, lc.size), random_state=0)
        )
        out["calinski_harabasz"] = float(calinski_harabasz_score(Xc, lc))
        out["davies_bouldin"] = float(davies_bouldin_score(Xc, lc))
    return out


def stability(
    method: Method, X: np.ndarray, k: int, base: np.ndarray, seed: int, seeds: int
) -> float | None:
    """Mean ARI between ``base`` and refits on 80% sub-samples with other seeds (shared rows)."""
    if seeds <= 0:
        return None
    scores = []
    for r in range(1, seeds + 1):
        rng = np.random.default_rng(seed + 1000 + r)
        idx = np.sort(rng.choice(X.shape[0], size=int(STABILITY_SHARE * X.shape[0]), replace=False))
        labels = method.fit(X[idx], k, seed + r)
        scores.append(float(adjusted_rand_score(base[idx], labels)))
    return float(np.mean(scores))


def describe_outliers(
    mask: np.ndarray,
    ids: np.ndarray,
    Z: np.ndarray,
    raw: np.ndarray,
    features: list[str],
) -> dict[str, Any]:
    """Count, share, the most unusual ids and the features where the flagged rows differ most.

    ``Z`` are the standardized cluster features of the sample rows, ``raw`` the same features
    in original units. Outliers may lie out in either direction, so a feature's score is the
    outliers' mean absolute z-score; ids are listed most unusual (largest mean |z|) first.
    """
    count = int(mask.sum())
    absz = np.abs(Z[mask])
    order = np.argsort(-absz.mean(axis=1), kind="stable") if count else np.array([], dtype=int)
    out: dict[str, Any] = {
        "count": count,
        "share": float(mask.mean()) if mask.size else 0.0,
        "ids": [str(i) for i in ids[mask][order][:OUTLIER_IDS]],
        "features": [],
    }
    if count:
        score = absz.mean(axis=0)
        for j in np.argsort(-score, kind="stable")[:OUTLIER_FEATURES]:
            out["features"].append(
                {
                    "feature": features[j],
                    "mean_abs_z": round(float(score[j]), 3),
                    "outlier_median": float(np.median(raw[mask, j])),
                    "population_median": float(np.median(raw[:, j])),
                }
            )
    return out


# ---- the comparison ---------------------------------------------------------------------------
def sample_rows(n: int, size: int, seed: int) -> np.ndarray:
    """Sorted positions of a seeded random sample of ``size`` rows (all rows when fewer)."""
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed + 4242).choice(n, size=size, replace=False))


# Every fit here sees a sample of a few thousand rows: one thread (OpenMP and BLAS). A second
# one saves nothing at this size, and on a busy machine its barrier waits made the comparison
# 5-9x slower (K-Means, MiniBatch, the mixture's k-means init; bench/RESULTS.md, issue 13).
@threadpool_limits.wrap(limits=1)
def compare_methods(
    P: np.ndarray,
    k: int,
    config: ComparisonConfig,
    *,
    seed: int,
    ids: np.ndarray,
    Z: np.ndarray,
    raw: np.ndarray,
    features: list[str],
    codes: np.ndarray | None = None,
    served: str = SERVED,
) -> dict[str, Any]:
    """Fit and measure every method on one sample of the PCA rows ``P``; the manifest's record.

    ``ids`` (customer ids), ``Z`` (standardized cluster features) and ``raw`` (cluster features in
    original units) hold every row like ``P``; ``codes`` the categorical codes when k-prototypes
    is asked for (``config.categorical``, columns in that order).
    """
    rows = sample_rows(P.shape[0], config.sample, seed)
    X = P[rows]
    methods = list(METHODS)
    if config.categorical and codes is not None:
        methods.append(kprototypes_method(codes))
    results = []
    outliers: dict[str, Any] = {}
    for method in methods:
        data = (
            np.hstack([X, rows[:, None].astype(np.float64)]) if method.key == "kprototypes" else X
        )
        effective_k = min(k, X.shape[0] - 1)
        start = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                warnings.simplefilter("ignore", UserWarning)
                labels = np.asarray(method.fit(data, effective_k, seed), dtype=int)
                seconds = time.perf_counter() - start
                stable = stability(method, data, effective_k, labels, seed, config.seeds)
        except (ValueError, MemoryError, np.linalg.LinAlgError) as exc:
            # one method failing on an odd table must not stop training: the row says why
            log.warning("comparison: %s failed: %s", method.label, exc)
            results.append(_row(method, served, None, None, time.perf_counter() - start, str(exc)))
            continue
        measures = cluster_measures(X, labels)
        results.append(_row(method, served, measures, stable, seconds))
        if method.key in ("dbscan", "hdbscan"):
            outliers[method.key] = describe_outliers(
                labels < 0, ids[rows], Z[rows], raw[rows], features
            )
        log.info(
            "comparison: %s in %.2f s, silhouette %s, noise %.1f%%",
            method.label,
            seconds,
            "n/a" if measures["silhouette"] is None else f"{measures['silhouette']:.3f}",
            100 * measures["noise_share"],
        )
    return {
        "sample_rows": int(rows.size),
        "rows": int(P.shape[0]),
        "k": int(k),
        "seeds": int(config.seeds),
        "served": served,
        "methods": results,
        "outliers": outliers,
        "space": f"the bundle's PCA space ({P.shape[1]} components)",
    }


def _row(
    method: Method,
    served: str,
    measures: dict[str, Any] | None,
    stable: float | None,
    seconds: float,
    error: str | None = None,
) -> dict[str, Any]:
    note = method.note
    if not method.assigns_new:
        note = "; ".join(filter(None, [note, "cannot assign new customers: compared, not served"]))
    return {
        "method": method.key,
        "label": method.label,
        "served": method.key == served,
        "assigns_new_customers": method.assigns_new,
        **(measures or {}),
        "stability_ari": stable,
        "fit_seconds": round(seconds, 3),
        "note": note,
        "error": error,
    }
