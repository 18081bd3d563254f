"""The Dask engine: training and batch scoring on a Dask cluster, partition by partition.

The same stages as the local engine, with the table read in partitions (a folder or glob of
Parquet files) and every pass over the rows done on the workers; only small per-partition
results travel back and are combined on the client. What runs where:

=====================  =========================================================================
stage                  on the cluster
=====================  =========================================================================
read                   ``dask.dataframe.read_parquet``: one partition per file (or row group)
transactions -> RFM    cleaned per partition, shuffled by customer, the single-process
                       aggregation per partition (``training.engines.dask_transactions``)
validation, stats      per-partition column summaries, combined (``training.partitioned``), then
                       the same checks and messages as the single-process path
medians                approximate quantiles (``Series.quantile``: per-partition percentiles,
                       merged), the imputer fitted on them
scaling and PCA        moments reduced over partitions (count, sum, X'X): the StandardScaler and
                       the covariance-eigh PCA the local path fits, built from the sums
k search               the local rule on a fixed random sample of the projected rows (the local
                       path searches a sample too), silhouette on its fixed sub-sample
final K-Means          Lloyd iterations on all rows started from the k search's centres (as
                       the local engine's final fit starts); one round of per-block sums per
                       iteration (:func:`lloyd`)
profiles, naming       per-segment sums and approximate medians, reduced over partitions
response model         the history validated and sampled by customer in one pass; the capped
                       sample joined on the client (no shuffle) and scattered back;
                       ``lightgbm.dask`` (one LightGBM process per worker, rows where they are);
                       trained in chunks of rounds, each continuing the last, until the
                       held-out loss curve shows early stopping would stop (then trimmed),
                       because ``lightgbm.dask`` workers evaluate their own rows and may
                       disagree on when to stop (which deadlocks their collective)
lifetime value         the per-customer (frequency, recency, tenure, spend) and segment
                       gathered; BG/NBD and Gamma-Gamma fitted ON THE CLIENT by
                       ``training.clv.fit_clv`` (40 bytes a customer)
batch scoring          the single-process scoring function on each partition, one output file
                       per input partition written under a temporary name and renamed, so a task
                       retried after a worker dies never loses or duplicates a partition
=====================  =========================================================================

The fitted objects are the ones the service loads (scikit-learn, LightGBM Booster): the bundle is
written and verified by ``scoring.bundle`` exactly as for the local engine, and its manifest
records ``engine``, the cluster size and per-stage timings.

Libraries: dask, distributed and lightgbm.dask. The final K-Means is our own Lloyd loop
(:func:`lloyd`) rather than dask-ml's: started from the sample's centres it needs one or two
rounds of per-partition sums, where dask-ml's k-means|| initialisation alone passes over the
rows several times and each of its iterations costs more scheduler round trips. dask-ml's
``StandardScaler``/``PCA`` are not used either: their fitted objects are dask-ml classes the
service would have to install, while the moments give scikit-learn's objects exactly.
"""

from __future__ import annotations

import glob
import logging
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from scoring.bundle import Bundle
from training.engines.dask_transactions import APPROXIMATION as TRANSACTIONS_APPROXIMATION
from training.source_url import is_database_url
from training.validate import TableError

if TYPE_CHECKING:
    import dask.dataframe as dd
    from distributed import Client

log = logging.getLogger("training")

#: prefix of the output files of batch scoring: part-00000.parquet, part-00001.parquet, ...
PART_NAME = "part-{:05d}.parquet"


# ---- the cluster -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ClusterInfo:
    """What the run used: the scheduler's address, its dashboard and the workers."""

    scheduler: str
    dashboard: str | None
    workers: int
    threads: int
    local: bool

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form for the manifest."""
        return {
            "scheduler": self.scheduler if not self.local else "LocalCluster",
            "workers": self.workers,
            "threads": self.threads,
            "local": self.local,
        }


def cluster_info(client: Client, local: bool) -> ClusterInfo:
    """Address, dashboard and size of the cluster ``client`` talks to."""
    info = client.scheduler_info()
    workers = info.get("workers", {})
    dashboard = None
    try:
        dashboard = client.dashboard_link
    except (KeyError, AttributeError):  # no dashboard (bokeh missing on the scheduler)
        dashboard = None
    return ClusterInfo(
        scheduler=str(info.get("address", "")),
        dashboard=dashboard,
        workers=len(workers),
        threads=sum(int(w.get("nthreads", 1)) for w in workers.values()),
        local=local,
    )


@contextmanager
def connect(
    scheduler: str | None = None,
    workers: int | None = None,
    threads_per_worker: int | None = None,
    timeout: float = 30.0,
) -> Iterator[tuple[Client, ClusterInfo]]:
    """A client of the cluster at ``scheduler``, or of a LocalCluster started for the run.

    The LocalCluster has ``workers`` worker processes (default: one per core) of
    ``threads_per_worker`` threads (default: the cores shared out, so one worker on two cores
    gets two threads and LightGBM and numpy use both), listening on the loopback interface
    only; each worker's memory limit is the machine's memory shared out (Dask's "auto"). It
    is stopped on exit. An existing cluster is left running; ``timeout`` (seconds) bounds the
    wait for it.
    """
    from distributed import Client, LocalCluster

    # the scheduler's and nannies' INFO lines would drown the training log
    logging.getLogger("distributed").setLevel(logging.WARNING)
    cluster = None
    if scheduler:
        try:
            client = Client(scheduler, timeout=timeout)
        except OSError as exc:
            raise TableError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from None
    else:
        cores = os.cpu_count() or 1
        n = workers or cores
        threads = threads_per_worker or max(1, cores // n)
        cluster = LocalCluster(
            n_workers=n,
            threads_per_worker=threads,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
        )
        client = Client(cluster)
    try:
        if scheduler and workers:
            client.wait_for_workers(workers, timeout=120)
        yield client, cluster_info(client, local=cluster is not None)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


# ---- reading ---------------------------------------------------------------------------------
def parquet_files(location: str | os.PathLike) -> list[str]:
    """The Parquet files of a folder (recursively, in name order), a glob or a single file."""
    text = str(location)
    path = Path(text)
    if path.is_dir():
        files = sorted(str(p) for p in path.rglob("*.parquet"))
    elif any(ch in text for ch in "*?["):
        files = sorted(glob.glob(text, recursive=True))
    else:
        files = [text] if path.is_file() else []
    if not files:
        raise TableError(f"no Parquet files found at {text} (give a folder, a glob or a file)")
    return files


def read_partitions(location: str | os.PathLike, columns: list[str] | None = None) -> dd.DataFrame:
    """A Dask frame over the Parquet files at ``location``, one partition per file."""
    import dask.dataframe as dd

    files = parquet_files(location)
    try:
        frame = dd.read_parquet(files, columns=columns, split_row_groups=False)
    except (OSError, ValueError) as exc:
        message = " ".join(str(exc).split())
        raise TableError(f"cannot read {location}: {message}") from None
    return frame


# ---- batch scoring ---------------------------------------------------------------------------
def score_partition(frame: pd.DataFrame, bundle: Bundle, out_dir: str, index: int) -> int:
    """Score one partition with the single-process scoring function and write it atomically.

    The file is written under a temporary name and renamed into place, so a task that is retried
    after its worker died leaves exactly one complete ``part-<index>.parquet``. Returns the rows.
    """
    from scoring.engine import ScoringEngine
    from training.engines.local import score_chunk

    scored = score_chunk(ScoringEngine(bundle), frame)
    final = Path(out_dir) / PART_NAME.format(index)
    temporary = final.with_name(f".{final.name}.{uuid.uuid4().hex}.tmp")
    scored.to_parquet(temporary, index=False)
    os.replace(temporary, final)
    return len(scored)


def shippable(bundle: Bundle) -> Bundle:
    """``bundle`` as workers receive it: the loaded native forests left out (see above)."""
    import dataclasses

    return dataclasses.replace(bundle, compiled_forest=None, compiled_control_forest=None)


@dataclass(frozen=True)
class ScoreResult:
    """What batch scoring on the cluster wrote."""

    rows: int
    partitions: int
    output: Path
    seconds: float


def score_dataset(
    client: Client,
    bundle: Bundle,
    location: str | os.PathLike,
    output: str | os.PathLike,
    *,
    show_progress: bool = True,
) -> ScoreResult:
    """Score every partition of the Parquet dataset at ``location`` into the folder ``output``.

    ``output`` must not exist or be empty; it receives one ``part-NNNNN.parquet`` per input
    partition, in input order. A text progress bar is shown while the tasks run.
    """
    from dask import delayed
    from distributed import progress

    start = time.perf_counter()
    schema = bundle.schema
    wanted = schema.input_names + schema.categorical_names
    frame = read_partitions(location)
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        raise TableError(f"{location}: missing columns {', '.join(missing)}")
    keep = ([schema.id_column] if schema.id_column in frame.columns else []) + wanted
    frame = frame[keep]
    out = Path(output)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TableError(f"{out}: the output folder exists and is not empty; choose another")
    out.mkdir(parents=True, exist_ok=True)
    # one verified bundle shipped to every worker once (workers need not see the bundle root),
    # without the compiled trees: native code loaded for this machine is neither picklable nor
    # meant for other machines; workers predict through LightGBM, which the compiled trees
    # were checked to match (scoring.compiled_trees.TOLERANCE) when the bundle was loaded
    [shared] = client.scatter([shippable(bundle)], broadcast=True)
    parts = frame.to_delayed()
    tasks = [
        delayed(score_partition, pure=False)(part, shared, str(out), i)
        for i, part in enumerate(parts)
    ]
    futures = client.compute(tasks)
    if show_progress:
        progress(futures)
    counts = client.gather(futures)
    for leftover in out.glob(".part-*.tmp"):
        # written by a task whose worker died before the rename; its retry wrote the part
        leftover.unlink(missing_ok=True)
    return ScoreResult(
        rows=int(sum(counts)),
        partitions=len(tasks),
        output=out,
        seconds=time.perf_counter() - start,
    )


# ---- training ----------------------------------------------------------------------------------
#: what the Dask engine computes differently from the single-process path (kept in the manifest)
APPROXIMATIONS = (
    "imputation medians and per-segment medians and outlier thresholds from approximate "
    "quantiles (per-partition percentiles, merged)",
    "k search, silhouette and stability on a fixed random sample of the projected rows",
    "algorithm comparison and the report's charts on a fixed random sample of the segmented "
    "rows (comparison.sample of them for the comparison)",
    "final K-Means: Lloyd iterations on all rows (per-partition sums reduced on the "
    "client), started from the k search's centres on the sample as the local engine starts",
    "response model: customers sampled by a hash of their id (to max_train_rows) and split "
    "train/held-out by another hash; unknown-customer check and response rates on that sample",
    "response model: lightgbm.dask in chunks of rounds (each continuing the last), stopped "
    "once the held-out loss curve shows early stopping would have stopped, and trimmed to "
    "that round",
)


#: what of the single-process engine's training runs here and what is refused before fitting
#: (the manifest's ``engine.features``; README, "Past one machine: Dask")
FEATURES = {
    "algorithm comparison (comparison.enabled)": "runs, on a fixed sample of the segmented rows",
    "lifetime value (clv.enabled)": "runs; BG/NBD and Gamma-Gamma fitted on the client",
    "Markdown and HTML reports (output.report)": "runs",
    "compiled trees (response_model.compile)": "runs, compiled on the client",
    "transactions -> RFM features ([data.transactions])": "runs, a groupby on the cluster",
    "uplift model (uplift.enabled with responses.treated_column)": "refused before fitting",
    "model size selection (response_model.select_smallest)": "refused before fitting",
    "re-segmentation (segmentation.previous)": "refused before fitting",
    'RFM groups (segmentation.method = "rfm")': "refused before fitting",
    "PostgreSQL sources, wide responses, responses.control_values/campaign_map": "refused "
    "before fitting",
}


#: the manifest's note when lifetime value is fitted
CLV_APPROXIMATION = (
    "lifetime value: BG/NBD and Gamma-Gamma fitted on the client, on the per-customer "
    "(frequency, recency, tenure, spend) summaries gathered from the cluster"
)


def _text_ids(frame: pd.DataFrame, column: str | None) -> pd.DataFrame:
    """The partition with its id column as text (``scoring.ids``: "007" stays "007")."""
    from scoring.ids import ids_as_text

    if column is None or column not in frame.columns:
        return frame
    frame = frame.copy()
    frame[column] = ids_as_text(frame[column])
    return frame


def _file_digest(path: str) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _matrices(frame: pd.DataFrame, schema) -> tuple:
    """(raw inputs with NaN, categorical codes, numeric matrix) of one partition."""
    import numpy as np

    from scoring.features import frame_to_raw, numeric_matrix
    from training.partitioned import numeric_inputs

    converted = numeric_inputs(frame, schema.input_names)
    for name in schema.categorical_names:
        converted[name] = frame[name].to_numpy()
    raw, codes = frame_to_raw(converted, schema)
    return raw, codes, np.ascontiguousarray(numeric_matrix(raw, schema))


def _observed_moments(frame: pd.DataFrame, schema):
    """Moments of the inputs as observed (NaN kept) and of the derived features, for skewness
    and the log check, exactly as the single-process path measures them."""
    import numpy as np

    from training.partitioned import Moments

    raw, _, numeric = _matrices(frame, schema)
    n_inputs = len(schema.inputs)
    return len(frame), Moments.of(np.hstack([raw, numeric[:, n_inputs:]]))


def _cluster_moments(frame: pd.DataFrame, schema):
    from scoring.features import cluster_matrix
    from training.partitioned import Moments

    _, _, numeric = _matrices(frame, schema)
    return len(frame), Moments.of(cluster_matrix(numeric, schema), cross=True)


def _projection(frame: pd.DataFrame, schema, scaler, pca):
    from scoring.features import cluster_matrix

    _, _, numeric = _matrices(frame, schema)
    return pca.transform(scaler.transform(cluster_matrix(numeric, schema)))


def _sample_rows(P, seed: int, index: int, rate: float):
    """Rows of one partition's projection kept with probability ``rate`` (seeded per part)."""
    import numpy as np

    rng = np.random.default_rng([seed, index])
    return P[rng.random(P.shape[0]) < rate]


def _nearest(P, centers):
    import numpy as np

    d2 = (P**2).sum(axis=1)[:, None] - 2.0 * P @ centers.T + (centers**2).sum(axis=1)[None, :]
    labels = np.argmin(d2, axis=1)
    diff = P - centers[labels]
    return labels.astype(np.int32), np.sqrt(np.einsum("ij,ij->i", diff, diff))


def _lloyd_sums(P, centers) -> tuple:
    """(rows per centre, per-centre sums of the rows) of one block: a Lloyd step's partial."""
    import numpy as np

    d2 = (centers**2).sum(axis=1)[None, :] - 2.0 * P @ centers.T
    labels = np.argmin(d2, axis=1)
    k = centers.shape[0]
    sums = np.zeros_like(centers)
    for j in range(centers.shape[1]):
        sums[:, j] = np.bincount(labels, weights=P[:, j], minlength=k)
    return np.bincount(labels, minlength=k), sums


#: K-Means convergence as scikit-learn's (and dask-ml's) default: the centres' total squared
#: shift under this fraction of the rows' mean variance
LLOYD_TOL = 1e-4

#: Lloyd iterations at most (scikit-learn's default)
LLOYD_MAX_ITER = 300


def lloyd(blocks, centers, tol: float, max_iter: int = LLOYD_MAX_ITER) -> tuple:
    """K-Means (Lloyd) on every row of the persisted ``blocks``, started from ``centers``.

    Each iteration is ONE round of tasks, each reducing its block to k counts and k x d sums
    (bytes), combined on the client: one scheduler round trip per iteration, no other
    traffic. Started from the k search's centres on the sample (as the local engine starts
    its final fit), it converges in a few iterations. A centre that loses every row keeps its
    place (scikit-learn would move it to a far point; from the sample's solution that does
    not happen in practice). Returns (centres, rows per centre under the last centres but
    one, iterations); convergence is scikit-learn's: the total squared shift <= ``tol``.
    """
    import dask
    import numpy as np
    from dask import delayed

    centers = np.array(centers, dtype=np.float64)
    counts = np.zeros(len(centers), dtype=np.int64)
    iteration = 0
    while iteration < max_iter:
        iteration += 1
        parts = dask.compute(*[delayed(_lloyd_sums)(b, centers) for b in blocks])
        counts = np.sum([c for c, _ in parts], axis=0)
        sums = np.sum([t for _, t in parts], axis=0)
        moved = centers.copy()
        filled = counts > 0
        moved[filled] = sums[filled] / counts[filled, None]
        shift = float(((moved - centers) ** 2).sum())
        centers = moved
        if shift <= tol:
            break
    return centers, counts, iteration


def _assigned(
    frame: pd.DataFrame, P, schema, scaler, centers, truth_column, clv: bool = False
) -> pd.DataFrame:
    """One partition as the later stages need it: id, segment, distance, every numeric feature,
    the categorical codes, the standardised cluster features and the planted truth."""
    from scoring.features import cluster_matrix

    _, codes, numeric = _matrices(frame, schema)
    labels, distances = _nearest(P, centers)
    out = {
        "_id": frame[schema.id_column].to_numpy(dtype=object)
        if schema.id_column in frame.columns
        else None,
        "_segment": labels,
        "_distance": distances,
    }
    for j in range(numeric.shape[1]):
        out[f"n{j}"] = numeric[:, j]
    for j in range(codes.shape[1]):
        out[f"c{j}"] = codes[:, j]
    Z = scaler.transform(cluster_matrix(numeric, schema))
    for j in range(Z.shape[1]):
        out[f"z{j}"] = Z[:, j]
    if clv:
        from scoring.clv import CLV_FEATURES

        for name in CLV_FEATURES:
            values = pd.to_numeric(frame[name], errors="coerce").astype("float64")
            out[f"_clv_{name}"] = values.to_numpy()
    if truth_column is not None:
        out["_truth"] = frame[truth_column].astype("string").to_numpy(dtype=object)
    result = pd.DataFrame({k: v for k, v in out.items() if v is not None})
    return result


#: percentiles (0..100) each partition reports per segment and column, merged on the client
#: into the per-segment medians and outlier thresholds (dask's own Series.quantile reports
#: only 0, q and 100 per partition; a grid is finer and costs nothing more than the sort)
PERCENTILE_GRID = tuple(float(p) for p in range(101))


def _grid_for(q: float):
    import numpy as np

    return np.unique(np.concatenate([PERCENTILE_GRID, [50.0, 100.0 * q]]))


def _segment_sums(part: pd.DataFrame, k: int, columns: list[str], spread: list[str], q: float):
    """Per segment of one partition: rows, sums of ``columns``, and the percentiles (the grid
    of :func:`_grid_for`) and non-missing counts of each of ``spread``; and the truth
    contingency. One pass gives the profiles' means, medians and the outlier thresholds."""
    import numpy as np

    labels = part["_segment"].to_numpy()
    counts = np.bincount(labels, minlength=k)
    sums = np.zeros((k, len(columns)))
    for j, column in enumerate(columns):
        sums[:, j] = np.bincount(labels, weights=part[column].to_numpy(), minlength=k)
    grid = _grid_for(q)
    values = part[spread].to_numpy(dtype=np.float64)
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(k + 1))
    percentiles = np.full((k, len(spread), len(grid)), np.nan)
    present = np.zeros((k, len(spread)), dtype=np.int64)
    for s in range(k):
        rows = values[order[bounds[s] : bounds[s + 1]]]
        present[s] = np.sum(~np.isnan(rows), axis=0)
        for j in range(len(spread)):
            column = rows[:, j]
            column = column[~np.isnan(column)]
            if len(column):
                percentiles[s, j] = np.percentile(column, grid)
    truth = None
    if "_truth" in part.columns:
        truth = part.groupby(["_segment", "_truth"]).size()
    return counts, sums, percentiles, present, truth


def decile_points():
    """The inner decile percentiles (10, 20, ... 90) of the PSI bins, as numbers 0-100."""
    import numpy as np

    from training.resegment import PSI_BINS

    return np.linspace(0, 100, PSI_BINS + 1)[1:-1]


def merged_percentile(q, grids, values, counts):
    """The ``q``-th percentile(s) (0-100) of rows whose partitions reported ``values`` at
    ``grids`` for ``counts`` rows each (dask's merge of per-partition percentiles); a float
    for a scalar ``q`` (NaN when there are no rows), else an array."""
    import numpy as np
    from dask.array.percentile import merge_percentiles

    qs = np.atleast_1d(np.asarray(q, dtype=np.float64))
    kept = [(g, v, c) for g, v, c in zip(grids, values, counts, strict=True) if c > 0]
    if not kept:
        return float("nan") if np.ndim(q) == 0 else np.full(len(qs), np.nan)
    merged = merge_percentiles(
        qs,
        [g for g, _, _ in kept],
        [v for _, v, _ in kept],
        "lower",
        [int(c) for _, _, c in kept],
        False,
    )
    merged = np.asarray(merged, dtype=np.float64)
    return float(merged[0]) if np.ndim(q) == 0 else merged


def _bin_counts(part: pd.DataFrame, columns: list[str], edges: list) -> list:
    """Per column: the rows of one partition in each bin of ``edges`` (finite values only)."""
    import numpy as np

    out = []
    for column, cuts in zip(columns, edges, strict=True):
        values = part[column].to_numpy()
        values = values[np.isfinite(values)]
        bins = np.searchsorted(cuts, values, side="right")
        out.append(np.bincount(bins, minlength=len(cuts) + 1))
    return out


def feature_distribution(assigned, names: list[str], quantiles=None) -> dict[str, dict[str, list]]:
    """``training.resegment.feature_distribution`` on the cluster: inner decile edges from
    approximate quantiles (``quantiles``, one array per feature, when already merged), then
    the share of rows in each bin counted per partition."""
    import dask
    import numpy as np
    from dask import delayed

    columns = [f"n{j}" for j in range(len(names))]
    if quantiles is None:
        inner = list(decile_points() / 100.0)
        quantiles = dask.compute(*[assigned[c].quantile(inner) for c in columns])
    edges = [np.unique(np.asarray(q, dtype=np.float64)) for q in quantiles]
    parts = dask.compute(*[delayed(_bin_counts)(p, columns, edges) for p in assigned.to_delayed()])
    out = {}
    for j, name in enumerate(names):
        counts = np.sum([p[j] for p in parts], axis=0)
        if counts.sum():
            out[name] = {
                "edges": edges[j].tolist(),
                "shares": (counts / counts.sum()).tolist(),
            }
    return out


def scaler_from_moments(moments) -> Any:
    """A fitted ``StandardScaler`` equal to fitting on the rows the moments summarise."""
    import numpy as np
    from sklearn.preprocessing import StandardScaler

    n = float(moments.n[0])
    var = moments.m2 / n
    scale = np.sqrt(var)
    scale[scale < 10 * np.finfo(scale.dtype).eps] = 1.0  # as sklearn: constant -> unit scale
    scaler = StandardScaler()
    scaler.mean_ = moments.mean.copy()
    scaler.var_ = var
    scaler.scale_ = scale
    scaler.n_samples_seen_ = int(n)
    scaler.n_features_in_ = len(var)
    return scaler


def pca_from_moments(moments, scaler, config) -> Any:
    """A fitted ``PCA(svd_solver="covariance_eigh")`` of the scaled rows, from their moments.

    The same computation as scikit-learn's covariance_eigh solver (eigenvectors of the
    covariance, largest first, sign fixed so each component's largest loading is positive),
    with the covariance reduced over partitions instead of computed in one process.
    """
    import numpy as np
    from sklearn.decomposition import PCA
    from sklearn.utils.extmath import svd_flip

    from training.segmentation import components_for

    n = float(moments.n[0])
    cov = moments.scatter / (n - 1.0) / np.outer(scaler.scale_, scaler.scale_)
    values, vectors = np.linalg.eigh(cov)
    values, vectors = values[::-1].copy(), vectors[:, ::-1].copy()
    values[values < 0.0] = 0.0
    _, Vt = svd_flip(None, vectors.T, u_based_decision=False)
    total = values.sum()
    ratio = values / total if total > 0 else np.zeros_like(values)
    k = components_for(ratio, config)
    pca = PCA(n_components=k, svd_solver="covariance_eigh")
    pca.n_components_ = k
    pca.components_ = Vt[:k]
    pca.explained_variance_ = values[:k]
    pca.explained_variance_ratio_ = ratio[:k]
    pca.singular_values_ = np.sqrt(values[:k] * (n - 1.0))
    pca.mean_ = np.zeros(len(values))  # scaled rows have mean 0
    pca.noise_variance_ = float(values[k:].mean()) if k < min(int(n), len(values)) else 0.0
    pca.n_samples_ = int(n)
    pca.n_features_in_ = len(values)
    pca._fit_svd_solver = "covariance_eigh"
    return pca


def kmeans_with_centers(centers) -> Any:
    """A fitted scikit-learn ``KMeans`` whose centres are exactly ``centers``.

    Fitted on the centres themselves, each its own cluster: the object the service loads,
    without Dask or dask-ml on the serving side.
    """
    import numpy as np
    from sklearn.cluster import KMeans

    centers = np.ascontiguousarray(centers, dtype=np.float64)
    return KMeans(n_clusters=len(centers), init=centers, n_init=1, max_iter=1).fit(centers)


#: fewest boosting rounds ``lightgbm.dask`` trains between looks at the held-out loss (each
#: chunk restarts its workers' network and re-bins the rows: a few seconds)
ROUND_CHUNK = 40


def best_round(losses, patience: int, min_delta: float) -> int:
    """The round (1-based) LightGBM's early stopping would keep on this held-out loss curve."""
    best, best_i = float("inf"), 0
    for i, loss in enumerate(losses):
        if loss < best - min_delta:
            best, best_i = float(loss), i
        elif i - best_i >= patience:
            break
    return best_i + 1


def _hash_unit(ids: pd.Series, salt: str):
    """A stable pseudo-random number in [0, 1) per id (the same on every worker and run)."""
    import numpy as np

    hashed = pd.util.hash_pandas_object(
        ids.astype("string"), index=False, hash_key=salt[:16].ljust(16, "0")
    )
    return (hashed.to_numpy() >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _response_rows(part: pd.DataFrame, layout, n_numeric: int, n_codes: int):
    """(X rows, y, customer ids, held-out flags) of a merged response partition."""
    import numpy as np

    numeric = part[[f"n{j}" for j in range(n_numeric)]].to_numpy(dtype=np.float64)
    codes = (
        part[[f"c{j}" for j in range(n_codes)]].to_numpy(dtype=np.float64)
        if n_codes
        else np.empty((len(part), 0))
    )
    r = np.arange(len(part))
    X = layout.rows(
        numeric,
        codes,
        part["_segment"].to_numpy(),
        r,
        part["_campaign"].to_numpy(dtype=np.int64),
    )
    return X, part["_responded"].to_numpy(dtype=np.float64)


def _responses_partition(frame: pd.DataFrame, config, pool: list[str]) -> pd.DataFrame:
    """Long responses of one partition: _id, _campaign (pool position), _responded (0/1)."""
    import numpy as np

    from scoring.ids import ids_as_text
    from training.validate import positions, response_values

    rc = config.responses
    if rc.treated_column is not None:
        # the control arm (treated = 0) feeds the uplift model, which this engine does not fit
        sent = response_values(
            frame[rc.treated_column].reset_index(drop=True), config, rc.treated_column
        ).astype(bool)
        frame = frame.loc[sent]
    ids = ids_as_text(frame[rc.customer_column])
    campaigns = frame[rc.campaign_column].astype("string")
    found = positions(campaigns, pool)
    unknown = found < 0
    if unknown.any():
        counts = campaigns[unknown].value_counts()
        raise TableError(
            f"{int(counts.iloc[0])} response(s) for a campaign that is not in the pool "
            f"(pool: {', '.join(sorted(pool))})",
            campaign=str(counts.index[0]),
        )
    responded = response_values(
        frame[rc.responded_column].reset_index(drop=True), config, rc.responded_column
    )
    return pd.DataFrame(
        {
            "_id": ids.to_numpy(dtype=object),
            "_campaign": found.astype(np.int64),
            "_responded": responded.astype(np.int8),
        }
    )


def train(
    config,
    client: Client,
    info: ClusterInfo,
    *,
    environ=None,
):
    """Train a bundle from ``config`` on the cluster behind ``client``; see the module docstring.

    Returns the same ``TrainResult`` as ``training.pipeline.train`` (per-row labels and
    distances stay on the cluster: the result's segmentation holds none).
    """
    import dask
    import numpy as np
    from dask import delayed
    from distributed import wait
    from sklearn.impute import SimpleImputer

    from scoring.bundle import write_bundle
    from training.config import ConfigError, config_to_dict
    from training.load import load_campaigns, read_pool_settings
    from training.naming import load_names_file, name_segments
    from training.partitioned import (
        adjusted_rand_from_contingency,
        check_features,
        check_ids,
        combine,
        combine_moments,
        summarize,
    )
    from training.pipeline import (
        StageRecord,
        TrainResult,
        code_revision,
        peak_rss_mb,
        signing_key,
    )
    from training.prepare import categories_from_counts, schema_from_stats
    from training.profiles import profiles_from_stats
    from training.report import write_report
    from training.segmentation import (
        Segmentation,
        measure_stability,
        select_k,
        size_order,
    )
    from training.validate import (
        check_campaigns,
        check_columns,
        check_row_count,
        duplicate_ids_error,
        eligibility_warnings,
        log_features_from_skews,
    )

    stages: list[StageRecord] = []
    worker_peaks: dict[str, float] = {}
    clock = [time.perf_counter()]

    def done(name: str) -> None:
        now = time.perf_counter()
        stages.append(StageRecord(name, now - clock[0], peak_rss_mb()))
        peaks = client.run(peak_rss_mb)
        worker_peaks[name] = round(float(sum(peaks.values())), 1)
        log.info(
            "stage %s done in %.1f s (client peak %.0f MiB, workers %.0f MiB)",
            name,
            now - clock[0],
            stages[-1].peak_rss_mb,
            worker_peaks[name],
        )
        clock[0] = time.perf_counter()

    key = signing_key(config, os.environ if environ is None else environ)
    data = config.data
    if data.transactions is None and data.customers is None:
        raise TableError("the dask engine needs data.customers or data.transactions (Parquet)")
    if is_database_url(data.customers) or (
        data.transactions is not None and is_database_url(data.transactions.path)
    ):
        raise TableError(
            "the dask engine reads Parquet files; a PostgreSQL source (data.customers or "
            "data.transactions.path) trains with --engine local"
        )
    if getattr(config.segmentation, "previous", None):
        raise TableError(
            "re-segmentation against a previous bundle (segmentation.previous) needs --engine local"
        )
    if config.segmentation.method == "rfm":
        raise TableError('segmentation.method = "rfm" (the RFM groups) needs --engine local')
    if config.responses is not None and (
        config.responses.control_values or config.responses.campaign_map
    ):
        raise TableError(
            "the dask engine reads responses whose campaign column holds pool ids "
            "(responses.control_values and responses.campaign_map need --engine local)"
        )
    if config.responses is not None and config.responses.treated_column and config.uplift.enabled:
        raise TableError(
            "the dask engine fits no uplift model: with responses.treated_column set, set "
            "uplift.enabled = false (the control rows are then left out and campaigns ranked "
            "by response) or train with --engine local"
        )
    rm_config = config.response_model
    if config.responses is not None and rm_config.enabled and rm_config.select_smallest:
        raise TableError(
            "response_model.select_smallest (the model size selection) needs --engine "
            "local; set it to false on the dask engine (the configured num_leaves is fitted)"
        )
    if config.responses is not None and config.responses.path is None:
        raise TableError(
            "the dask engine reads responses in long form from their own Parquet files "
            "(responses.path); wide response columns need --engine local"
        )
    feats = config.features

    # ---- prepare: read, validate, statistics ---------------------------------------------------
    raw, files, sources, tx_summary = _customer_frame(client, config)
    probe = raw.head(1, npartitions=-1)
    check_columns(probe if len(probe) else raw._meta, config)
    for column in feats.numeric:
        dtype = raw._meta[column].dtype
        if pd.api.types.is_datetime64_any_dtype(dtype) or pd.api.types.is_timedelta64_dtype(dtype):
            from training.validate import dates_error

            raise dates_error(column, dtype)
    keep = [c for c in (data.id_column, *feats.numeric, *feats.categorical, data.truth_column) if c]
    if config.clv.enabled:
        keep += _clv_columns(raw._meta)
    keep = list(dict.fromkeys(keep))
    frame = raw[keep].map_partitions(_text_ids, data.id_column)
    # Read once: the summaries, id counts, medians, moments, projection and assignment all
    # pass over these rows, and each pass would otherwise read and convert the Parquet again.
    # Released once the assigned rows (which carry everything later stages need) are held.
    frame = client.persist(frame)
    parts = frame.to_delayed()
    n_parts = len(parts)
    summaries = dask.compute(*[delayed(summarize)(p, config) for p in parts])
    summary = combine(list(summaries))
    check_row_count(summary.rows, config)
    check_ids(summary, config)
    if data.id_column is not None:
        # hash-partitioned counts: no single task holds every id
        counts = frame[data.id_column].value_counts(split_out=max(1, frame.npartitions // 4))
        duplicated = counts[counts > 1].compute()
        if len(duplicated):
            ordered = sorted(duplicated.items(), key=lambda item: (-item[1], str(item[0])))
            raise duplicate_ids_error(
                data.id_column, len(ordered), ordered[0][0], int(ordered[0][1])
            )
    check_features(summary, config)
    if config.clv.enabled:
        _check_clv_values(frame, data.id_column)
    campaigns = load_campaigns(config)
    check_campaigns(campaigns)
    row_counts = [s.rows for s in summaries]

    from training.partitioned import numeric_inputs

    numeric_frame = frame.map_partitions(
        numeric_inputs,
        list(feats.numeric),
        meta=pd.DataFrame({c: pd.Series(dtype="float64") for c in feats.numeric}),
    )
    medians = np.array(
        dask.compute(*[numeric_frame[c].dropna().quantile(0.5) for c in feats.numeric]),
        dtype=np.float64,
    )
    imputer = SimpleImputer(strategy="median").fit(medians[None, :])  # statistics_ = medians
    category_counts = dask.compute(
        *[frame[c].dropna().astype("string").value_counts() for c in feats.categorical]
    )
    numeric_names = list(feats.numeric) + [d.name for d in feats.derived]
    ranges = {
        c: (s.missing == 0, float(s.minimum), float(s.maximum)) for c, s in summary.numeric.items()
    }
    categories = {
        c: categories_from_counts(counts)
        for c, counts in zip(feats.categorical, category_counts, strict=True)
    }
    schema = schema_from_stats(config, ranges, imputer.statistics_, numeric_names, categories)
    observed = combine_moments(
        list(dask.compute(*[delayed(_observed_moments)(p, schema) for p in parts]))
    )
    skews = {
        name: observed.skewness(
            numeric_names.index(name), observed.negative[numeric_names.index(name)] == 0
        )
        for name in schema.cluster_features
    }
    import dataclasses

    log_features = log_features_from_skews(skews, config)
    observed.check_log_values(numeric_names, log_features)
    schema = dataclasses.replace(schema, log_features=log_features)
    digests = dask.compute(*[delayed(_file_digest)(f) for f in files])
    fingerprint = {
        "sha256": _combined_digest(digests, config),
        "rows": summary.rows,
        "columns": [str(c) for c in raw.columns],
        "sources": sources,
        "files": len(files),
    }
    log.info(
        "%d customers in %d partition(s); log1p on %s",
        summary.rows,
        len(parts),
        ", ".join(log_features) or "none",
    )
    done("prepare")

    # ---- segmentation --------------------------------------------------------------------------
    seg = config.segmentation
    n = summary.rows
    timings: dict[str, float] = {}
    lap = time.perf_counter()
    cluster_moments = combine_moments(
        list(dask.compute(*[delayed(_cluster_moments)(p, schema) for p in parts]))
    )
    scaler = scaler_from_moments(cluster_moments)
    pca = pca_from_moments(cluster_moments, scaler, seg)
    import dask.array as da

    blocks = [delayed(_projection)(p, schema, scaler, pca) for p in parts]
    P = da.concatenate(
        [
            da.from_delayed(b, shape=(rows, pca.n_components_), dtype=np.float64)
            for b, rows in zip(blocks, row_counts, strict=True)
            if rows
        ]
    )
    P = client.persist(P)
    timings["pca"] = round(time.perf_counter() - lap, 3)
    lap = time.perf_counter()
    rate = min(1.0, seg.search_sample / n) if seg.search_sample > 0 else 1.0
    sample_parts = [
        delayed(_sample_rows)(b, seg.seed, i, rate) for i, b in enumerate(P.to_delayed().ravel())
    ]
    S = np.concatenate(dask.compute(*sample_parts))
    selection, search_centers = select_k(S, seg, n_rows=n)
    k = selection.chosen
    timings["k_search"] = round(time.perf_counter() - lap, 3)
    lap = time.perf_counter()
    if k in search_centers:
        init = search_centers[k]
    else:  # k set outside the searched range: k-means++ on the sample, as the search does
        from sklearn.cluster import KMeans

        init = KMeans(n_clusters=k, n_init=seg.n_init, random_state=seg.seed).fit(S)
        init = init.cluster_centers_
    p_blocks = list(P.to_delayed().ravel())
    centers, sizes, iterations = lloyd(
        p_blocks, init, tol=LLOYD_TOL * float(pca.explained_variance_.mean())
    )
    log.info(
        "final K-Means on %d rows: %d Lloyd iteration(s) from the k search's centres", n, iterations
    )
    timings["kmeans"] = round(time.perf_counter() - lap, 3)
    order = size_order(centers, sizes)
    kmeans = kmeans_with_centers(centers[order])
    centers = kmeans.cluster_centers_
    smallest = float(sizes.min() / n)
    if smallest < seg.min_segment_share:
        warning = (
            f"segmentation: the smallest of the k={k} segments holds {100 * smallest:.2f}% of "
            f"the customers, under segmentation.min_segment_share = {seg.min_segment_share:g}"
        )
        log.warning("%s", warning)
        selection.warnings.append(warning)
    meta = _assigned(
        frame._meta_nonempty.head(1),
        np.zeros((1, pca.n_components_)),
        schema,
        scaler,
        centers,
        data.truth_column,
        config.clv.enabled,
    ).iloc[:0]
    import dask.dataframe as dd

    assigned = dd.from_delayed(
        [
            delayed(_assigned)(p, b, schema, scaler, centers, data.truth_column, config.clv.enabled)
            for p, b in zip(
                [p for p, rows in zip(parts, row_counts, strict=True) if rows],
                P.to_delayed().ravel(),
                strict=True,
            )
        ],
        meta=meta,
        verify_meta=False,
    )
    assigned = client.persist(assigned)
    wait(assigned)
    del frame, parts, blocks, P  # their rows on the workers are released with the last reference
    numeric_cols = [f"n{j}" for j in range(len(numeric_names))]
    z_cols = [f"z{j}" for j in range(len(schema.cluster_features))]
    q = seg.outlier_quantile
    spread = [*numeric_cols, "_distance"]
    sums = dask.compute(
        *[
            delayed(_segment_sums)(p, k, numeric_cols + z_cols, spread, q)
            for p in assigned.to_delayed()
        ]
    )
    counts = np.sum([s[0] for s in sums], axis=0)
    totals = np.sum([s[1] for s in sums], axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        means_all = np.nan_to_num(totals / counts[:, None], nan=0.0)
    means = means_all[:, : len(numeric_cols)]
    zscores = means_all[:, len(numeric_cols) :]
    grid = _grid_for(q)
    medians_by_segment = np.zeros((k, len(numeric_cols)))
    thresholds = np.zeros(k)
    for s in range(k):
        if not counts[s]:
            continue
        for j in range(len(spread)):
            at = 100.0 * q if j == len(numeric_cols) else 50.0
            value = merged_percentile(
                at, [grid] * len(sums), [p[2][s, j] for p in sums], [p[3][s, j] for p in sums]
            )
            if j == len(numeric_cols):
                thresholds[s] = value
            else:
                medians_by_segment[s, j] = value
    timings["final_fit"] = round(time.perf_counter() - lap, 3)
    lap = time.perf_counter()
    stability = measure_stability(S, kmeans, seg)
    timings["stability"] = round(time.perf_counter() - lap, 3)
    segmentation = Segmentation(
        scaler=scaler,
        pca=pca,
        kmeans=kmeans,
        labels=np.empty(0, dtype=np.int32),  # per-row labels stay on the cluster
        distances=np.empty(0),
        outlier_thresholds=thresholds,
        selection=selection,
        stability=stability,
        timings=timings,
    )
    # the decile edges of every feature, merged from the same per-(partition, segment) grids
    deciles = [
        merged_percentile(
            decile_points(),
            [grid] * (len(sums) * k),
            [p[2][s, j] for p in sums for s in range(k)],
            [p[3][s, j] for p in sums for s in range(k)],
        )
        for j in range(len(numeric_cols))
    ]
    distribution = feature_distribution(assigned, numeric_names, deciles)
    truth_ari = None
    if data.truth_column is not None:
        crosstab = pd.concat([s[4] for s in sums]).groupby(level=[0, 1]).sum().unstack(fill_value=0)
        truth_ari = adjusted_rand_from_contingency(crosstab.to_numpy())
        log.info("adjusted Rand index against the planted segments: %.3f", truth_ari)
    done("segmentation")

    # ---- naming --------------------------------------------------------------------------------
    try:
        overrides = load_names_file(seg.names_file) if seg.names_file else None
        names = name_segments(list(schema.cluster_features), zscores, overrides)
    except ValueError as exc:
        raise ConfigError(f"segmentation.names_file: {exc}") from None
    warnings = ([] if tx_summary is None else tx_summary.warnings()) + list(selection.warnings)
    for warning in eligibility_warnings(campaigns, [nm.name for nm in names]):
        log.warning("%s", warning)
        warnings.append(warning)
    done("naming")

    # ---- comparison and the report's chart data, on a fixed sample ----------------------------
    evidence = _evidence_on_sample(assigned, schema, pca, centers, thresholds, config, n)
    done("comparison")

    # ---- response model (its rates feed the profiles) ------------------------------------------
    response_timings: dict[str, float] = {}
    response, rates, skipped, response_warnings = _fit_response_on_dask(
        client, config, schema, campaigns, assigned, k, response_timings
    )
    warnings += response_warnings
    profiles = profiles_from_stats(
        numeric_names, counts, means, medians_by_segment, names, campaigns, rates, thresholds
    )
    done("response_model")

    # ---- compile the trees (on this machine, as the local engine does) ------------------------
    from training.response import compile_response_model

    compiled = compile_response_model(response, config.response_model)
    if response is not None and config.response_model.compile:
        done("compile")

    # ---- lifetime value ----------------------------------------------------------------------
    clv = None
    if config.clv.enabled:
        clv = _fit_clv_on_dask(assigned, config, k)
        for profile, value in zip(profiles, clv.segment_values, strict=True):
            profile["clv"] = value
        warnings += clv.fit.notes
        done("clv")

    # ---- export --------------------------------------------------------------------------------
    stage_timings = {s.name: round(s.seconds, 3) for s in stages}
    manifest = {
        "name": config.name,
        "data_fingerprint": fingerprint,
        "config": config_to_dict(config),
        "code_revision": code_revision(),
        "k_selection": selection.to_dict(),
        "stability": stability,
        "metrics": {
            "segmentation": {
                "k": k,
                "pca_components": int(pca.n_components_),
                "pca_explained_variance": float(np.sum(pca.explained_variance_ratio_)),
                "sizes": [int(c) for c in counts],
                "truth_ari": truth_ari,
            },
            "response_model": None if response is None else response.metrics,
            "response_model_skipped": skipped,
            "uplift": None,
            # the engine refuses treated_column with uplift.enabled before fitting
            "uplift_skipped": "no response model"
            if response is None
            else "disabled by configuration (uplift.enabled = false)"
            if not config.uplift.enabled
            else "the response history has no control rows (no treated column or control arm)",
        },
        "warnings": warnings,
        "timings": stage_timings
        | {f"segmentation/{a}": b for a, b in timings.items()}
        | {f"response_model/{a}": b for a, b in response_timings.items()},
        "peak_rss_mb": {s.name: round(s.peak_rss_mb, 1) for s in stages},
        "transactions": None if tx_summary is None else tx_summary.to_dict(),
        "ranking": "response",
        "clv": None if clv is None else clv.fit.to_dict(),
        "comparison": evidence["comparison"],
        "feature_distribution": distribution,
        "resegmentation": None,
        "pool": read_pool_settings(config.campaigns.pool).to_dict(),
        "engine": {
            "name": "dask",
            "cluster": info.to_dict(),
            "partitions": n_parts,
            "workers_peak_rss_mb": worker_peaks,
            "features": dict(FEATURES),
            "approximations": list(APPROXIMATIONS)
            + ([] if tx_summary is None else [TRANSACTIONS_APPROXIMATION])
            + ([] if clv is None else [CLV_APPROXIMATION]),
        },
    }
    bundle = Bundle(
        schema=schema,
        imputer=imputer,
        scaler=scaler,
        pca=pca,
        kmeans=kmeans,
        segment_names=[nm.name for nm in names],
        profiles=profiles,
        campaigns=list(campaigns),
        response_model=None if response is None else response.booster,
        compiled=compiled,
        manifest=manifest,
        evidence=evidence,
    )
    path = write_bundle(bundle, config.output.root, hmac_key=key)
    done("export")
    log.info("bundle written to %s", path)
    result = TrainResult(
        bundle=bundle,
        path=path,
        segmentation=segmentation,
        names=names,
        response=response,
        stages=stages,
        truth_ari=truth_ari,
    )
    if config.output.report:
        from training.html_report import write_html_report

        try:
            result.report_path = write_report(result, config.output.root)
            result.html_report_path = write_html_report(bundle, config.output.root)
        except OSError as exc:
            log.warning("could not write the report: %s", exc)
    return result


def _customer_frame(client: Client, config) -> tuple:
    """(one row per customer as a Dask frame, the Parquet files read, their sources, the
    transactions' cleaning summary or None): the customer table, the features built from
    transactions on the cluster, or the table with those features joined on the id."""
    from training.engines.dask_transactions import features_on_cluster, join_customers

    data = config.data
    files, sources, summary = [], [], None
    frame = None
    if data.customers is not None:
        files += parquet_files(data.customers)
        sources.append(str(data.customers))
        frame = read_partitions(data.customers)
    if data.transactions is not None:
        tx = data.transactions
        id_column = data.id_column or "customer_id"
        files += parquet_files(tx.path)
        sources.append(str(tx.path))
        features, summary = features_on_cluster(client, read_partitions(tx.path), tx, id_column)
        if frame is None:
            frame = features
        else:
            if id_column not in frame.columns:
                raise TableError(
                    "the customer table needs its id column to join the transactions",
                    column=id_column,
                )
            frame = join_customers(frame.map_partitions(_text_ids, id_column), features, id_column)
    return frame, files, sources, summary


#: rows drawn for the comparison and the charts, per row they need (the comparison then takes
#: exactly ``comparison.sample`` of them, by its own seed)
EVIDENCE_OVERSAMPLE = 1.25


def _sample_frame(part: pd.DataFrame, seed: int, index: int, rate: float) -> pd.DataFrame:
    """Rows of one partition kept with probability ``rate`` (seeded per partition)."""
    import numpy as np

    rng = np.random.default_rng([seed, 7, index])
    return part[rng.random(len(part)) < rate]


def _evidence_on_sample(assigned, schema, pca, centers, thresholds, config, n: int) -> dict:
    """The local comparison stage (``training.pipeline.evidence_of_rows``) on a fixed random
    sample of the segmented rows gathered from the cluster."""
    import dask
    import numpy as np
    from dask import delayed

    from training.evidence import MAP_ROWS
    from training.pipeline import evidence_of_rows

    wanted = max(config.comparison.sample, MAP_ROWS)
    rate = min(1.0, EVIDENCE_OVERSAMPLE * wanted / max(n, 1))
    seed = config.segmentation.seed
    sample = pd.concat(
        dask.compute(
            *[delayed(_sample_frame)(p, seed, i, rate) for i, p in enumerate(assigned.to_delayed())]
        ),
        ignore_index=True,
    )
    numeric = sample[[f"n{j}" for j in range(len(schema.numeric_names))]].to_numpy(np.float64)
    Z = sample[[f"z{j}" for j in range(len(schema.cluster_features))]].to_numpy(np.float64)
    codes = sample[[f"c{j}" for j in range(len(schema.categoricals))]].to_numpy()
    labels = sample["_segment"].to_numpy(np.int64)
    ids = sample["_id"].to_numpy() if "_id" in sample.columns else np.arange(len(sample))
    log.info("comparison and charts on a fixed sample of %d rows", len(sample))
    return evidence_of_rows(
        pca.transform(Z),
        Z,
        numeric[:, schema.cluster_index()],
        ids,
        codes,
        labels,
        sample["_distance"].to_numpy() > thresholds[labels],
        centers,
        pca.explained_variance_ratio_,
        schema,
        config,
    )


def _clv_columns(meta: pd.DataFrame) -> list[str]:
    """The CLV features (``scoring.clv.CLV_FEATURES``), refused as the local path refuses when
    the table lacks one."""
    from scoring.clv import CLV_FEATURES

    for column in CLV_FEATURES:
        if column not in meta.columns:
            raise TableError(
                "clv.enabled needs this per-customer feature (built from "
                "[data.transactions], or a column of the customer table)",
                column=column,
            )
    return list(CLV_FEATURES)


def _clv_bad(frame: pd.DataFrame) -> pd.Series:
    """Rows of a partition with a missing or negative CLV feature."""
    from scoring.clv import CLV_FEATURES

    values = pd.DataFrame({c: pd.to_numeric(frame[c], errors="coerce") for c in CLV_FEATURES})
    return values.isna().any(axis=1) | (values < 0).any(axis=1)


def _check_clv_values(frame, id_column: str | None) -> None:
    """Refuse, with the local message, a customer whose CLV features are missing or negative."""
    from scoring.clv import CLV_FEATURES

    bad = frame[frame.map_partitions(_clv_bad, meta=(None, bool))]
    first = bad.head(1, npartitions=-1)
    if len(first):
        who = first[id_column].iloc[0] if id_column in first.columns else first.index[0]
        raise TableError(
            f"clv.enabled: customer {who} has a missing or negative value in "
            + ", ".join(CLV_FEATURES)
        )


@dataclass(frozen=True)
class ClusterCLV:
    """The CLV fit of a Dask run and its per-segment values."""

    fit: Any
    segment_values: list[dict[str, float]]


def _fit_clv_on_dask(assigned, config, k: int) -> ClusterCLV:
    """BG/NBD and Gamma-Gamma fitted on the customers' (frequency, recency, tenure, spend).

    Those four numbers per customer (built on the cluster) and the segment are gathered to the
    client, which fits both models with the single-process ``training.clv.fit_clv``: 40 bytes
    a customer (400 MB for ten million), and the likelihood works on their distinct rows.
    """
    import numpy as np

    from scoring.clv import CLV_FEATURES
    from training.clv import fit_clv, segment_values

    columns = [f"_clv_{c}" for c in CLV_FEATURES]
    gathered = assigned[["_segment", *columns]].compute()
    features = gathered[columns].set_axis(list(CLV_FEATURES), axis=1)
    fit = fit_clv(
        features,
        period_days=config.clv.period_days,
        horizon_months=config.clv.horizon_months,
        discount_rate=config.clv.discount_rate,
    )
    labels = gathered["_segment"].to_numpy(np.int64)
    return ClusterCLV(fit, segment_values(fit.values["clv"], labels, k))


def _combined_digest(digests, config) -> str:
    import hashlib

    digest = hashlib.sha256()
    for part in digests:
        digest.update(part.encode())
    digest.update(repr(config.campaigns.inline).encode())
    return digest.hexdigest()


def _sampled_responses(
    frame: pd.DataFrame, config, pool: list[str], fraction: float, salt: str
) -> pd.DataFrame:
    """The long responses of one partition (every row validated), then only the rows of the
    customers the id hash samples (all rows when ``fraction`` is 1)."""
    long = _responses_partition(frame, config, pool)
    if fraction >= 1.0:
        return long
    return long[_hash_unit(long["_id"], salt) < fraction].reset_index(drop=True)


def _sent_count(frame: pd.DataFrame, config, column: str) -> int:
    """Rows of one partition sent the campaign (treated = 1)."""
    from training.validate import response_values

    return int(response_values(frame[column].reset_index(drop=True), config, column).sum())


def _sent_rows(raw, path, treated_column: str | None, config) -> int:
    """Rows of the response history the model learns from (the treated ones), cheaply: the
    Parquet footers' row counts, or one pass over the treated column alone."""
    if treated_column is None:
        import pyarrow.parquet as pq

        return int(sum(pq.ParquetFile(f).metadata.num_rows for f in parquet_files(path)))
    import dask
    from dask import delayed

    parts = raw[[treated_column]].to_delayed()
    return int(sum(dask.compute(*[delayed(_sent_count)(p, config, treated_column) for p in parts])))


def _join_on_client(client, responses, customers) -> tuple:
    """(the sampled pairs joined to their customers' features as one pandas frame, rows kept,
    distinct (customer, campaign) pairs): duplicates collapsed and joined on the client."""
    import dask

    sampled, people = dask.compute(responses, customers)
    pairs = sampled.groupby(["_id", "_campaign"], sort=False)["_responded"].max().reset_index()
    pairs["_id"] = pairs["_id"].astype("string")
    people["_id"] = people["_id"].astype("string")
    merged = pairs.merge(people, on="_id", how="left")
    return merged, len(sampled), len(pairs)


def _join_on_cluster(client, responses, customers) -> tuple:
    """As :func:`_join_on_client`, as shuffles on the cluster (no cap on the sample)."""
    import dask

    responses = client.persist(responses)
    pairs = responses.groupby(["_id", "_campaign"])["_responded"].max().reset_index()
    n_pairs, n_kept = dask.compute(pairs.shape[0], responses.shape[0])
    pairs["_id"] = pairs["_id"].astype("string")
    customers["_id"] = customers["_id"].astype("string")
    merged = client.persist(pairs.merge(customers, on="_id", how="left"))
    return merged, int(n_kept), int(n_pairs)


def _scatter_rows(client, X, y) -> tuple:
    """``X`` and ``y`` (on the client) as Dask arrays, split into one block per worker and
    scattered there, for ``lightgbm.dask``."""
    import dask.array as da
    import numpy as np

    workers = sorted(client.scheduler_info()["workers"])
    bounds = np.linspace(0, len(y), len(workers) + 1).astype(int)
    X_blocks, y_blocks = [], []
    for worker, start, stop in zip(workers, bounds[:-1], bounds[1:], strict=True):
        if stop <= start:
            continue
        fx, fy = client.scatter(
            [np.ascontiguousarray(X[start:stop]), y[start:stop]], workers=[worker]
        )
        X_blocks.append(da.from_delayed(fx, shape=(stop - start, X.shape[1]), dtype=X.dtype))
        y_blocks.append(da.from_delayed(fy, shape=(stop - start,), dtype=y.dtype))
    return da.concatenate(X_blocks), da.concatenate(y_blocks)


def _dask_rows(part, layout, n_numeric: int, n_codes: int) -> tuple:
    """(X, y, rows) of a merged Dask frame as Dask arrays, one block per partition."""
    import dask.array as da
    import numpy as np
    from dask import delayed

    rows = part.map_partitions(len).compute().tolist()
    pieces = [delayed(_response_rows)(p, layout, n_numeric, n_codes) for p in part.to_delayed()]
    X = da.concatenate(
        [
            da.from_delayed(pc[0], shape=(r, layout.width), dtype=np.float64)
            for pc, r in zip(pieces, rows, strict=True)
            if r
        ]
    )
    y = da.concatenate(
        [
            da.from_delayed(pc[1], shape=(r,), dtype=np.float64)
            for pc, r in zip(pieces, rows, strict=True)
            if r
        ]
    )
    return X, y, sum(rows)


def _fit_response_on_dask(client, config, schema, campaigns, assigned, k, timings=None):
    """(ResponseModel or None, per-(segment, campaign) response rates, why no model, warnings).

    ``timings`` (a dict), when given, receives the seconds of the sub-stages: ``join`` (read,
    sample, collapse and join the responses to the customers), ``arrays`` (the training and
    held-out matrices), ``lightgbm`` (boosting and the held-out loss curve), ``evaluation``.
    """
    timings = {} if timings is None else timings
    lap = [time.perf_counter()]

    def mark(name: str) -> None:
        now = time.perf_counter()
        timings[name] = round(now - lap[0], 3)
        lap[0] = now

    import dask
    import lightgbm as lgb
    import numpy as np
    from lightgbm.dask import DaskLGBMClassifier

    from training.response import (
        EARLY_STOPPING_MIN_DELTA,
        FEATURE_FRACTION,
        ResponseModel,
        evaluate,
        model_feature_names,
    )

    rc = config.responses
    rm = config.response_model
    no_rates = np.full((k, len(campaigns)), np.nan)
    if not rm.enabled:
        return None, no_rates, "disabled by configuration (response_model.enabled = false)", []
    if rc is None:
        return None, no_rates, "no response history", []
    if not campaigns:
        raise TableError(
            "there is a response history but the campaign pool is empty", column="campaign_id"
        )
    pool = [c.id for c in campaigns]
    raw = read_partitions(rc.path)
    for column in (rc.customer_column, rc.campaign_column, rc.responded_column, rc.treated_column):
        if column is not None and column not in raw.columns:
            raise TableError(
                "configured response column absent; the response file has: "
                + ", ".join(map(str, raw.columns)),
                column=column,
            )
    meta = pd.DataFrame(
        {
            "_id": pd.Series(dtype=object),
            "_campaign": pd.Series(dtype="int64"),
            "_responded": pd.Series(dtype="int8"),
        }
    )
    wanted = [rc.customer_column, rc.campaign_column, rc.responded_column]
    if rc.treated_column is not None:
        wanted.append(rc.treated_column)
    n_rows = _sent_rows(raw, rc.path, rc.treated_column, config)
    if n_rows == 0:
        raise TableError("the response history is empty (0 rows)", column="responded")
    fraction = min(1.0, rm.max_train_rows / n_rows) if rm.max_train_rows else 1.0
    salt = f"sample{rm.seed}"
    # ONE pass over the history: every row converted and validated (the single-process
    # messages), then only the sampled customers' rows kept, held in worker memory
    responses = raw[wanted].map_partitions(
        _sampled_responses, config, pool, fraction, salt, meta=meta
    )
    if fraction < 1.0:
        log.info("response model: customers sampled to %.1f%% of %d rows", 100 * fraction, n_rows)
    warnings = []
    n_numeric = len(schema.numeric_names)
    n_codes = len(schema.categoricals)
    customer_cols = (
        ["_id", "_segment"]
        + [f"n{j}" for j in range(n_numeric)]
        + [f"c{j}" for j in range(n_codes)]
    )
    customers = assigned[customer_cols]
    if fraction < 1.0:
        # the same hash picks the same customers: only theirs take part in the join
        customers = customers[
            customers["_id"].map_partitions(
                lambda ids: pd.Series(_hash_unit(ids, salt) < fraction, index=ids.index),
                meta=("_id", bool),
            )
        ]
    layout = schema.response_layout()
    if rm.max_train_rows:
        # capped: the sample (about max_train_rows rows, whatever N is) is joined on the
        # client, without a shuffle; the training rows go back to the workers for LightGBM
        merged, n_kept, n_pairs = _join_on_client(client, responses, customers)
    else:
        merged, n_kept, n_pairs = _join_on_cluster(client, responses, customers)
    if n_kept > n_pairs:
        warning = (
            f"responses: {n_kept - n_pairs} duplicate (customer, campaign) record(s) collapsed, "
            "keeping the maximum (responded if any record says so)"
        )
        log.warning("%s", warning)
        warnings.append(warning)
    on_client = isinstance(merged, pd.DataFrame)
    unknown = merged[merged["_segment"].isna()]
    if on_client:
        n_unknown, example = len(unknown), unknown["_id"].head(1)
    else:
        n_unknown, example = dask.compute(unknown.shape[0], unknown["_id"].head(1, npartitions=-1))
    if n_unknown:
        raise TableError(
            f"{int(n_unknown)} response(s) for customer(s) not in the customer table, "
            f"e.g. {example.iloc[0]!s}",
            column="customer_id",
        )
    cell = merged["_segment"].astype("int64") * len(campaigns) + merged["_campaign"]
    stats = merged.assign(_cell=cell).groupby("_cell")["_responded"].agg(["count", "sum"])
    stats, y_all = dask.compute(stats, merged["_responded"].unique())
    y_all = np.asarray(y_all)
    offers = np.zeros(k * len(campaigns))
    hits = np.zeros(k * len(campaigns))
    offers[stats.index.to_numpy()] = stats["count"].to_numpy()
    hits[stats.index.to_numpy()] = stats["sum"].to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        rates = np.where(offers > 0, hits / np.maximum(offers, 1), np.nan).reshape(k, -1)
    if len(y_all) < 2:
        reason = f"every recorded response is {int(y_all[0])}: there is nothing to learn"
        log.warning("response model skipped: %s", reason)
        return None, rates, reason, warnings

    def held_of(ids):
        return pd.Series(
            _hash_unit(ids, f"split{rm.seed}") < rm.validation_fraction, index=ids.index
        )

    if on_client:
        held = held_of(merged["_id"]).to_numpy()
        X_all, y_all_rows = _response_rows(merged, layout, n_numeric, n_codes)
        ids = merged["_id"]
        n_train_customers = int(ids[~held].nunique())
        n_valid_customers = int(ids[held].nunique())
        Xv, yv = X_all[held], y_all_rows[held]
        n_train, n_valid = int((~held).sum()), int(held.sum())
        mark("join")
        if n_train == 0 or n_valid == 0:
            reason = "responses from a single customer cannot be split into training and held-out"
            return None, rates, reason, warnings
        X_train, y_train = _scatter_rows(client, X_all[~held], y_all_rows[~held])
        del X_all, y_all_rows
    else:
        held = merged["_id"].map_partitions(held_of, meta=("_id", bool))
        train_part, valid_part = merged[~held], merged[held]
        mark("join")
        X_train, y_train, n_train = _dask_rows(train_part, layout, n_numeric, n_codes)
        X_train, y_train = client.persist([X_train.rechunk({1: -1}), y_train])
        X_valid, y_valid, n_valid = _dask_rows(valid_part, layout, n_numeric, n_codes)
        if n_train == 0 or n_valid == 0:
            reason = "responses from a single customer cannot be split into training and held-out"
            return None, rates, reason, warnings
        Xv, yv = dask.compute(X_valid, y_valid)
        n_train_customers, n_valid_customers = dask.compute(
            train_part["_id"].nunique(), valid_part["_id"].nunique()
        )
    columns = model_feature_names(list(layout.columns))
    categorical = [
        *range(layout.code_slots.start, layout.code_slots.stop),
        layout.segment_slot,
        layout.campaign_slot,
    ]
    params = {
        "objective": "binary",
        "learning_rate": rm.learning_rate,
        "num_leaves": rm.num_leaves,
        "min_child_samples": rm.min_child_samples,
        "colsample_bytree": FEATURE_FRACTION,
        "deterministic": True,
        "force_row_wise": True,
        "random_state": rm.seed,
        "verbose": -1,
    }
    log.info("response model: %d training rows, %d held-out rows on the cluster", n_train, n_valid)
    mark("arrays")
    # lightgbm.dask cannot stop early itself (see the module docstring): it trains a chunk of
    # rounds at a time, each continuing the last chunk's booster, and stops as soon as the
    # held-out loss curve shows early stopping's patience ran out, instead of training all
    # max_rounds (on the demo data early stopping keeps ~40 of 500 rounds).
    chunk = max(rm.early_stopping_rounds, ROUND_CHUNK)
    booster, raw_score, losses = None, np.zeros(len(yv)), []
    best = 1
    while len(losses) < rm.max_rounds:
        rounds = min(chunk, rm.max_rounds - len(losses))
        model = DaskLGBMClassifier(n_estimators=rounds, client=client, **params)
        model.fit(
            X_train,
            y_train,
            feature_name=columns,
            categorical_feature=categorical,
            init_model=booster,
        )
        booster = model.booster_
        for i in range(len(losses), booster.current_iteration()):
            raw_score += booster.predict(Xv, raw_score=True, start_iteration=i, num_iteration=1)
            p = np.clip(1.0 / (1.0 + np.exp(-raw_score)), 1e-15, 1 - 1e-15)
            losses.append(float(-np.mean(yv * np.log(p) + (1 - yv) * np.log(1 - p))))
        best = best_round(losses, rm.early_stopping_rounds, EARLY_STOPPING_MIN_DELTA)
        if len(losses) >= best + rm.early_stopping_rounds:
            break
    log.info("response model: %d rounds trained, early stopping keeps %d", len(losses), best)
    mark("lightgbm")
    trimmed = lgb.Booster(model_str=booster.model_to_string(num_iteration=best))
    p_valid = trimmed.predict(Xv)
    metrics = evaluate(yv, p_valid, Xv[:, layout.campaign_slot].astype(int), pool)
    metrics.update(
        best_iteration=int(best),
        n_train_rows=int(n_train),
        n_valid_rows=int(n_valid),
        n_train_customers=int(n_train_customers),
        n_valid_customers=int(n_valid_customers),
        params={kk: v for kk, v in params.items() if kk != "verbose"}
        | {"engine": "lightgbm.dask", "rounds_trained": booster.current_iteration()},
    )
    log.info(
        "response model: best round %d, held-out AUC %s",
        best,
        "n/a" if metrics["auc"] is None else f"{metrics['auc']:.3f}",
    )
    mark("evaluation")
    from scoring import compiled_trees

    check = compiled_trees.check_sample(Xv, rm.seed)
    response = ResponseModel(
        trimmed, metrics, check, campaign_slot=layout.campaign_slot, campaigns=len(pool)
    )
    return response, rates, None, warnings
