"""bench/transactions.py runs end to end in its --smoke mode (no timing is asserted)."""

from __future__ import annotations

import json

from bench import transactions


def test_transactions_smoke(tmp_path):
    assert transactions.main(["--smoke", "--results", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "transactions.json").read_text())
    figures = result["figures"]
    assert figures["rows"] == 20_000 and figures["customers"] > 1000
    for key in ("read_s", "clean_s", "features_s", "fit_s", "valuation_s", "max_rss_mb"):
        assert figures[key] > 0, key
    assert [t["measured"] for t in result["targets"]] == [None, None]  # only --full measures them
