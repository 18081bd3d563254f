"""Transactions -> per-customer features: quantity x price, returns, dropped rows, snapshot date.

The made-up invoice table has the shape of a real online-retail export (invoice, stock code,
quantity, date, unit price, customer id): a cancelled invoice ("C..." with a negative quantity),
lines without a customer id, a zero price and an unreadable date.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from training.config import ConfigError, TransactionsConfig, config_from_dict
from training.pipeline import train
from training.transactions import (
    FEATURE_COLUMNS,
    clean_transactions,
    customer_features,
    features_from_transactions,
)
from training.validate import TableError

INVOICES = pd.DataFrame(
    [
        ("536365", "85123A", 6, "2010-12-01 08:26", 2.55, 17850.0),
        ("536365", "71053", 2, "2010-12-01 08:26", 3.39, 17850.0),
        ("536366", "22633", 4, "2010-12-05 09:00", 1.85, 17850.0),
        ("C536379", "85123A", -2, "2010-12-07 10:00", 2.55, 17850.0),
        ("536380", "22632", 3, "2010-12-03 11:00", 2.10, 13047.0),
        ("536381", "22633", 1, "2010-12-04 12:00", 0.0, 13047.0),
        ("536382", "22633", 5, "not a date", 1.85, 13047.0),
        ("536383", "21730", 10, "2010-12-06 13:00", 4.25, np.nan),
        ("536384", "10002", 2, "2010-12-06 14:00", 0.85, 12583.0),
    ],
    columns=["InvoiceNo", "StockCode", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID"],
)


def retail_config(**changes) -> TransactionsConfig:
    base = {
        "path": "unused",
        "customer_column": "CustomerID",
        "date_column": "InvoiceDate",
        "quantity_column": "Quantity",
        "price_column": "UnitPrice",
        "invoice_column": "InvoiceNo",
        "return_invoice_pattern": "^C",
        "as_of": "2010-12-10",
    }
    return TransactionsConfig(**(base | changes))


def test_amount_is_quantity_times_price_and_cancellations_are_netted():
    built = features_from_transactions(INVOICES, retail_config())
    rfm = built.features.set_index("customer_id")
    assert list(built.features.columns) == ["customer_id", *FEATURE_COLUMNS]
    # float ids with gaps read as 17850, not 17850.0
    assert sorted(rfm.index) == ["12583", "13047", "17850"]
    a = rfm.loc["17850"]
    gross = 6 * 2.55 + 2 * 3.39 + 4 * 1.85
    assert a["monetary_total"] == pytest.approx(gross - 2 * 2.55)
    assert a["frequency"] == 2  # the cancellation day (12-07) is not a purchase day
    assert a["transaction_count"] == 2  # two purchase invoices
    assert a["recency_days"] == 5  # last purchase 12-05, snapshot 12-10
    assert a["tenure_days"] == 9
    assert a["avg_days_between"] == pytest.approx(4.0)
    assert a["return_count"] == 1
    assert a["return_share"] == pytest.approx(2 * 2.55 / gross)
    assert a["monetary_avg"] == pytest.approx(a["monetary_total"] / 2)
    one_day = rfm.loc["12583"]
    assert one_day["frequency"] == 1
    assert one_day["avg_days_between"] == one_day["tenure_days"] == 4


def test_every_dropped_row_is_counted_and_named():
    built = features_from_transactions(INVOICES, retail_config())
    summary = built.summary
    assert summary.rows_in == 9
    assert summary.dropped == {
        "no customer id": 1,
        "unreadable date in InvoiceDate": 1,
        "zero amount (Quantity or UnitPrice is 0)": 1,
    }
    assert summary.rows_kept == 6
    assert summary.returns == 1
    text = "\n".join(summary.warnings())
    assert "1 of 9 rows dropped: no customer id" in text
    assert "unreadable date in InvoiceDate (e.g. 'not a date')" in text
    assert "zero amount" in text
    # customer 13047 kept its one good purchase
    assert built.features.set_index("customer_id").loc["13047", "frequency"] == 1


def test_returns_drop_and_own():
    dropped = features_from_transactions(INVOICES, retail_config(returns="drop"))
    rfm = dropped.features.set_index("customer_id")
    gross = 6 * 2.55 + 2 * 3.39 + 4 * 1.85
    assert rfm.loc["17850", "monetary_total"] == pytest.approx(gross)
    assert rfm.loc["17850", "return_count"] == 0
    assert dropped.summary.dropped["a return or cancellation (returns = drop)"] == 1
    own = features_from_transactions(INVOICES, retail_config(returns="own"))
    rfm = own.features.set_index("customer_id")
    assert rfm.loc["17850", "monetary_total"] == pytest.approx(gross)
    assert rfm.loc["17850", "return_count"] == 1
    assert rfm.loc["17850", "return_share"] == pytest.approx(2 * 2.55 / gross)


def test_invoice_pattern_marks_a_positive_cancellation_and_sign_alone_works_without_it():
    tx = INVOICES.assign(Quantity=INVOICES["Quantity"].abs())
    with_pattern = features_from_transactions(tx, retail_config()).features.set_index("customer_id")
    assert with_pattern.loc["17850", "return_count"] == 1
    without = features_from_transactions(
        INVOICES, retail_config(return_invoice_pattern=None)
    ).features.set_index("customer_id")
    assert without.loc["17850", "return_count"] == 1  # negative quantity
    assert without.loc["17850", "frequency"] == 2


def test_returns_beyond_purchases_clip_spend_and_return_only_customers_are_left_out():
    tx = pd.DataFrame(
        {
            "customer_id": ["a", "a", "b"],
            "date": ["2024-01-01", "2024-01-02", "2024-01-03"],
            "amount": [10.0, -25.0, -5.0],
        }
    )
    built = features_from_transactions(tx, TransactionsConfig(path="unused"))
    rfm = built.features.set_index("customer_id")
    assert list(rfm.index) == ["a"]
    assert rfm.loc["a", "monetary_total"] == 0.0
    assert rfm.loc["a", "return_share"] == 1.0
    assert built.summary.changed == {
        "customers with returns but no purchase left out": 1,
        "customers whose returns exceed their purchases in the window: spend set to 0": 1,
    }


def test_snapshot_date_leaves_out_later_rows_and_counts_them():
    tx = pd.DataFrame(
        {
            "customer_id": ["a", "a", "b"],
            "date": ["2024-01-01", "2024-02-01", "2024-03-01"],
            "amount": [10.0, 20.0, 5.0],
        }
    )
    built = features_from_transactions(tx, TransactionsConfig(path="unused", as_of="2024-02-01"))
    rfm = built.features.set_index("customer_id")
    assert list(rfm.index) == ["a"]
    assert rfm.loc["a", "monetary_total"] == 10.0
    assert rfm.loc["a", "recency_days"] == 31
    assert built.summary.dropped == {"dated on or after the snapshot date 2024-02-01": 2}


def test_customer_features_is_a_pure_function_of_the_normal_form():
    clean, _ = clean_transactions(INVOICES, retail_config())
    before = clean.copy()
    one = customer_features(clean, pd.Timestamp("2010-12-10"))
    # the same rows in another order give the same features
    shuffled = clean.sample(frac=1.0, random_state=3).reset_index(drop=True)
    two = customer_features(shuffled, pd.Timestamp("2010-12-10"))
    pd.testing.assert_frame_equal(one, two)
    pd.testing.assert_frame_equal(clean, before)


def test_mostly_unreadable_columns_are_refused_as_misconfigured():
    tx = pd.DataFrame(
        {"customer_id": ["a", "b", "c"], "date": ["2024-01-02", "x", "y"], "amount": [1, 2, 3]}
    )
    with pytest.raises(TableError, match="2 of 3 values are unreadable dates") as err:
        features_from_transactions(tx, TransactionsConfig(path="unused", date_format="%Y-%m-%d"))
    assert err.value.column == "date"
    tx = pd.DataFrame(
        {"customer_id": ["a", "b"], "date": ["2024-01-01"] * 2, "amount": ["1,5", "2,5"]}
    )
    with pytest.raises(TableError, match="unreadable numbers") as err:
        features_from_transactions(tx, TransactionsConfig(path="unused"))
    assert err.value.column == "amount"


def test_a_table_with_nothing_usable_is_refused_with_the_reasons():
    tx = pd.DataFrame({"customer_id": [None, None], "date": ["2024-01-01"] * 2, "amount": [1, 2]})
    with pytest.raises(TableError, match=r"no usable transactions.*no customer id: 2"):
        features_from_transactions(tx, TransactionsConfig(path="unused"))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"returns": "keep"}, 'returns: \'keep\' is not allowed; expected one of "net", "drop"'),
        ({"quantity_column": "q"}, "set both"),
        ({"return_invoice_pattern": "^C"}, "needs invoice_column"),
        ({"return_invoice_pattern": "(", "invoice_column": "i"}, "expected a regular expression"),
        ({"as_of": "July"}, "expected a date yyyy-mm-dd"),
    ],
)
def test_config_refuses_inconsistent_transaction_settings(changes, message):
    raw = {
        "data": {"transactions": {"path": "tx.csv"} | changes},
        "features": {"numeric": ["frequency"]},
    }
    with pytest.raises(ConfigError, match=message):
        config_from_dict(raw)


def test_training_from_an_invoice_table_writes_the_warnings_to_the_manifest(tmp_path):
    rng = np.random.default_rng(0)
    n = 3000
    frame = pd.DataFrame(
        {
            "InvoiceNo": [f"{'C' if i % 50 == 0 else ''}{600000 + i}" for i in range(n)],
            "Quantity": rng.integers(1, 12, n) * np.where(np.arange(n) % 50 == 0, -1, 1),
            "InvoiceDate": pd.Timestamp("2011-01-01")
            + pd.to_timedelta(rng.integers(0, 300, n), unit="D"),
            "UnitPrice": np.round(rng.gamma(2.0, 2.0, n), 2),
            "CustomerID": rng.integers(10000, 10400, n).astype(float),
        }
    )
    frame.loc[::40, "CustomerID"] = np.nan
    frame.loc[7, "UnitPrice"] = 0.0
    frame.to_csv(tmp_path / "invoices.csv", index=False)
    config = config_from_dict(
        {
            "name": "invoices",
            "data": {
                "transactions": {
                    "path": "invoices.csv",
                    "customer_column": "CustomerID",
                    "date_column": "InvoiceDate",
                    "quantity_column": "Quantity",
                    "price_column": "UnitPrice",
                    "invoice_column": "InvoiceNo",
                    "return_invoice_pattern": "^C",
                }
            },
            "features": {"numeric": ["recency_days", "frequency", "monetary_total"]},
            "segmentation": {"k_min": 2, "k_max": 4, "stability_bootstraps": 0},
            "response_model": {"enabled": False},
            "output": {"root": str(tmp_path / "out"), "report": False},
        },
        base_dir=tmp_path,
    )
    result = train(config)
    manifest = json.loads((result.path / "manifest.json").read_text())
    assert any("no customer id" in w and "75 of 3,000" in w for w in manifest["warnings"])
    assert any("zero amount" in w for w in manifest["warnings"])
    assert manifest["transactions"]["dropped"]["no customer id"] == 75
    assert manifest["transactions"]["returns"] > 0
    assert min(p["size"] for p in result.bundle.profiles) > 0
