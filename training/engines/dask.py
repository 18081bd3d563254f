"""The Dask engine: training and batch scoring on a Dask cluster, partition by partition.

The same stages as the local engine, with the table read in partitions (a folder or glob of
Parquet files) and every pass over the rows done on the workers; only small per-partition
results travel back and are combined on the client. What runs where:

=====================  =========================================================================
stage                  on the cluster
=====================  =========================================================================
read                   ``dask.dataframe.read_parquet``: one partition per file (or row group)
validation, stats      per-partition column summaries, combined (``training.partitioned``), then
                       the same checks and messages as the single-process path
medians                approximate quantiles (``Series.quantile``: per-partition percentiles,
                       merged), the imputer fitted on them
scaling and PCA        moments reduced over partitions (count, sum, X'X): the StandardScaler and
                       the covariance-eigh PCA the local path fits, built from the sums
k search               the local rule on a fixed random sample of the projected rows (the local
                       path searches a sample too), silhouette on its fixed sub-sample
final K-Means          ``dask_ml.cluster.KMeans`` with k-means|| initialisation on all rows
profiles, naming       per-segment sums and approximate medians, reduced over partitions
response model         ``lightgbm.dask`` (one LightGBM process per worker, rows where they are);
                       early stopping applied afterwards on the held-out loss curve, because
                       ``lightgbm.dask`` workers evaluate their own rows and may disagree on
                       when to stop (which deadlocks their collective)
batch scoring          the single-process scoring function on each partition, one output file
                       per input partition written under a temporary name and renamed, so a task
                       retried after a worker dies never loses or duplicates a partition
=====================  =========================================================================

The fitted objects are the ones the service loads (scikit-learn, LightGBM Booster): the bundle is
written and verified by ``scoring.bundle`` exactly as for the local engine, and its manifest
records ``engine``, the cluster size and per-stage timings.

Libraries: dask, distributed, dask-ml (k-means||) and lightgbm.dask. dask-ml's own
``StandardScaler``/``PCA`` are not used: their fitted objects are dask-ml classes the service
would have to install, while the moments give scikit-learn's objects exactly.
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
    threads_per_worker: int = 1,
    timeout: float = 30.0,
) -> Iterator[tuple[Client, ClusterInfo]]:
    """A client of the cluster at ``scheduler``, or of a LocalCluster started for the run.

    The LocalCluster has ``workers`` worker processes (default: one per core) of
    ``threads_per_worker`` threads, listening on the loopback interface only; it is stopped on
    exit. An existing cluster is left running; ``timeout`` (seconds) bounds the wait for it.
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
        n = workers or os.cpu_count() or 1
        cluster = LocalCluster(
            n_workers=n,
            threads_per_worker=threads_per_worker,
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
    # one verified bundle shipped to every worker once (workers need not see the bundle root)
    [shared] = client.scatter([bundle], broadcast=True)
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
