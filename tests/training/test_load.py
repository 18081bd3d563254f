"""Tests of reading tables, building RFM features from transactions, campaign pools, responses."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from training.config import TransactionsConfig, config_from_dict
from training.load import (
    RFM_COLUMNS,
    detect_separator,
    load_tables,
    read_campaign_pool,
    read_table,
    rfm_from_transactions,
)
from training.transactions import features_from_transactions
from training.validate import TableError


@pytest.mark.parametrize(
    ("text", "sep"),
    [
        ("id,a,b\n1,2,3\n2,4,5\n", ","),
        ("id;a;b\n1;2,5;3\n2;4;5\n", ";"),
        ("id\ta\tb\n1\t2\t3\n2\t4\t5\n", "\t"),
        (" id  a   b\n 01  2   3\n 02  4   5\n", r"\s+"),
    ],
)
def test_separator_is_detected_and_the_table_read(tmp_path, text, sep):
    path = tmp_path / "t.csv"
    path.write_text(text, encoding="utf-8")
    assert detect_separator(path) == sep
    frame = read_table(path, text_columns=("id",))
    assert list(frame.columns) == ["id", "a", "b"]
    assert len(frame) == 2


def test_id_columns_are_read_as_text(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("id,a\n007,1\n008,2\n", encoding="utf-8")
    assert read_table(path, text_columns=("id",))["id"].tolist() == ["007", "008"]


def test_parquet_is_read_by_extension(tmp_path):
    frame = pd.DataFrame({"id": ["a", "b"], "x": [1.5, 2.5]})
    frame.to_parquet(tmp_path / "t.parquet")
    pd.testing.assert_frame_equal(read_table(tmp_path / "t.parquet"), frame)


def test_missing_file_is_a_table_error(tmp_path):
    with pytest.raises(TableError, match="file not found"):
        read_table(tmp_path / "absent.csv")


TRANSACTIONS = pd.DataFrame(
    {
        "cust": ["a", "a", "a", "b"],
        "when": ["2024-01-01", "2024-01-01", "2024-01-11", "2024-01-05"],
        "amount": [10.0, 5.0, 20.0, 7.0],
    }
)


def test_rfm_from_a_tiny_transaction_table():
    config = TransactionsConfig(
        path="unused", customer_column="cust", date_column="when", amount_column="amount"
    )
    rfm = rfm_from_transactions(TRANSACTIONS, config).set_index("customer_id")
    assert list(rfm.columns) == list(RFM_COLUMNS)
    # reference date: the day after the last transaction, 2024-01-12
    assert rfm.loc["a", "recency_days"] == 1
    assert rfm.loc["a", "tenure_days"] == 11
    assert rfm.loc["a", "frequency"] == 2  # two distinct purchase days
    assert rfm.loc["a", "transaction_count"] == 3
    assert rfm.loc["a", "monetary_total"] == pytest.approx(35.0)
    assert rfm.loc["a", "monetary_avg"] == pytest.approx(17.5)
    assert rfm.loc["b", "recency_days"] == 7
    assert rfm.loc["b", "frequency"] == 1


def test_rfm_with_explicit_reference_date_and_numeric_dates():
    tx = pd.DataFrame({"customer_id": [1, 1], "date": [20240101, 20240103], "amount": [1, 2]})
    config = TransactionsConfig(path="unused", as_of="2024-01-10")
    rfm = rfm_from_transactions(tx, config).set_index("customer_id")
    assert rfm.loc["1", "recency_days"] == 7
    assert rfm.loc["1", "tenure_days"] == 9


def test_rfm_drops_an_unreadable_date_and_refuses_absent_columns():
    bad = TRANSACTIONS.assign(when=["2024-01-01", "yesterday", "2024-01-02", "2024-01-03"])
    config = TransactionsConfig(
        path="unused", customer_column="cust", date_column="when", amount_column="amount"
    )
    rfm = rfm_from_transactions(bad, config).set_index("customer_id")
    assert rfm.loc["a", "transaction_count"] == 2  # the 'yesterday' row is dropped (and counted)
    with pytest.raises(TableError) as err:
        rfm_from_transactions(TRANSACTIONS.drop(columns="amount"), config)
    assert err.value.column == "amount"


def test_transactions_file_becomes_the_customer_table(tmp_path):
    TRANSACTIONS.to_csv(tmp_path / "tx.csv", index=False)
    config = config_from_dict(
        {
            "data": {
                "transactions": {
                    "path": "tx.csv",
                    "customer_column": "cust",
                    "date_column": "when",
                    "amount_column": "amount",
                }
            },
            "features": {"numeric": ["recency_days", "frequency", "monetary_total"]},
        },
        base_dir=tmp_path,
    )
    loaded = load_tables(config)
    assert sorted(loaded.customers["customer_id"]) == ["a", "b"]
    assert loaded.sources == [str((tmp_path / "tx.csv").resolve())]


def test_cdnow_master_transactions_to_rfm(shared_data):
    path = shared_data / "cdnow_lifetimes" / "CDNOW_master.txt"
    tx = read_table(path, text_columns=("customer_id",))
    assert list(tx.columns) == ["customer_id", "date", "number_of_cds", "dollar_value"]
    config = TransactionsConfig(path=str(path), amount_column="dollar_value", zero_amounts="keep")
    rfm = rfm_from_transactions(tx, config)
    assert len(rfm) == tx["customer_id"].nunique()
    assert rfm["customer_id"].is_unique
    assert (rfm["frequency"] >= 1).all()
    assert (rfm["recency_days"] >= 1).all()
    assert (rfm["tenure_days"] >= rfm["recency_days"]).all()
    assert rfm["monetary_total"].sum() == pytest.approx(tx["dollar_value"].sum())
    # CDNOW has 80 free ($0) purchases; dropped by default, and counted
    dropped = features_from_transactions(tx, dataclasses.replace(config, zero_amounts="drop"))
    assert dropped.summary.dropped == {"zero amount in dollar_value": 80}
    assert len(dropped.features) == len(rfm) - 68  # customers whose only purchases were free


POOL = [
    {"id": "a", "name": "A", "value": 10, "channel": "push"},
    {"id": "b", "name": "B", "value": 2.5, "eligible_segments": ["Dormant"]},
]


def test_campaign_pool_from_json_toml_and_csv(tmp_path):
    (tmp_path / "p.json").write_text(json.dumps(POOL), encoding="utf-8")
    (tmp_path / "p.toml").write_text(
        '[[campaign]]\nid = "a"\nname = "A"\nvalue = 10\nchannel = "push"\n'
        '[[campaign]]\nid = "b"\nname = "B"\nvalue = 2.5\neligible_segments = ["Dormant"]\n',
        encoding="utf-8",
    )
    (tmp_path / "p.csv").write_text(
        "id,name,value,channel,eligible_segments\na,A,10,push,\nb,B,2.5,,Dormant\n",
        encoding="utf-8",
    )
    pools = [read_campaign_pool(tmp_path / f"p.{ext}") for ext in ("json", "toml", "csv")]
    for pool in pools:
        assert [c.id for c in pool] == ["a", "b"]
        assert [c.value for c in pool] == [10.0, 2.5]
        assert pool[0].eligible_segments is None
        assert pool[1].eligible_segments == ["Dormant"]
        assert pool[0].channel == "push"


def test_campaign_pool_refuses_unknown_fields_and_missing_value(tmp_path):
    (tmp_path / "p.json").write_text(json.dumps([{**POOL[0], "colour": "red"}]))
    with pytest.raises(TableError, match="unknown field") as err:
        read_campaign_pool(tmp_path / "p.json")
    assert err.value.campaign == "a"
    (tmp_path / "q.json").write_text(json.dumps([{"id": "a", "name": "A"}]))
    with pytest.raises(TableError, match=r"missing field.*value"):
        read_campaign_pool(tmp_path / "q.json")


def test_wide_responses_inside_the_customer_table(tmp_path):
    frame = pd.DataFrame(
        {"ID": ["1", "2", "3"], "x": [1, 2, 3], "c1": [1, 0, np.nan], "c2": ["yes", "no", "no"]}
    )
    frame.to_csv(tmp_path / "c.csv", index=False)
    config = config_from_dict(
        {
            "data": {"customers": "c.csv", "id_column": "ID"},
            "features": {"numeric": ["x"]},
            "campaigns": {"inline": [{"id": "one", "name": "1", "value": 1}]},
            "responses": {"format": "wide", "columns": {"c1": "one", "c2": "two"}},
        },
        base_dir=tmp_path,
    )
    loaded = load_tables(config)
    r = loaded.responses
    # a missing wide value means "not offered": customer 3 got only campaign two
    assert len(r) == 5
    assert r.loc[r["campaign_id"] == "one", "customer_id"].tolist() == ["1", "2"]
    assert r.loc[r["campaign_id"] == "two", "responded"].tolist() == ["yes", "no", "no"]
    assert [c.id for c in loaded.campaigns] == ["one"]


def test_long_responses_from_a_file(tmp_path):
    pd.DataFrame({"customer_id": ["1", "2"], "x": [1, 2]}).to_csv(tmp_path / "c.csv", index=False)
    pd.DataFrame({"who": ["01", "2"], "what": ["a", "a"], "did": [1, 0]}).to_csv(
        tmp_path / "r.csv", index=False
    )
    config = config_from_dict(
        {
            "data": {"customers": "c.csv"},
            "features": {"numeric": ["x"]},
            "responses": {
                "path": "r.csv",
                "customer_column": "who",
                "campaign_column": "what",
                "responded_column": "did",
            },
        },
        base_dir=tmp_path,
    )
    r = load_tables(config).responses
    assert r["customer_id"].tolist() == ["01", "2"]  # ids kept as text
    assert r["responded"].tolist() == [1, 0]
