"""The RFM rule (scoring/rfm.py): quintile edges, tie handling, the R/F grid, one row = batch."""

from __future__ import annotations

import numpy as np
import pytest

from scoring.rfm import GRID, GROUPS, RFMRule, answer, quintile_edges


def rule(edges_r, edges_f, edges_m, segments=False) -> RFMRule:
    edges = tuple(tuple(float(e) for e in x) for x in (edges_r, edges_f, edges_m))
    return RFMRule(("rec", "freq", "mon"), (0, 1, 2), edges, segments)


def test_the_grid_gives_every_r_f_pair_exactly_one_named_group():
    assert GRID.shape == (5, 5)
    assert sorted(set(GRID.ravel().tolist())) == list(range(len(GROUPS)))
    assert len(GROUPS) == 11
    # the published corners and a few well-known cells
    assert GROUPS[GRID[4, 4]] == "Champions"  # R5 F5
    assert GROUPS[GRID[4, 0]] == "New"  # R5 F1
    assert GROUPS[GRID[3, 0]] == "Promising"  # R4 F1
    assert GROUPS[GRID[2, 2]] == "Need Attention"  # R3 F3
    assert GROUPS[GRID[0, 4]] == "Cannot Lose Them"  # R1 F5
    assert GROUPS[GRID[1, 3]] == "At Risk"  # R2 F4
    assert GROUPS[GRID[1, 1]] == "Hibernating"  # R2 F2
    assert GROUPS[GRID[0, 0]] == "Lost"  # R1 F1


def test_a_value_on_an_edge_takes_the_lower_quintile_and_recency_is_reversed():
    r = rule([10, 20, 30, 40], [1, 2, 3, 4], [100, 200, 300, 400])
    numeric = np.array(
        [
            [10.0, 1.0, 100.0],  # on the first edges: lowest quintile (R reversed -> 5)
            [10.5, 1.5, 100.5],  # just above: second quintile
            [41.0, 5.0, 401.0],  # above the last edges
            [0.0, 0.0, 0.0],
        ]
    )
    assert r.scores(numeric).tolist() == [[5, 1, 1], [4, 2, 2], [1, 5, 5], [5, 1, 1]]


def test_equal_values_share_a_score_and_collapsed_edges_leave_scores_empty():
    # 60% of customers bought on one day (CDNOW-like): the lower edges coincide
    freq = np.array([1] * 60 + [2] * 15 + [3] * 10 + [5] * 10 + [9] * 5, dtype=np.float64)
    edges = quintile_edges(freq)
    assert edges[:2] == [1.0, 1.0]
    r = rule([1, 2, 3, 4], edges, [1, 2, 3, 4])
    numeric = np.column_stack([np.zeros_like(freq), freq, np.zeros_like(freq)])
    f = r.scores(numeric)[:, 1]
    assert set(f[freq == 1].tolist()) == {1}  # every one-time buyer the same score
    assert set(f.tolist()) <= {1, 4, 5}  # 2 and 3 stay empty, as documented
    # the order of the rows does not matter (no rank-based tie breaking)
    perm = np.random.default_rng(0).permutation(len(freq))
    assert (r.scores(numeric[perm])[:, 1] == f[perm]).all()


def test_quintile_edges_refuse_missing_values():
    with pytest.raises(ValueError, match="no missing values"):
        quintile_edges(np.array([1.0, np.nan]))


def test_one_customer_gets_the_batch_scores_and_group():
    rng = np.random.default_rng(3)
    numeric = np.column_stack(
        [rng.integers(0, 400, 2000), rng.integers(1, 30, 2000), rng.gamma(2, 80, 2000)]
    ).astype(np.float64)
    r = RFMRule(
        ("rec", "freq", "mon"),
        (0, 1, 2),
        tuple(tuple(quintile_edges(numeric[:, c])) for c in range(3)),
        True,
    )
    scores = r.scores(numeric)
    groups = r.groups(scores)
    for i in range(0, 2000, 7):
        one = r.score_one(numeric[i].tolist())
        assert list(one) == scores[i].tolist()
        assert r.group_one(one) == groups[i]
    # quintiles of the training population: each score holds about a fifth of it
    for c in range(3):
        counts = np.bincount(scores[:, c], minlength=6)[1:]
        assert counts.min() >= 0.15 * 2000


def test_the_rule_round_trips_through_the_manifest_and_names_its_group():
    r = rule([10, 20, 30, 40], [1, 2, 3, 4], [100, 200, 300, 400], segments=True)
    entry = r.to_dict()
    back = RFMRule.from_dict(entry, ["x", "rec", "freq", "mon"])
    assert back.positions == (1, 2, 3)
    assert back.edges == r.edges and back.segments
    assert answer((5, 5, 2)) == {"recency": 5, "frequency": 5, "monetary": 2, "group": "Champions"}
    assert answer([1, 1, 5])["group"] == "Lost"
