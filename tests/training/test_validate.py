"""Every bad-table case stops preparation with a TableError naming the column and the problem."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from training.config import config_from_dict
from training.prepare import prepare
from training.validate import TableError, check_features, decide_log_features


def good_table(n: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "customer_id": [f"c{i}" for i in range(n)],
            "spend": rng.lognormal(3, 1, n).round(2),
            "orders": rng.integers(0, 20, n),
            "share": rng.random(n).round(3),
            "score": rng.normal(0, 1, n).round(3),
            "tier": rng.choice(["gold", "silver"], n),
        }
    )


def make_config(tmp_path: Path, frame: pd.DataFrame, **sections) -> object:
    """Write ``frame`` as CSV and return a config over it (sections override the defaults)."""
    frame.to_csv(tmp_path / "customers.csv", index=False)
    raw = {
        "data": {"customers": "customers.csv"},
        "features": {
            "numeric": ["spend", "orders", "share", "score"],
            "kinds": {"spend": "amount", "orders": "count", "share": "ratio"},
            "categorical": ["tier"],
        },
        "segmentation": {"k_max": 5},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return config_from_dict(raw, base_dir=tmp_path)


def refused(tmp_path, frame, **sections) -> TableError:
    with pytest.raises(TableError) as err:
        prepare(make_config(tmp_path, frame, **sections))
    return err.value


def test_the_good_table_prepares(tmp_path):
    assert prepare(make_config(tmp_path, good_table())).numeric.shape == (40, 4)


def test_empty_table(tmp_path):
    err = refused(tmp_path, good_table().iloc[:0])
    assert "empty" in err.problem


def test_missing_ids(tmp_path):
    frame = good_table()
    frame.loc[3, "customer_id"] = None
    err = refused(tmp_path, frame)
    assert err.column == "customer_id"
    assert "missing id" in err.problem and "row 3" in err.problem


def test_duplicate_ids_give_an_example_and_count(tmp_path):
    frame = good_table()
    frame.loc[[5, 9, 11], "customer_id"] = "c7"
    err = refused(tmp_path, frame)
    assert err.column == "customer_id"
    assert "duplicate" in err.problem and "c7" in err.problem and "4 times" in err.problem


def test_absent_columns_are_listed_with_what_is_there(tmp_path):
    err = refused(tmp_path, good_table().drop(columns=["orders", "tier"]))
    assert err.column == "orders"
    assert "orders, tier" in err.problem
    assert "the table has: customer_id, spend" in err.problem


def test_non_numeric_value_shows_the_value_and_row_id(tmp_path):
    frame = good_table().astype({"score": object})
    frame.loc[6, "score"] = "n/a?"
    err = refused(tmp_path, frame)
    assert err.column == "score"
    assert "non-numeric value 'n/a?'" in err.problem and "id c6" in err.problem


def test_all_missing_column(tmp_path):
    err = refused(tmp_path, good_table().assign(score=np.nan))
    assert err.column == "score"
    assert "all values are missing" in err.problem


def test_constant_column(tmp_path):
    err = refused(tmp_path, good_table().assign(score=3.0))
    assert err.column == "score"
    assert "constant" in err.problem


def test_constant_categorical_column(tmp_path):
    err = refused(tmp_path, good_table().assign(tier="gold"))
    assert err.column == "tier"
    assert "constant" in err.problem


def test_negative_value_where_a_log_transform_is_asked(tmp_path):
    err = refused(tmp_path, good_table(), features={"log": ["score"]})
    assert err.column == "score"
    assert "negative" in err.problem and "log transform" in err.problem


@pytest.mark.parametrize(("column", "value"), [("spend", -5.0), ("orders", -1)])
def test_negative_value_where_the_kind_forbids_it(tmp_path, column, value):
    frame = good_table()
    frame.loc[2, column] = value
    err = refused(tmp_path, frame)
    assert err.column == column
    assert "negative" in err.problem and "id c2" in err.problem


def test_ratio_outside_zero_one(tmp_path):
    frame = good_table()
    frame.loc[4, "share"] = 1.4
    err = refused(tmp_path, frame)
    assert err.column == "share"
    assert "1.4" in err.problem and "outside" in err.problem


def test_fewer_rows_than_the_k_search_needs(tmp_path):
    err = refused(tmp_path, good_table(5), segmentation={"k_max": 8})
    assert "n_samples=5 should be >= 9" in err.problem


def test_fewer_rows_than_a_fixed_k(tmp_path):
    err = refused(tmp_path, good_table(5), segmentation={"k": 6})
    assert "n_samples=5 should be >= 7" in err.problem


def test_unknown_feature_in_a_feature_list(tmp_path):
    err = refused(tmp_path, good_table(), features={"cluster": ["spend", "height"]})
    assert err.column == "height"
    assert "features.cluster" in err.problem


def write_responses(tmp_path: Path, rows: list[tuple]) -> None:
    pd.DataFrame(rows, columns=["customer_id", "campaign_id", "responded"]).to_csv(
        tmp_path / "responses.csv", index=False
    )


RESPONSE_SECTIONS = {
    "campaigns": {"inline": [{"id": "promo", "name": "Promo", "value": 5}]},
    "responses": {"path": "responses.csv"},
}


def test_responses_for_an_unknown_campaign_name_it(tmp_path):
    write_responses(tmp_path, [("c1", "promo", 1), ("c2", "mystery", 0)])
    err = refused(tmp_path, good_table(), **RESPONSE_SECTIONS)
    assert err.campaign == "mystery"
    assert "not in the pool" in err.problem


def test_responses_for_an_unknown_customer(tmp_path):
    write_responses(tmp_path, [("c1", "promo", 1), ("zz9", "promo", 0)])
    err = refused(tmp_path, good_table(), **RESPONSE_SECTIONS)
    assert err.column == "customer_id"
    assert "not in the customer table" in err.problem and "zz9" in err.problem


def test_response_values_that_are_not_zero_one_or_words(tmp_path):
    write_responses(tmp_path, [("c1", "promo", "yes"), ("c2", "promo", "maybe")])
    err = refused(tmp_path, good_table(), **RESPONSE_SECTIONS)
    assert err.column == "responded"
    assert "'maybe'" in err.problem


def test_numeric_response_values_other_than_zero_one(tmp_path):
    write_responses(tmp_path, [("c1", "promo", 1), ("c2", "promo", 2)])
    err = refused(tmp_path, good_table(), **RESPONSE_SECTIONS)
    assert err.column == "responded"
    assert "not 0 or 1" in err.problem


def test_empty_response_history(tmp_path):
    write_responses(tmp_path, [])
    err = refused(tmp_path, good_table(), **RESPONSE_SECTIONS)
    assert "empty" in err.problem


def test_bad_campaign_id_and_duplicate_campaign(tmp_path):
    write_responses(tmp_path, [("c1", "promo", 1)])
    bad = {"inline": [{"id": "has space", "name": "x", "value": 1}]}
    err = refused(tmp_path, good_table(), **{**RESPONSE_SECTIONS, "campaigns": bad})
    assert err.campaign == "has space" and "invalid campaign id" in err.problem
    dup = {"inline": [{"id": "promo", "name": "x", "value": 1}] * 2}
    err = refused(tmp_path, good_table(), **{**RESPONSE_SECTIONS, "campaigns": dup})
    assert err.campaign == "promo" and "duplicate" in err.problem


def test_checks_do_not_modify_the_input_frame(tmp_path):
    frame = good_table()
    frame.loc[1, "spend"] = np.nan
    before = frame.copy()
    config = make_config(tmp_path, frame)
    check_features(frame, config)
    pd.testing.assert_frame_equal(frame, before)


def test_auto_log_picks_skewed_non_negative_features_only(tmp_path):
    config = make_config(tmp_path, good_table())
    rng = np.random.default_rng(1)
    columns = {
        "skewed": rng.lognormal(0, 1.5, 2000),
        "symmetric": rng.normal(10, 1, 2000),
        "negative_skewed": rng.lognormal(0, 1.5, 2000) - 1.0,
        "skewed_with_gaps": np.where(rng.random(2000) < 0.1, np.nan, rng.lognormal(0, 1.5, 2000)),
    }
    chosen = decide_log_features(columns, list(columns), config)
    assert chosen == ("skewed", "skewed_with_gaps")
    # only cluster features are candidates
    assert decide_log_features(columns, ["symmetric"], config) == ()
