"""Segment profiles: sizes, feature statistics, response rates and default campaigns."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scoring.campaigns import Campaign
from training.naming import SegmentName
from training.profiles import build_profiles, default_campaigns, segment_response_rates
from training.validate import eligibility_warnings

CAMPAIGNS = [
    Campaign("cheap", "Cheap", 10.0),
    Campaign("dear", "Dear", 100.0),
    Campaign("vip_only", "VIP only", 500.0, eligible_segments=["VIP"]),
    Campaign("never", "Never offered", 50.0),
]


@pytest.fixture
def data():
    """Six customers in two segments, two numeric features and some responses."""
    numeric = np.array([[1.0, 10], [2, 20], [3, 30], [10, 0], [20, 0], [30, 5]])
    labels = np.array([0, 0, 0, 1, 1, 1])
    responses = pd.DataFrame(
        {
            "customer_idx": [0, 1, 2, 0, 3, 4, 5, 3, 4, 3],
            "campaign_idx": [0, 0, 0, 1, 0, 0, 0, 1, 1, 2],
            "responded": [1, 1, 0, 0, 0, 0, 1, 1, 0, 1],
        }
    )
    names = [SegmentName("Regulars", "frequent"), SegmentName("VIP", "high spend")]
    return numeric, labels, responses, names


def test_profile_shape_and_statistics(data):
    numeric, labels, responses, names = data
    before = responses.copy()
    profiles = build_profiles(
        numeric, ["spend", "orders"], labels, names, CAMPAIGNS, responses, np.array([1.5, 2.5])
    )
    assert [p["segment_id"] for p in profiles] == [0, 1]
    p0, p1 = profiles
    assert set(p0) == {
        "segment_id",
        "name",
        "description",
        "size",
        "share",
        "mean",
        "median",
        "response_rate",
        "default_campaigns",
        "outlier_threshold",
    }
    assert (p0["name"], p0["description"], p0["size"]) == ("Regulars", "frequent", 3)
    assert p0["share"] + p1["share"] == pytest.approx(1.0)
    assert p0["mean"] == {"spend": 2.0, "orders": 20.0}
    assert p1["median"] == {"spend": 20.0, "orders": 0.0}
    assert p1["outlier_threshold"] == 2.5
    pd.testing.assert_frame_equal(responses, before)


def test_response_rates_per_segment_and_campaign(data):
    _numeric, labels, responses, _ = data
    rates, offers = segment_response_rates(responses, labels, 2, len(CAMPAIGNS))
    assert rates[0, 0] == pytest.approx(2 / 3)
    assert rates[0, 1] == 0.0
    assert rates[1, 0] == pytest.approx(1 / 3)
    assert rates[1, 1] == pytest.approx(1 / 2)
    assert np.isnan(rates[0, 3]) and offers[0, 3] == 0


def test_campaigns_never_offered_are_left_out_of_rates(data):
    numeric, labels, responses, names = data
    profiles = build_profiles(
        numeric, ["spend", "orders"], labels, names, CAMPAIGNS, responses, np.zeros(2)
    )
    assert set(profiles[0]["response_rate"]) == {"cheap", "dear"}
    assert set(profiles[1]["response_rate"]) == {"cheap", "dear", "vip_only"}


def test_default_campaigns_rank_by_expected_value_and_respect_eligibility(data):
    _numeric, labels, responses, _names = data
    rates, _ = segment_response_rates(responses, labels, 2, len(CAMPAIGNS))
    # Regulars: cheap 2/3*10=6.7, dear 0, never 0 (ties by value); vip_only not eligible
    assert default_campaigns(0, "Regulars", rates[0], CAMPAIGNS) == ["cheap", "dear", "never"]
    # VIP: vip_only 1*500, dear 0.5*100, cheap 1/3*10
    assert default_campaigns(1, "VIP", rates[1], CAMPAIGNS) == ["vip_only", "dear", "cheap"]


def test_without_history_defaults_follow_value_and_rates_are_empty(data):
    numeric, labels, _, names = data
    profiles = build_profiles(
        numeric, ["spend", "orders"], labels, names, CAMPAIGNS, None, np.zeros(2)
    )
    assert profiles[0]["response_rate"] == {}
    assert profiles[0]["default_campaigns"] == ["dear", "never", "cheap"]
    assert profiles[1]["default_campaigns"] == ["vip_only", "dear", "never"]


def test_a_campaign_eligible_by_segment_id_becomes_that_segments_default(data):
    # regression: eligible_segments = ["0"] was offered by /recommend but never a default
    _numeric, labels, responses, _names = data
    rates, _ = segment_response_rates(responses, labels, 2, len(CAMPAIGNS))
    pool = [*CAMPAIGNS[:3], Campaign("by_id", "By id", 1000.0, eligible_segments=["0"])]
    assert "by_id" in default_campaigns(0, "Regulars", rates[0], pool)
    assert "by_id" not in default_campaigns(1, "VIP", rates[1], pool)
    # and training's pool check knows the id: no "names no segment" warning for it
    assert not [w for w in eligibility_warnings(pool, ["Regulars", "VIP"]) if "by_id" in w]
    assert eligibility_warnings([Campaign("x", "X", 1.0, eligible_segments=["2"])], ["A", "B"])
