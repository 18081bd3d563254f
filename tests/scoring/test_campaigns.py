"""The campaign rules have one owner: eligibility by name or id, channels, ranking."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from scoring.campaigns import Campaign, eligibility_table, rank, rank_one
from scoring.engine import ScoringEngine

SEGMENTS = ["Champions", "Regulars", "Dormant"]


def test_an_eligible_segment_may_be_named_by_name_or_by_id():
    by_name = Campaign("a", "A", 1.0, eligible_segments=["Dormant"])
    by_id = Campaign("b", "B", 1.0, eligible_segments=["2"])
    for campaign in (by_name, by_id):
        assert [campaign.is_eligible(s, n) for s, n in enumerate(SEGMENTS)] == [
            False,
            False,
            True,
        ]
    assert Campaign("c", "C", 1.0).is_eligible(0, "Champions")
    assert not Campaign("d", "D", 1.0, eligible_segments=[]).is_eligible(0, "Champions")


def test_unknown_segments_are_those_matching_neither_a_name_nor_an_id():
    campaign = Campaign("a", "A", 1.0, eligible_segments=["0", "Dormant", "Ghosts", "3"])
    assert campaign.unknown_segments(SEGMENTS) == ["Ghosts", "3"]
    assert Campaign("b", "B", 1.0).unknown_segments(SEGMENTS) == []


def test_eligibility_table_matches_is_eligible_pair_by_pair():
    pool = [
        Campaign("open", "Open", 1.0),
        Campaign("id0", "Id 0", 1.0, eligible_segments=["0"]),
        Campaign("named", "Named", 1.0, eligible_segments=["Regulars", "Dormant"]),
    ]
    mask, rules = eligibility_table(pool, SEGMENTS)
    for s, name in enumerate(SEGMENTS):
        for j, campaign in enumerate(pool):
            assert mask[s, j] == campaign.is_eligible(s, name)
            assert (rules[s][j] != "") == mask[s, j]
    assert rules[0][1] == "segment 'Champions' is eligible"


def test_a_campaign_reaches_its_own_channel_and_any_reaches_all():
    assert Campaign("a", "A", 1.0, channel="push").reaches("push")
    assert not Campaign("a", "A", 1.0, channel="push").reaches("email")
    assert Campaign("a", "A", 1.0, channel="any").reaches("email")
    assert Campaign("a", "A", 1.0, channel="push").reaches(None)


def test_rank_and_rank_one_order_alike_with_ties_in_pool_order():
    rng = np.random.default_rng(3)
    for _ in range(200):
        m = int(rng.integers(1, 8))
        ev = rng.integers(0, 4, size=(1, m)).astype(np.float64)  # many ties
        mask = rng.random((1, m)) < 0.7
        order, counts = rank(np.where(mask, ev, np.nan), mask)
        chosen = [j for j in range(m) if mask[0, j]]
        assert order[0, : counts[0]].tolist() == [
            chosen[r] for r in rank_one([ev[0, j] for j in chosen])
        ]


def test_serving_offers_a_campaign_eligible_by_segment_id(tiny_bundle, demo_customers):
    # regression: eligible_segments = ["0"] named segment 0 for /recommend only
    campaigns = [dataclasses.replace(c, eligible_segments=None) for c in tiny_bundle.campaigns]
    campaigns[0] = dataclasses.replace(campaigns[0], eligible_segments=["0"])
    engine = ScoringEngine(dataclasses.replace(tiny_bundle, campaigns=campaigns))
    frame, _ = demo_customers
    results = engine.recommend(engine.batch_from_frame(frame))
    offered = {
        r["segment_id"]
        for r in results
        for c in r["campaigns"]
        if c["campaign_id"] == campaigns[0].id
    }
    assert offered == {0}


def test_tables_are_frozen_and_read_only(tiny_bundle):
    engine = ScoringEngine(tiny_bundle)
    with pytest.raises(dataclasses.FrozenInstanceError):
        engine.tables.w = None
    with pytest.raises(ValueError):
        engine.tables.centers[0, 0] = 1.0
