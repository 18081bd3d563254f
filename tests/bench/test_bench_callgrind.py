"""bench/callgrind.py: reading callgrind's dumps and the ratios it reports (valgrind itself is
only needed to run the benchmark)."""

from __future__ import annotations

import pytest

from bench.callgrind import parse_total, ratios, table


def test_total_comes_from_the_last_summary_or_totals_line():
    dump = b"version: 1\ncreator: callgrind-3.19.0\nevents: Ir\nfn=main\n1 5\nsummary: 1234567\n"
    assert parse_total(dump) == 1234567
    assert parse_total(b"events: Ir\ntotals: 42\n") == 42
    with pytest.raises(ValueError, match="summary"):
        parse_total(b"events: Ir\n")


def test_ratios_are_bare_over_ours_and_goals_apply_to_the_production_model():
    rows = [
        {"server": "bare", "scenario": "bare floor", "per_request": 1_000_000.0},
        {"server": "production", "scenario": "floor", "per_request": 1_250_000.0},
        {"server": "demo", "scenario": "floor", "per_request": 1_000_000.0},
    ]
    ratios(rows)
    assert rows[1]["x_bare"] == pytest.approx(0.8)
    assert (rows[1]["goal"], rows[1]["met"]) == (0.95, False)
    assert rows[2]["goal"] is None and rows[2]["met"] is None
    assert "| production | floor | 1,250,000 | 0.800 | >= 0.95 | **no** |" in table(rows)
