"""bench/transactions.py and bench/database_read.py run end to end in their --smoke modes (no
timing is asserted)."""

from __future__ import annotations

import json

import pytest

from bench import transactions


def test_transactions_smoke(tmp_path):
    assert transactions.main(["--smoke", "--results", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "transactions.json").read_text())
    figures = result["figures"]
    assert figures["rows"] == 20_000 and figures["customers"] > 1000
    for key in ("read_s", "clean_s", "features_s", "fit_s", "valuation_s", "max_rss_mb"):
        assert figures[key] > 0, key
    # only --full measures the targets; the others say "not measured", never "met"
    assert [(t["measured"], t["met"]) for t in result["targets"]] == [(None, None)] * 3
    table = transactions.markdown(result)
    assert "| 20,000 |" in table and "BG/NBD s" in table


def test_the_report_carries_the_transactions_section_and_targets(tmp_path):
    from bench import report

    assert transactions.main(["--smoke", "--results", str(tmp_path)]) == 0
    text = report.figures(tmp_path)
    assert "## Transactions to features and the CLV fit (issue 10)" in text
    assert "| #10 | BG/NBD + Gamma-Gamma fit, ~1M customers (s) | <= 30 |" in text


def test_database_read_smoke(tmp_path):
    """bench/database_read.py against the test PostgreSQL (its own schema, dropped after)."""
    pytest.importorskip("psycopg")
    from bench import database_read

    assert database_read.main(["--smoke", "--results", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "database_read.json").read_text())
    assert [f["fetch_rows"] for f in result["figures"]] == list(database_read.FETCH_ROWS)
    assert all(f["rows_per_s"] > 0 for f in result["figures"])
