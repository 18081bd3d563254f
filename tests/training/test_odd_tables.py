"""Customer tables nobody here has seen: odd formats either train or are refused cleanly.

Each test is a regression test for a case found by feeding small hand-made tables to
``python -m training train``: local number formats, ids that only look alike, misnamed files,
dates listed as numbers, duplicated responses, campaigns whose AUC is undefined, and k against
the number of rows or distinct customers.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from scoring.campaigns import Campaign
from training.__main__ import main
from training.config import ConfigError, SegmentationConfig, config_from_dict
from training.load import read_table
from training.prepare import prepare
from training.response import evaluate
from training.segmentation import fit_segmentation
from training.validate import TableError, eligibility_warnings


def table(n: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    return pd.DataFrame(
        {
            "cid": [f"c{i}" for i in range(n)],
            "spend": np.r_[rng.gamma(2, 50, n // 2), rng.gamma(2, 900, n - n // 2)].round(2),
            "orders": rng.poisson(5, n),
            "recency": rng.integers(0, 365, n),
        }
    )


def config(tmp_path: Path, customers: str, **sections):
    raw = {
        "data": {"customers": customers, "id_column": "cid"},
        "features": {"numeric": ["spend", "orders", "recency"]},
        "segmentation": {"k_max": 4, "stability_bootstraps": 1},
        "response_model": {"enabled": False},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return config_from_dict(raw, base_dir=tmp_path)


def test_thousands_separators_read_when_configured_and_hinted_otherwise(tmp_path):
    frame = table()
    frame["spend"] = [f"{v:,.2f}" for v in frame["spend"]]
    frame.to_csv(tmp_path / "t.csv", index=False, quoting=1)
    with pytest.raises(TableError) as err:
        prepare(config(tmp_path, "t.csv"))
    assert err.value.column == "spend" and "data.thousands" in err.value.problem
    prepared = prepare(config(tmp_path, "t.csv", data={"thousands": ","}))
    assert prepared.numeric[:, 0].max() > 1000  # "1,234.50" read as 1234.5, not refused


def test_decimal_commas_read_when_configured(tmp_path):
    frame = table()
    expected = frame["spend"].to_numpy()
    frame["spend"] = [f"{v:.2f}".replace(".", ",") for v in frame["spend"]]
    frame.to_csv(tmp_path / "t.csv", index=False, sep=";")
    with pytest.raises(TableError) as err:
        prepare(config(tmp_path, "t.csv"))
    assert 'data.decimal = ","' in err.value.problem
    prepared = prepare(config(tmp_path, "t.csv", data={"decimal": ","}))
    np.testing.assert_allclose(prepared.numeric[:, 0], expected)


def test_number_marks_must_differ(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.thousands"):
        config(tmp_path, "t.csv", data={"decimal": ",", "thousands": ","})


def test_ids_keep_leading_zeros_and_lose_surrounding_blanks(tmp_path):
    frame = table()
    frame.loc[0, "cid"], frame.loc[1, "cid"], frame.loc[2, "cid"] = "007", "7", " c5 "
    frame.to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(TableError) as err:
        prepare(config(tmp_path, "t.csv"))
    # " c5 " and "c5" are one customer written twice; "007" and "7" are two customers
    assert err.value.column == "cid" and "c5 (2 times)" in err.value.problem
    frame.loc[2, "cid"] = " c2 "
    frame.to_csv(tmp_path / "t.csv", index=False)
    ids = list(prepare(config(tmp_path, "t.csv")).customers.index[:3])
    assert ids == ["007", "7", "c2"]


def test_whole_float_ids_read_as_integers(tmp_path):
    frame = table().assign(cid=np.arange(40, dtype=np.float64) + 1000)
    frame.to_parquet(tmp_path / "t.parquet", index=False)
    assert prepare(config(tmp_path, "t.parquet")).customers.index[0] == "1000"


def test_a_parquet_file_is_recognised_by_content_not_name(tmp_path):
    table().to_parquet(tmp_path / "t.csv", index=False)
    assert len(read_table(tmp_path / "t.csv")) == 40
    table().to_csv(tmp_path / "t.parquet", index=False)
    with pytest.raises(TableError, match="not a Parquet file"):
        read_table(tmp_path / "t.parquet")


@pytest.mark.parametrize(
    ("content", "expected"),
    [(b"", "the file is empty"), ("dépense,x\n1,2\n".encode("latin-1"), "not UTF-8")],
)
def test_unreadable_text_files_say_why_in_one_line(tmp_path, content, expected):
    (tmp_path / "t.csv").write_bytes(content)
    with pytest.raises(TableError) as err:
        read_table(tmp_path / "t.csv")
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_a_byte_order_mark_does_not_rename_the_first_column(tmp_path):
    (tmp_path / "t.csv").write_bytes(table().to_csv(index=False).encode("utf-8-sig"))
    assert read_table(tmp_path / "t.csv").columns[0] == "cid"


def test_a_single_space_separator_means_aligned_columns(tmp_path):
    (tmp_path / "t.txt").write_text(" id  date amount\n 00001 19970101  1.5\n 00002 19970102 2\n")
    frame = read_table(tmp_path / "t.txt", separator=" ", text_columns=("id",))
    assert list(frame.columns) == ["id", "date", "amount"] and frame["id"][0] == "00001"


def test_a_date_column_listed_as_numeric_is_refused(tmp_path):
    frame = table().assign(signup=pd.date_range("2020-01-01", periods=40, freq="D"))
    frame.to_parquet(tmp_path / "t.parquet", index=False)
    with pytest.raises(TableError) as err:
        prepare(config(tmp_path, "t.parquet", features={"numeric": ["spend", "signup"]}))
    assert err.value.column == "signup" and "dates" in err.value.problem


def test_a_one_row_table_is_refused_for_its_size_not_as_constant(tmp_path):
    table(1).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(TableError, match="n_samples=1 should be >= 5"):
        prepare(config(tmp_path, "t.csv"))


def test_k_search_stops_at_the_number_of_distinct_customers():
    # 60 customers but only 3 distinct ones: k=4 would split duplicates
    X = np.repeat(np.array([[1.0, 5.0], [50.0, 1.0], [500.0, 9.0]]), 20, axis=0)
    config = SegmentationConfig(k_min=2, k_max=6, stability_bootstraps=1)
    seg = fit_segmentation(X, config)
    assert [row["k"] for row in seg.selection.table] == [2, 3]
    assert seg.k == 3
    with pytest.raises(TableError, match="only 3 distinct"):
        fit_segmentation(X, SegmentationConfig(k=4, stability_bootstraps=1))


def test_duplicate_response_pairs_collapse_to_the_maximum(tmp_path):
    frame = table()
    frame.to_csv(tmp_path / "t.csv", index=False)
    rng = np.random.default_rng(2)
    responses = pd.DataFrame(
        {"cid": frame["cid"], "campaign_id": "c1", "responded": rng.integers(0, 2, 40)}
    )
    responses.loc[0, "responded"] = 0
    repeat = pd.DataFrame({"cid": ["c0", "c0"], "campaign_id": "c1", "responded": [1, 0]})
    pd.concat([responses, repeat]).to_csv(tmp_path / "r.csv", index=False)
    prepared = prepare(
        config(
            tmp_path,
            "t.csv",
            campaigns={"inline": [{"id": "c1", "name": "One", "value": 1.0}]},
            responses={"format": "long", "path": "r.csv", "customer_column": "cid"},
        )
    )
    rows = prepared.responses
    assert len(rows) == 40
    assert rows.loc[rows["customer_idx"] == 0, "responded"].tolist() == [1]
    assert "2 duplicate" in prepared.warnings[0] and "c0" in prepared.warnings[0]


def test_auc_of_a_one_outcome_campaign_is_null_with_a_reason():
    y = np.array([0, 0, 0, 1, 0, 1, 1, 0], dtype=float)
    p = np.linspace(0.1, 0.9, 8)
    campaign = np.array([0, 0, 0, 1, 1, 1, 1, 1])
    metrics = evaluate(y, p, campaign, ["all_zero", "mixed", "never_held_out"])
    assert metrics["auc_per_campaign"]["all_zero"] is None
    assert metrics["auc_undefined"]["all_zero"] == "every held-out response is 0"
    assert metrics["auc_undefined"]["never_held_out"] == "no held-out responses"
    assert metrics["auc_per_campaign"]["mixed"] is not None and metrics["auc"] is not None
    pooled = evaluate(np.zeros(4), np.full(4, 0.2), np.zeros(4, dtype=int), ["a"])
    assert pooled["auc"] is None and pooled["auc_undefined"]["*"].endswith("is 0")


def test_eligible_segments_naming_no_segment_are_reported():
    pool = [
        Campaign(id="a", name="A", value=1.0, eligible_segments=["Dormant", "Ghosts"]),
        Campaign(id="b", name="B", value=1.0, eligible_segments=["Ghosts"]),
        Campaign(id="c", name="C", value=1.0, eligible_segments=["1"]),
        Campaign(id="d", name="D", value=1.0),
    ]
    found = eligibility_warnings(pool, ["VIP Champions", "Dormant"])
    assert any(w.startswith("campaign 'a'") and "'Ghosts'" in w for w in found)
    assert any(w.startswith("campaign 'b'") and "never be recommended" in w for w in found)
    assert not any("campaign 'a'" in w and "never" in w for w in found)
    assert not any("'c'" in w or "'d'" in w for w in found)


def test_k_equal_to_the_rows_is_refused_by_the_cli_and_writes_nothing(tmp_path, capsys):
    table(12).to_csv(tmp_path / "t.csv", index=False)
    (tmp_path / "c.toml").write_text(
        '[data]\ncustomers = "t.csv"\nid_column = "cid"\n'
        '[features]\nnumeric = ["spend", "orders", "recency"]\n'
        "[response_model]\nenabled = false\n"
    )
    out = tmp_path / "out"
    (out / "v0").mkdir(parents=True)
    os.symlink("v0", out / "current")
    args = ["-q", "train", "--config", str(tmp_path / "c.toml"), "--output", str(out)]
    code = main([*args, "--k", "12"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == ["error: n_samples=12 should be >= 13 for k=12 + 1"]
    assert sorted(p.name for p in out.iterdir()) == ["current", "v0"]
    assert os.readlink(out / "current") == "v0"
