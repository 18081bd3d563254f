"""Transactions -> RFM features on a real Dask LocalCluster (2 worker processes) against one process.

The same messy invoice table, split into Parquet files so that customers' purchases and returns
fall in different files, gives exactly the single-process features and the same cleaning counts
by reason (combined across partitions); training from it with ``--engine dask`` writes the
counts to the manifest and segments the customers as the local engine does.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from scoring.bundle import load_current
from scoring.engine import ScoringEngine
from training.cli import main
from training.config import TransactionsConfig
from training.engines.dask import connect, read_partitions
from training.engines.dask_transactions import combine_summaries, features_on_cluster
from training.transactions import CleaningSummary, features_from_transactions
from training.validate import TableError

PARTS = 4


def invoices(n_customers: int = 600, seed: int = 5) -> pd.DataFrame:
    """Invoice lines of three planted kinds of customer, with every kind of bad row.

    Frequent big spenders, occasional small buyers and lapsed ones; cancellations ("C"
    invoices, negative quantities), rows without a customer, unreadable dates, zero prices and
    customers whose returns exceed their purchases or who only return.
    """
    rng = np.random.default_rng(seed)
    rows = []
    kinds = rng.integers(0, 3, n_customers)
    for c, kind in enumerate(kinds):
        visits = [rng.integers(12, 30), rng.integers(2, 6), rng.integers(1, 3)][kind]
        low, high = [(0, 360), (100, 360), (0, 120)][kind]
        price = [30.0, 5.0, 12.0][kind]
        for _ in range(visits):
            day = pd.Timestamp("2011-01-01") + pd.Timedelta(days=int(rng.integers(low, high)))
            rows.append(
                {
                    "InvoiceNo": f"{700000 + len(rows)}",
                    "Quantity": int(rng.integers(1, 6)),
                    "InvoiceDate": day.strftime("%Y-%m-%d"),
                    "UnitPrice": round(float(rng.gamma(4.0, price / 4.0)), 2),
                    "CustomerID": float(10000 + c),
                }
            )
    frame = pd.DataFrame(rows)
    n = len(frame)
    cancel = rng.random(n) < 0.03
    frame.loc[cancel, "InvoiceNo"] = "C" + frame.loc[cancel, "InvoiceNo"]
    frame.loc[cancel, "Quantity"] *= -1
    frame.loc[rng.random(n) < 0.02, "CustomerID"] = np.nan
    frame.loc[rng.random(n) < 0.01, "InvoiceDate"] = "not a date"
    frame.loc[rng.random(n) < 0.01, "UnitPrice"] = 0.0
    # returns worth more than the purchases, and a customer who only returns
    extra = pd.DataFrame(
        {
            "InvoiceNo": ["C900001", "C900002"],
            "Quantity": [-500, -3],
            "InvoiceDate": ["2011-12-01", "2011-12-02"],
            "UnitPrice": [30.0, 4.0],
            "CustomerID": [10000.0, 99999.0],
        }
    )
    # shuffled, so each customer's rows are spread over every file
    return pd.concat([frame, extra]).sample(frac=1.0, random_state=seed).reset_index(drop=True)


def tx_config(**changes) -> TransactionsConfig:
    base = {
        "path": "unused",
        "customer_column": "CustomerID",
        "date_column": "InvoiceDate",
        "quantity_column": "Quantity",
        "price_column": "UnitPrice",
        "invoice_column": "InvoiceNo",
        "return_invoice_pattern": "^C",
        "zero_amounts": "drop",
    }
    return TransactionsConfig(**(base | changes))


def write_parts(frame: pd.DataFrame, folder: Path, parts: int = PARTS) -> Path:
    folder.mkdir(parents=True)
    size = -(-len(frame) // parts)
    for i in range(parts):
        frame.iloc[i * size : (i + 1) * size].to_parquet(folder / f"part-{i}.parquet")
    return folder


@pytest.fixture(scope="module")
def cluster():
    """A LocalCluster of two single-threaded worker processes."""
    with connect(workers=2) as (client, info):
        yield client, info


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    frame = invoices()
    folder = write_parts(frame, tmp_path_factory.mktemp("tx") / "invoices.parquet")
    return pd.read_parquet(folder), folder


@pytest.mark.parametrize(
    "changes",
    [{}, {"returns": "own"}, {"returns": "drop"}, {"as_of": "2011-10-01"}],
    ids=["net", "own", "drop", "as_of"],
)
def test_cluster_features_and_counts_equal_the_single_process_path(changes, table, cluster):
    client, _ = cluster
    frame, folder = table
    config = tx_config(**changes)
    local = features_from_transactions(frame, config)
    features, summary = features_on_cluster(client, read_partitions(folder), config, "customer_id")
    got = features.compute().sort_values("customer_id").reset_index(drop=True)
    # the ids are the same text; Dask holds them in its own string dtype
    as_text = {"customer_id": object}
    pd.testing.assert_frame_equal(got.astype(as_text), local.features.astype(as_text))
    assert summary.to_dict() == local.summary.to_dict()
    assert sorted(summary.warnings()) == sorted(local.summary.warnings())
    # the cross-partition cases really occur in the data
    assert local.summary.dropped and (local.summary.returns or config.returns == "drop")
    if config.returns == "net":
        assert set(local.summary.changed) == {
            "customers with returns but no purchase left out",
            "customers whose returns exceed their purchases in the window: spend set to 0",
        }


def test_bad_transaction_tables_get_the_single_process_message(table, cluster, tmp_path):
    client, _ = cluster
    frame, folder = table
    absent = tx_config(price_column="Price")
    with pytest.raises(TableError) as local:
        features_from_transactions(frame, absent)
    with pytest.raises(TableError) as dask:
        features_on_cluster(client, read_partitions(folder), absent, "customer_id")
    assert str(dask.value) == str(local.value)
    nothing = write_parts(frame.assign(CustomerID=np.nan), tmp_path / "none.parquet")
    with pytest.raises(TableError) as local:
        features_from_transactions(pd.read_parquet(nothing), tx_config())
    with pytest.raises(TableError) as dask:
        features_on_cluster(client, read_partitions(nothing), tx_config(), "customer_id")
    assert str(dask.value) == str(local.value)
    assert "no usable transactions" in str(dask.value)


def test_summaries_add_up_and_keep_the_first_example():
    a = CleaningSummary(rows_in=10, rows_kept=8, dropped={"x": 2}, examples={"x": "'a'"})
    b = CleaningSummary(rows_in=5, rows_kept=3, dropped={"x": 1, "y": 1}, examples={"x": "'b'"})
    b.change("z", 4)
    total = combine_summaries([a, b])
    assert (total.rows_in, total.rows_kept) == (15, 11)
    assert total.dropped == {"x": 3, "y": 1}
    assert total.changed == {"z": 4}
    assert total.examples == {"x": "'a'"}


def test_training_from_transactions_on_dask_agrees_with_the_local_engine(table, cluster, tmp_path):
    frame, folder = table
    _, info = cluster
    frame.to_parquet(tmp_path / "invoices-one.parquet")
    common = """
[data]
id_column = "customer_id"
[data.transactions]
customer_column = "CustomerID"
date_column = "InvoiceDate"
quantity_column = "Quantity"
price_column = "UnitPrice"
invoice_column = "InvoiceNo"
return_invoice_pattern = "^C"
[features]
numeric = ["recency_days", "frequency", "monetary_total", "monetary_avg", "tenure_days"]
[segmentation]
k_min = 2
k_max = 6
seed = 1
[response_model]
enabled = false
[clv]
enabled = true
period_days = 7
[output]
report = false
"""
    roots = {}
    for engine, path in (("local", tmp_path / "invoices-one.parquet"), ("dask", folder)):
        root = tmp_path / engine
        text = common.replace(
            "[data.transactions]", f'[data.transactions]\npath = "{path}"'
        ).replace("[output]", f'[output]\nroot = "{root}"')
        config = tmp_path / f"{engine}.toml"
        config.write_text(f'name = "tx-{engine}"\n' + text)
        args = ["-q", "train", "--config", str(config), "--engine", engine]
        if engine == "dask":
            args += ["--scheduler", info.scheduler]
        assert main(args) == 0
        roots[engine] = root
    local, dask = (load_current(roots[e]) for e in ("local", "dask"))
    assert dask.manifest["transactions"] == local.manifest["transactions"]
    assert dask.manifest["engine"]["name"] == "dask"
    tx_warnings = [w for w in local.manifest["warnings"] if w.startswith("transactions:")]
    assert tx_warnings and all(w in dask.manifest["warnings"] for w in tx_warnings)
    assert dask.n_segments == local.n_segments
    # lifetime value: the same fit on the same per-customer summaries (the client fits both)
    clv_local, clv_dask = local.manifest["clv"], dask.manifest["clv"]
    for model in ("bgnbd", "gamma_gamma"):
        for name, value in clv_local[model]["params"].items():
            assert clv_dask[model]["params"][name] == pytest.approx(value, rel=1e-6)
    assert clv_dask["total_value"] == pytest.approx(clv_local["total_value"], rel=1e-6)
    local_shares = [p["clv"]["share"] for p in local.profiles]
    dask_shares = [p["clv"]["share"] for p in dask.profiles]
    assert dask_shares == pytest.approx(local_shares, abs=0.02)
    built = features_from_transactions(frame, tx_config(zero_amounts="drop")).features
    labels = [
        ScoringEngine(b).assign(ScoringEngine(b).batch_from_frame(built)).segment
        for b in (local, dask)
    ]
    assert adjusted_rand_score(*labels) >= 0.95
    assert json.loads((roots["dask"] / "current" / "manifest.json").read_text())["transactions"]


def test_clv_on_dask_refuses_a_negative_value_with_the_local_message(cluster, tmp_path, capsys):
    _, info = cluster
    rng = np.random.default_rng(0)
    n = 400
    table = pd.DataFrame(
        {
            "customer_id": [f"c{i}" for i in range(n)],
            "frequency": rng.integers(1, 9, n),
            "recency_days": rng.integers(0, 300, n),
            "tenure_days": rng.integers(300, 400, n),
            "monetary_avg": rng.gamma(2.0, 10.0, n),
        }
    )
    table.loc[250, "monetary_avg"] = -1.0
    one = tmp_path / "one.parquet"
    table.to_parquet(one)
    folder = write_parts(table, tmp_path / "parts.parquet")
    messages = []
    for engine, path in (("local", one), ("dask", folder)):
        config = tmp_path / f"{engine}.toml"
        config.write_text(
            f'name = "clv"\n[data]\ncustomers = "{path}"\nid_column = "customer_id"\n'
            '[features]\nnumeric = ["frequency", "recency_days", "tenure_days", "monetary_avg"]\n'
            f'[clv]\nenabled = true\n[output]\nroot = "{tmp_path / engine}"\nreport = false\n'
        )
        args = ["train", "--config", str(config), "--engine", engine]
        if engine == "dask":
            args += ["--scheduler", info.scheduler]
        capsys.readouterr()
        assert main(args) == 2
        err = capsys.readouterr().err.splitlines()
        messages.append([line for line in err if line.startswith("error:")])
    assert "customer c250 has a missing or negative value" in messages[0][0]
    assert messages[0] == messages[1]
