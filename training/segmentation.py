"""Segmentation stage: scaling, PCA, the k search, K-Means, stability and outlier thresholds.

Input is the clustering matrix (``scoring.features.cluster_matrix``: cluster features with
log1p applied). The chain fitted here is exactly what serving applies:
``StandardScaler -> PCA -> KMeans``; distances are measured in PCA space.

How k is chosen (the rule, recorded with its evidence in the bundle manifest)
---------------------------------------------------------------------------
For every k in ``k_min..k_max`` a K-Means is fitted on a fixed random sample of at most
``search_sample`` rows, and four measures are taken on it:

* inertia (within-cluster sum of squares) -- the elbow curve;
* silhouette, on a fixed sub-sample of ``silhouette_sample`` rows so its cost does not grow
  with the table;
* Calinski-Harabasz (higher is better) and Davies-Bouldin (lower is better) on the sample.

1. The *knee* of the elbow curve is found with the kneedle construction: k and inertia are
   both scaled to [0, 1] and the knee is the k farthest below the chord joining the first and
   the last point of the curve.
2. The candidates are the k within +-1 of the knee; among them the one with the best
   silhouette wins.
3. If some other k has a silhouette better by more than ``SILHOUETTE_MARGIN`` (absolute), the
   elbow is overruled and that k is chosen: well-separated clusters beat a soft knee.
4. Silhouettes within ``SILHOUETTE_TIE`` of each other count as a tie, broken by the better
   Calinski-Harabasz rank plus Davies-Bouldin rank, then by the smaller k.

``k`` in the config (``--k``) overrides the rule; the evidence is still computed and saved.

After the choice the final K-Means is fitted on *all* rows, started from the centres the
search found for that k (so one Lloyd run suffices). Segment ids are then relabelled by size,
largest first (ties by centroid coordinates), so ids do not depend on K-Means' arbitrary
cluster order and are stable under reseeding. Stability is the adjusted Rand index between
the final model and K-Means refits on bootstrap samples, evaluated on a fixed sample of rows.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import (
    adjusted_rand_score,
    calinski_harabasz_score,
    davies_bouldin_score,
)
from sklearn.mixture import GaussianMixture
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from scoring.mixture import MixtureRule
from training.config import SegmentationConfig
from training.validate import TableError

log = logging.getLogger(__name__)

#: a silhouette better by more than this overrules the elbow (rule step 3)
SILHOUETTE_MARGIN = 0.05
#: silhouettes closer than this are a tie (rule step 4)
SILHOUETTE_TIE = 0.005
#: rows on which bootstrap refits are compared with the final model
STABILITY_EVAL_ROWS = 20_000
#: below this many rows the fit runs on one OpenMP thread
SINGLE_THREAD_ROWS = 50_000
TABLE_COLUMNS = (
    "k",
    "inertia",
    "silhouette",
    "calinski_harabasz",
    "davies_bouldin",
    "min_share",
)


@dataclass
class KSelection:
    """The evidence of the k search and the choice made from it."""

    #: one dict per k: k, inertia, silhouette, calinski_harabasz, davies_bouldin, min_share
    #: (smallest segment's share of the searched rows) and too_small (excluded by the guard)
    table: list[dict[str, float]]
    knee: int | None
    chosen: int
    reasoning: str
    overridden: bool = False
    search_rows: int = 0
    silhouette_rows: int = 0
    #: quality problems of the chosen segmentation (also in the manifest's warnings)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form for the manifest."""
        return {
            "rule": "knee of the elbow (kneedle) +-1, best silhouette; silhouette better by "
            f">{SILHOUETTE_MARGIN} elsewhere overrules; ties (<{SILHOUETTE_TIE}) by CH+DB rank; "
            "a k whose smallest segment is under min_segment_share is not chosen",
            "table": self.table,
            "knee": self.knee,
            "chosen_k": self.chosen,
            "reasoning": self.reasoning,
            "overridden": self.overridden,
            "search_rows": self.search_rows,
            "silhouette_rows": self.silhouette_rows,
        }


@dataclass
class Segmentation:
    """The fitted clustering chain and what it says about the training rows."""

    scaler: StandardScaler
    pca: PCA
    kmeans: KMeans
    #: (n,) segment id of every training row (after relabelling by size)
    labels: np.ndarray
    #: (n,) distance of every training row to its centroid in PCA space
    distances: np.ndarray
    #: (k,) per-segment outlier threshold on that distance
    outlier_thresholds: np.ndarray
    selection: KSelection
    stability: dict[str, Any] = field(default_factory=dict)
    #: seconds per sub-stage: pca, k_search, final_fit, stability (and mixture)
    timings: dict[str, float] = field(default_factory=dict)
    #: the served Gaussian mixture (``segmentation.model = "gaussian_mixture"``), else None;
    #: ``labels``, ``distances`` and ``outlier_thresholds`` then follow the mixture
    mixture: GaussianMixture | None = None

    @property
    def k(self) -> int:
        """Number of segments."""
        return int(self.kmeans.n_clusters)


# ---- the k rule (pure, testable on a table alone) -------------------------------------------
def knee_point(ks: list[int], inertia: list[float]) -> int | None:
    """The k of a decreasing, convex elbow curve farthest below its chord (kneedle); or None."""
    if len(ks) < 3:
        return None
    x = np.asarray(ks, dtype=np.float64)
    y = np.asarray(inertia, dtype=np.float64)
    span_x, span_y = x[-1] - x[0], y.max() - y.min()
    if span_x <= 0 or span_y <= 0:
        return None
    xn = (x - x[0]) / span_x
    yn = (y - y.min()) / span_y
    # chord from (0, yn[0]) to (1, yn[-1]); for a convex decreasing curve the knee is the
    # point with the largest vertical gap below it
    chord = yn[0] + (yn[-1] - yn[0]) * xn
    gap = chord - yn
    i = int(np.argmax(gap))
    if gap[i] <= 1e-9:  # a straight line (up to rounding) has no knee
        return None
    return int(ks[i])


def choose_k(table: list[dict[str, float]], min_share: float = 0.0) -> tuple[int, int | None, str]:
    """Apply the documented rule to the evidence table; return (k, knee, reasoning).

    A k whose smallest segment holds under ``min_share`` of the rows (the table's ``min_share``
    column) is not chosen; its row gets ``too_small = True``. When every k has such a segment,
    the rule runs on all of them and the reasoning says so.
    """
    ks = [int(r["k"]) for r in table]
    sil = {int(r["k"]): float(r["silhouette"]) for r in table}
    ch_rank = _ranks([r["calinski_harabasz"] for r in table], higher_is_better=True)
    db_rank = _ranks([r["davies_bouldin"] for r in table], higher_is_better=False)
    combined = {k: ch_rank[i] + db_rank[i] for i, k in enumerate(ks)}
    small = {int(r["k"]) for r in table if float(r.get("min_share", 1.0)) < min_share}
    for r in table:
        if "min_share" in r:
            r["too_small"] = int(r["k"]) in small
    allowed = [k for k in ks if k not in small]
    guard = ""
    if small:
        listed = ", ".join(f"k={k}" for k in sorted(small))
        guard = f"; not chosen: {listed} (a segment under {100 * min_share:g}% of customers)"
    if not allowed:
        allowed = ks
        guard = (
            f"; every k searched has a segment under {100 * min_share:g}% of customers, "
            "so none was excluded"
        )

    def best_of(candidates: list[int]) -> int:
        top = max(sil[k] for k in candidates)
        tied = [k for k in candidates if sil[k] >= top - SILHOUETTE_TIE]
        return min(tied, key=lambda k: (combined[k], k))

    knee = knee_point(ks, [r["inertia"] for r in table])
    if knee is None:
        k = best_of(allowed)
        return k, None, f"no clear elbow; k={k} has the best silhouette ({sil[k]:.3f})" + guard
    near = [k for k in allowed if abs(k - knee) <= 1]
    k_all = best_of(allowed)
    if not near:
        return (
            k_all,
            knee,
            f"elbow at k={knee}, but no k near it is allowed; k={k_all} has the best "
            f"silhouette of the others ({sil[k_all]:.3f})" + guard,
        )
    k_near = best_of(near)
    if sil[k_all] > sil[k_near] + SILHOUETTE_MARGIN:
        return (
            k_all,
            knee,
            f"elbow at k={knee}, but k={k_all} has a clearly better silhouette "
            f"({sil[k_all]:.3f} vs {sil[k_near]:.3f} at k={k_near})" + guard,
        )
    others = ", ".join(f"k={k}: {sil[k]:.3f}" for k in near if k != k_near)
    return (
        k_near,
        knee,
        f"elbow at k={knee}; k={k_near} has the best silhouette near it ({sil[k_near]:.3f}"
        + (f"; {others}" if others else "")
        + ")"
        + guard,
    )


def _ranks(values: list[float], *, higher_is_better: bool) -> list[int]:
    order = np.argsort(
        -np.asarray(values) if higher_is_better else np.asarray(values), kind="stable"
    )
    ranks = np.empty(len(values), dtype=int)
    ranks[order] = np.arange(len(values))
    return ranks.tolist()


# ---- fitting ---------------------------------------------------------------------------------
def fit_projection(X: np.ndarray, config: SegmentationConfig) -> tuple[StandardScaler, PCA]:
    """Fit the scaler and the PCA (components for >= ``pca_variance`` unless fixed)."""
    scaler = StandardScaler().fit(X)
    Z = scaler.transform(X)
    n_features = Z.shape[1]
    if config.pca_components:
        n_comp = min(int(config.pca_components), n_features)
    else:
        full = PCA(svd_solver="covariance_eigh").fit(Z)
        n_comp = components_for(full.explained_variance_ratio_, config)
    pca = PCA(n_components=n_comp, svd_solver="covariance_eigh").fit(Z)
    return scaler, pca


def components_for(explained_variance_ratio: np.ndarray, config: SegmentationConfig) -> int:
    """PCA components kept: ``pca_components`` when fixed, else the fewest that explain at
    least ``pca_variance`` (ratios of the full decomposition, largest first)."""
    n_features = len(explained_variance_ratio)
    if config.pca_components:
        return min(int(config.pca_components), n_features)
    cum = np.cumsum(explained_variance_ratio)
    n_comp = int(np.searchsorted(cum, config.pca_variance - 1e-12) + 1)
    return max(1, min(n_comp, n_features))


def search_k(
    P: np.ndarray, config: SegmentationConfig, n_distinct: int | None = None
) -> tuple[list[dict[str, float]], dict[int, np.ndarray], int, int]:
    """Fit K-Means for every k on a sample of the PCA rows and measure each fit.

    ``n_distinct`` (distinct customers, when known) caps k: more clusters than distinct points
    only split duplicates (K-Means warns, and the measures are meaningless). Returns the evidence table, the centres found for each k, and the sample sizes used.
    """
    n = P.shape[0]
    rng = np.random.default_rng(config.seed)
    search_idx = _sample(rng, n, config.search_sample)
    S = P[search_idx] if search_idx is not None else P
    sil_idx = _sample(rng, S.shape[0], config.silhouette_sample)
    k_max = min(config.k_max, S.shape[0] - 1, n_distinct or S.shape[0])
    if k_max < config.k_max:
        log.info(
            "k search: k_max lowered from %d to %d (%d rows searched, %s distinct)",
            config.k_max,
            k_max,
            S.shape[0],
            n_distinct,
        )
    sil_X = S if sil_idx is None else S[sil_idx]
    rows: list[dict[str, float]] = []
    sil_labelings: list[np.ndarray] = []
    centers: dict[int, np.ndarray] = {}
    for k in range(config.k_min, k_max + 1):
        km = KMeans(n_clusters=k, n_init=config.n_init, random_state=config.seed).fit(S)
        labels = km.labels_
        sil_labelings.append(labels if sil_idx is None else labels[sil_idx])
        rows.append(
            {
                "k": k,
                "inertia": float(km.inertia_),
                "calinski_harabasz": float(calinski_harabasz_score(S, labels)),
                "davies_bouldin": float(davies_bouldin_score(S, labels)),
                # share of the searched rows in the smallest segment (the quality guard)
                "min_share": float(np.bincount(labels, minlength=k).min() / S.shape[0]),
            }
        )
        centers[k] = km.cluster_centers_
        log.info("k search: fitted k=%d (inertia %.4g)", k, km.inertia_)
    # one pass over the pairwise distances of the silhouette sample serves every k
    for row, sil in zip(rows, silhouettes(sil_X, sil_labelings), strict=True):
        row["silhouette"] = sil
        log.info(
            "k=%d: inertia %.4g, silhouette %.3f, CH %.1f, DB %.3f",
            row["k"],
            row["inertia"],
            sil,
            row["calinski_harabasz"],
            row["davies_bouldin"],
        )
    table = [{key: r[key] for key in TABLE_COLUMNS} for r in rows]
    return table, centers, S.shape[0], len(sil_idx) if sil_idx is not None else S.shape[0]


def select_k(
    P: np.ndarray,
    config: SegmentationConfig,
    *,
    distinct_of: np.ndarray | None = None,
    n_rows: int | None = None,
) -> tuple[KSelection, dict[int, np.ndarray]]:
    """The k search on the PCA rows ``P`` and the choice the rule (or ``config.k``) makes.

    The one k-selection stage of both engines (the Dask engine passes its fixed sample of the
    projected rows). Distinct rows are counted on ``distinct_of`` (default ``P``); ``n_rows``
    (default ``len(P)``) is the table's size, named in the refusal. Returns the selection and
    the centres the search found for each k.
    """
    n = P.shape[0] if n_rows is None else n_rows
    needed = config.k if config.k is not None else config.k_min
    n_distinct = distinct_rows(
        P if distinct_of is None else distinct_of, enough=max(needed, config.k_max)
    )
    if n_distinct < needed:
        raise TableError(
            f"the cluster features have only {n_distinct} distinct row(s) among {n} customers; "
            f"{'k' if config.k is not None else 'k_min'}={needed} needs at least {needed}"
        )
    table, centers, search_rows, sil_rows = search_k(P, config, n_distinct)
    k_rule, knee, reasoning = choose_k(table, config.min_segment_share)
    if config.k is not None:
        k, overridden = int(config.k), True
        reasoning = f"k={k} set by configuration (the rule would choose k={k_rule}: {reasoning})"
    else:
        k, overridden = k_rule, False
    log.info("chosen k=%d: %s", k, reasoning)
    return KSelection(table, knee, k, reasoning, overridden, search_rows, sil_rows), centers


def silhouettes(X: np.ndarray, labelings: list[np.ndarray], chunk: int = 1024) -> list[float]:
    """Mean silhouette coefficient of ``X`` under each labelling, sharing one distance pass.

    Same definition as ``sklearn.metrics.silhouette_score`` (a singleton's coefficient is 0),
    but the pairwise distances are computed once per chunk of rows and reduced for all
    labellings with one matrix product, instead of once per k.
    """
    n = X.shape[0]
    if n < 2 or not labelings:
        return [-1.0] * len(labelings)
    # float32 distances: half the memory traffic, and ample precision for a mean coefficient
    X = np.asarray(X, dtype=np.float32)
    ks = [int(lab.max()) + 1 for lab in labelings]
    offsets = np.concatenate([[0], np.cumsum(ks)])
    onehot = np.zeros((n, int(offsets[-1])), dtype=np.float32)
    rows = np.arange(n)
    for j, lab in enumerate(labelings):
        onehot[rows, offsets[j] + lab] = 1.0
    counts = onehot.sum(axis=0, dtype=np.float64)
    sq = np.einsum("ij,ij->i", X, X)
    totals = np.zeros(len(labelings), dtype=np.float64)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        d = sq[start:stop, None] + sq[None, :] - 2.0 * (X[start:stop] @ X.T)
        np.maximum(d, 0.0, out=d)
        np.sqrt(d, out=d)
        d[np.arange(stop - start), np.arange(start, stop)] = 0.0
        sums = (d @ onehot).astype(np.float64)
        for j, lab in enumerate(labelings):
            s = sums[:, offsets[j] : offsets[j + 1]]
            c = counts[offsets[j] : offsets[j + 1]]
            own = lab[start:stop]
            r = np.arange(stop - start)
            own_n = c[own]
            with np.errstate(divide="ignore", invalid="ignore"):
                a = np.where(own_n > 1, s[r, own] / (own_n - 1), 0.0)
                mean_other = np.where(c > 0, s / c, np.inf)
            mean_other[r, own] = np.inf
            b = mean_other.min(axis=1)
            denom = np.maximum(a, b)
            with np.errstate(divide="ignore", invalid="ignore"):
                coef = np.where((own_n > 1) & (denom > 0), (b - a) / denom, 0.0)
            totals[j] += float(coef.sum())
    return [
        float(t / n) if len(np.unique(lab)) > 1 else -1.0
        for t, lab in zip(totals, labelings, strict=True)
    ]


def distinct_rows(X: np.ndarray, enough: int | None = None, probe: int = 10_000) -> int:
    """Number of distinct rows of ``X`` (duplicated customers count once).

    With ``enough``, the first ``probe`` rows are counted first and, when they already hold
    more than ``enough`` distinct rows, that count is returned (a lower bound that spares
    sorting millions of rows).
    """
    if X.shape[0] == 0:
        return 0
    if enough is not None and X.shape[0] > probe:
        head = int(np.unique(np.ascontiguousarray(X[:probe]), axis=0).shape[0])
        if head > enough:
            return head
    return int(np.unique(np.ascontiguousarray(X), axis=0).shape[0])


def _sample(rng: np.random.Generator, n: int, size: int) -> np.ndarray | None:
    """Sorted random row positions (without replacement), or None when all rows fit."""
    if size <= 0 or n <= size:
        return None
    return np.sort(rng.choice(n, size=size, replace=False))


def relabel_by_size(kmeans: KMeans, labels: np.ndarray) -> np.ndarray:
    """Renumber segments largest first (ties by centroid); updates ``kmeans`` and returns labels."""
    k = kmeans.n_clusters
    centers = kmeans.cluster_centers_
    order = size_order(centers, np.bincount(labels, minlength=k))
    new_of_old = np.empty(k, dtype=np.int32)
    new_of_old[order] = np.arange(k, dtype=np.int32)
    kmeans.cluster_centers_ = np.ascontiguousarray(centers[order])
    new_labels = new_of_old[labels]
    kmeans.labels_ = new_labels
    return new_labels


def reorder_segmentation(segmentation: Segmentation, order: np.ndarray) -> Segmentation:
    """The same segmentation with segment ``n`` renumbered ``order[n]`` (a permutation)."""
    order = np.asarray(order, dtype=np.int64)
    k = segmentation.k
    if sorted(order.tolist()) != list(range(k)):
        raise ValueError(f"order {order.tolist()} is not a permutation of 0..{k - 1}")
    inverse = np.empty(k, dtype=np.int64)
    inverse[order] = np.arange(k)
    kmeans = segmentation.kmeans
    kmeans.cluster_centers_ = np.ascontiguousarray(kmeans.cluster_centers_[inverse])
    labels = order[segmentation.labels].astype(segmentation.labels.dtype)
    kmeans.labels_ = labels
    mixture = segmentation.mixture
    if mixture is not None:
        for name in ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_"):
            setattr(mixture, name, np.ascontiguousarray(getattr(mixture, name)[inverse]))
    return dataclasses.replace(
        segmentation,
        kmeans=kmeans,
        labels=labels,
        outlier_thresholds=segmentation.outlier_thresholds[inverse],
    )


def size_order(centers: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Old segment ids in their new order: largest first, ties by centroid coordinates."""
    # lexsort: last key is primary -> size descending, then centroid coordinates ascending
    keys = [centers[:, j] for j in range(centers.shape[1] - 1, -1, -1)] + [-np.asarray(sizes)]
    return np.lexsort(keys)


def centroid_distances(P: np.ndarray, centers: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Euclidean distance of each row to the centre of its segment."""
    diff = P - centers[labels]
    return np.sqrt(np.einsum("ij,ij->i", diff, diff))


def outlier_thresholds(distances: np.ndarray, labels: np.ndarray, k: int, q: float) -> np.ndarray:
    """Per segment, the ``q`` quantile of the distance to the centroid (0 for an empty one)."""
    out = np.zeros(k, dtype=np.float64)
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(k + 1))
    for s in range(k):
        d = distances[order[bounds[s] : bounds[s + 1]]]
        if d.size:
            out[s] = float(np.quantile(d, q))
    return out


def measure_stability(P: np.ndarray, kmeans: KMeans, config: SegmentationConfig) -> dict[str, Any]:
    """ARI between the final model and K-Means refits on bootstrap samples of the rows."""
    if config.stability_bootstraps <= 0:
        return {"bootstraps": 0}
    n = P.shape[0]
    rng = np.random.default_rng(config.seed + 7919)
    eval_idx = _sample(rng, n, STABILITY_EVAL_ROWS)
    E = P if eval_idx is None else P[eval_idx]
    reference = kmeans.predict(E)
    size = min(n, config.search_sample) if config.search_sample > 0 else n
    scores = []
    for b in range(config.stability_bootstraps):
        boot = rng.integers(0, n, size=size)
        with warnings.catch_warnings():
            # a bootstrap sample repeats rows, so on small tables it may hold fewer distinct
            # points than k; the refit is still a fair (if pessimistic) stability probe
            warnings.simplefilter("ignore", ConvergenceWarning)
            refit = KMeans(
                n_clusters=kmeans.n_clusters,
                n_init=config.n_init,
                random_state=config.seed + b + 1,
            ).fit(P[boot])
        scores.append(float(adjusted_rand_score(reference, refit.predict(E))))
    log.info("stability: ARI mean %.3f, min %.3f", np.mean(scores), np.min(scores))
    return {
        "bootstraps": len(scores),
        "sample_rows": size,
        "eval_rows": E.shape[0],
        "ari": scores,
        "ari_mean": float(np.mean(scores)),
        "ari_min": float(np.min(scores)),
    }


def fit_segmentation(
    X: np.ndarray, config: SegmentationConfig, warm_labels: np.ndarray | None = None
) -> Segmentation:
    """Fit the whole clustering chain on the cluster matrix ``X`` (not modified).

    ``warm_labels`` (re-segmentation): each row's segment under the previous bundle. When the
    chosen k equals their number of segments, the final K-Means starts from those groups'
    centres in the new space, so a month of small changes converges to the same segments
    instead of another local optimum.
    """
    # Small tables run single-threaded: a second OpenMP thread saves little there, and on a
    # busy machine its barrier waits cost far more than it saves.
    limit = 1 if X.shape[0] < SINGLE_THREAD_ROWS else None
    with threadpool_limits(limits=limit, user_api="openmp"):
        return _fit_segmentation(X, config, warm_labels)


def _warm_centres(P: np.ndarray, warm_labels: np.ndarray | None, k: int) -> np.ndarray | None:
    """Centres of the previous bundle's groups in the new PCA space, if there are k of them."""
    if warm_labels is None or len(warm_labels) != P.shape[0]:
        return None
    counts = np.bincount(warm_labels, minlength=k)
    if len(counts) != k or (counts == 0).any():
        return None
    sums = np.zeros((k, P.shape[1]))
    np.add.at(sums, warm_labels, P)
    return sums / counts[:, None]


def _fit_segmentation(
    X: np.ndarray, config: SegmentationConfig, warm_labels: np.ndarray | None = None
) -> Segmentation:
    n = X.shape[0]
    if n < max(config.k_min, 2) + 1:
        raise TableError(f"n_samples={n} should be > k_min={config.k_min}")
    if config.k is not None and n <= config.k:
        raise TableError(f"n_samples={n} should be > k={config.k}")

    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 3)
        clock = now

    scaler, pca = fit_projection(X, config)
    P = pca.transform(scaler.transform(X))
    lap("pca")
    log.info(
        "PCA: %d components keep %.1f%% of the variance",
        pca.n_components_,
        100 * float(np.sum(pca.explained_variance_ratio_)),
    )

    # counted on the cluster matrix itself: identical customers stay bit-identical there
    selection, centers = select_k(P, config, distinct_of=X)
    lap("k_search")
    k = selection.chosen

    warm = _warm_centres(P, warm_labels, k)
    if warm is not None:
        log.info("final K-Means starts from the previous bundle's segments")
        final = KMeans(n_clusters=k, init=warm, n_init=1, random_state=config.seed)
    elif k in centers:
        # start from the sample's solution: one Lloyd run on all rows then converges quickly
        final = KMeans(n_clusters=k, init=centers[k], n_init=1, random_state=config.seed)
    else:
        final = KMeans(n_clusters=k, n_init=config.n_init, random_state=config.seed)
    final.fit(P)
    labels = relabel_by_size(final, final.labels_)
    smallest = float(np.bincount(labels, minlength=k).min() / n)
    if smallest < config.min_segment_share:
        warning = (
            f"segmentation: the smallest of the k={k} segments holds {100 * smallest:.2f}% of "
            f"the customers, under segmentation.min_segment_share = {config.min_segment_share:g}"
        )
        log.warning("%s", warning)
        selection.warnings.append(warning)
    distances = centroid_distances(P, final.cluster_centers_, labels)
    thresholds = outlier_thresholds(distances, labels, k, config.outlier_quantile)
    lap("final_fit")
    stability = measure_stability(P, final, config)
    lap("stability")
    mixture = None
    if config.model == "gaussian_mixture":
        mixture = fit_mixture(P, final, labels, config)
        # the serving rule itself labels the training rows, so profiles describe what is served
        labels, _ = MixtureRule.from_estimator(mixture).segments(P)
        distances = centroid_distances(P, mixture.means_, labels)
        thresholds = outlier_thresholds(distances, labels, k, config.outlier_quantile)
        lap("mixture")
    return Segmentation(
        scaler=scaler,
        pca=pca,
        kmeans=final,
        labels=labels,
        distances=distances,
        outlier_thresholds=thresholds,
        selection=selection,
        stability=stability,
        timings=timings,
        mixture=mixture,
    )


def fit_mixture(
    P: np.ndarray, kmeans: KMeans, labels: np.ndarray, config: SegmentationConfig
) -> GaussianMixture:
    """A full-covariance Gaussian mixture started from the final K-Means (component = segment).

    Started from the K-Means centres and sizes, component j stays segment j. Large tables are
    fitted on a seeded sample of ``search_sample`` rows (the rule is then applied to all rows).
    """
    k = kmeans.n_clusters
    n = P.shape[0]
    rng = np.random.default_rng(config.seed + 31)
    idx = _sample(rng, n, config.search_sample)
    sizes = np.bincount(labels, minlength=k).astype(np.float64)
    mixture = GaussianMixture(
        n_components=k,
        covariance_type="full",
        means_init=kmeans.cluster_centers_,
        weights_init=np.maximum(sizes, 1.0) / np.maximum(sizes, 1.0).sum(),
        random_state=config.seed,
        max_iter=100,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mixture.fit(P if idx is None else P[idx])
    log.info("Gaussian mixture: %d components, converged=%s", k, mixture.converged_)
    return mixture
