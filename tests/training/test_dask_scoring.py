"""Batch scoring on a real Dask LocalCluster (2 worker processes, 1 thread each).

Scoring through Dask must equal scoring in one process row for row, and a worker killed with
SIGKILL in the middle of a run must neither lose nor duplicate an output partition.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from bundle_builder import build_bundle, synthetic_customers

from scoring.bundle import load_current
from training.cli import main
from training.engines.dask import PART_NAME, connect, score_dataset
from training.engines.local import score_table
from training.validate import TableError


@pytest.fixture(scope="module")
def cluster():
    """A LocalCluster of two single-threaded worker processes, and its client."""
    with connect(workers=2) as (client, info):
        yield client, info


@pytest.fixture(scope="module")
def scoring_inputs(tmp_path_factory):
    """A bundle, and 4,000 customers as one file and as 8 Parquet partitions."""
    base = tmp_path_factory.mktemp("dask-scoring")
    build_bundle(base / "bundles", n=3000, seed=0, version="v1")
    frame, _ = synthetic_customers(4000, 3)
    parts = base / "parts"
    parts.mkdir()
    for i in range(8):
        frame.iloc[i * 500 : (i + 1) * 500].to_parquet(parts / f"c{i}.parquet", index=False)
    return load_current(base / "bundles"), base / "bundles", frame, parts


def test_the_cluster_has_two_worker_processes(cluster):
    client, info = cluster
    assert info.workers == 2 and info.threads == 2 and info.local
    pids = set(client.run(os.getpid).values())
    assert len(pids) == 2 and os.getpid() not in pids


def test_dask_scoring_equals_one_process_row_for_row(cluster, scoring_inputs, tmp_path):
    client, _ = cluster
    bundle, _, frame, parts = scoring_inputs
    result = score_dataset(client, bundle, parts, tmp_path / "out", show_progress=False)
    assert (result.rows, result.partitions) == (4000, 8)
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == [PART_NAME.format(i) for i in range(8)]
    on_dask = pd.concat(
        [pd.read_parquet(tmp_path / "out" / name) for name in files], ignore_index=True
    )
    in_one = score_table(bundle, frame, batch_size=1000)
    assert list(on_dask["customer_id"]) == list(frame["customer_id"])
    pd.testing.assert_frame_equal(on_dask, in_one)


def test_the_cli_scores_a_glob_on_a_running_scheduler(cluster, scoring_inputs, tmp_path, capsys):
    client, info = cluster
    _, root, frame, parts = scoring_inputs
    out = tmp_path / "scored"
    args = ["score", "--bundle", str(root), "--input", str(parts / "c[0-3].parquet")]
    code = main([*args, "--output", str(out), "--engine", "dask", "--scheduler", info.scheduler])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "scored 2000 customers in 4 partition(s)" in captured.out
    assert "dashboard: http://" in captured.err
    scored = pd.read_parquet(out)
    assert list(scored["customer_id"]) == list(frame["customer_id"].iloc[:2000])
    # the running cluster was only borrowed
    assert len(client.scheduler_info()["workers"]) == 2


def test_bad_inputs_are_refused_with_a_message(cluster, scoring_inputs, tmp_path):
    client, _ = cluster
    bundle, _, frame, parts = scoring_inputs
    with pytest.raises(TableError, match="no Parquet files found"):
        score_dataset(client, bundle, tmp_path / "nothing-*.parquet", tmp_path / "o1")
    thin = tmp_path / "thin"
    thin.mkdir()
    frame.drop(columns=["order_count"]).to_parquet(thin / "a.parquet", index=False)
    with pytest.raises(TableError, match="missing columns order_count"):
        score_dataset(client, bundle, thin, tmp_path / "o2")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "old.parquet").write_bytes(b"x")
    with pytest.raises(TableError, match="exists and is not empty"):
        score_dataset(client, bundle, parts, taken)


def test_a_worker_killed_mid_scoring_loses_and_duplicates_nothing(
    cluster, scoring_inputs, tmp_path
):
    client, _ = cluster
    bundle, _, _, _ = scoring_inputs
    frame, _ = synthetic_customers(24_000, 11)
    parts = tmp_path / "many"
    parts.mkdir()
    n_parts = 48
    size = len(frame) // n_parts
    for i in range(n_parts):
        frame.iloc[i * size : (i + 1) * size].to_parquet(parts / f"c{i:02d}.parquet", index=False)
    out = tmp_path / "out"
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = score_dataset(client, bundle, parts, out, show_progress=False)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread to re-raise
            outcome["error"] = exc

    worker_pids = client.run(os.getpid)
    runner = threading.Thread(target=run)
    runner.start()
    deadline = time.monotonic() + 300
    while not any(out.glob("part-*.parquet")) and runner.is_alive():
        assert time.monotonic() < deadline, "no partition was written"
        time.sleep(0.005)
    written_at_kill = len(list(out.glob("part-*.parquet")))
    victim = sorted(worker_pids.values())[0]
    os.kill(victim, signal.SIGKILL)
    runner.join(timeout=600)
    assert not runner.is_alive()
    if "error" in outcome:
        raise outcome["error"]
    # the kill happened mid-run, not after the last partition was written
    assert written_at_kill < n_parts
    assert outcome["result"].rows == len(frame)
    names = sorted(p.name for p in out.iterdir())
    assert names == [PART_NAME.format(i) for i in range(n_parts)]  # no temporary left over
    scored = pd.concat([pd.read_parquet(out / name) for name in names], ignore_index=True)
    assert list(scored["customer_id"]) == list(frame["customer_id"])
    assert scored["customer_id"].is_unique
    # the nanny restarted the killed worker: the cluster is whole again
    client.wait_for_workers(2, timeout=120)
    assert victim not in set(client.run(os.getpid).values())


def test_a_missing_scheduler_is_a_clear_error(tmp_path):
    with (
        pytest.raises(TableError, match="cannot reach the Dask scheduler"),
        connect("tcp://127.0.0.1:1", timeout=2),
    ):
        pass


def test_score_parts_keep_only_rows_of_their_partition(scoring_inputs, tmp_path):
    from training.engines.dask import score_partition

    bundle, _, frame, _ = scoring_inputs
    rows = score_partition(frame.iloc[:10], bundle, str(tmp_path), 3)
    assert rows == 10
    assert [p.name for p in Path(tmp_path).iterdir()] == [PART_NAME.format(3)]
