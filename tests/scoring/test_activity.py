"""Event checks and the per-customer fold that the stream job and training share."""

from __future__ import annotations

import json
import random

import pytest

from scoring.activity import (
    DAY,
    FEATURES,
    Activity,
    EventError,
    fold_events,
    missing_definitions,
    parse_event,
)

T0 = 1_780_000_000.0  # 2026-05-28 20:26:40 UTC
NOW = T0 + 30 * DAY


def line(**fields) -> str:
    """An event line: a valid purchase with ``fields`` changed (None removes a field)."""
    event = {"customer_id": "c1", "event_time": T0, "amount": 10.0}
    event.update(fields)
    return json.dumps({k: v for k, v in event.items() if v is not None})


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{not json", "bad_json"),
        ("[1, 2]", "not_an_object"),
        (line(colour="red"), "unknown_field"),
        (line(amount=None), "missing_field"),
        (line(amount=-3), "negative_amount"),
        (line(amount="12"), "bad_field"),
        (line(amount=True), "bad_field"),
        (line(event_time=NOW + 3 * DAY), "future"),
        (line(event_time="2026-05-28T10:00:00"), "bad_field"),
        (line(event_time=100.0), "bad_field"),
        (line(customer_id=""), "bad_field"),
        (line(discount="yes"), "bad_field"),
    ],
)
def test_a_malformed_event_is_refused_with_its_reason(text, reason):
    with pytest.raises(EventError) as info:
        parse_event(text, now=NOW)
    assert info.value.reason == reason


def test_a_valid_event_reads_every_field():
    event = parse_event(
        line(
            customer_id=42,
            event_time="2026-05-28T20:26:40Z",
            product="p1",
            discount=True,
            returned=False,
            channel="mobile",
        ),
        now=NOW,
    )
    assert event.customer_id == "42"
    assert event.event_time == T0
    assert (event.product, event.discount, event.channel) == ("p1", True, "mobile")


def _fold(events) -> Activity:
    activity = Activity()
    for e in events:
        activity.add(parse_event(json.dumps(e)))
    return activity


def test_features_follow_the_definitions():
    events = [
        {
            "customer_id": "c",
            "event_time": T0,
            "amount": 100.0,
            "product": "a",
            "channel": "mobile",
        },
        {
            "customer_id": "c",
            "event_time": T0 + 60,
            "amount": 50.0,
            "product": "b",
            "discount": True,
        },
        {"customer_id": "c", "event_time": T0 + 3 * DAY, "amount": 30.0, "product": "a"},
        {"customer_id": "c", "event_time": T0 + 4 * DAY, "amount": 20.0, "returned": True},
    ]
    f = _fold(events).features(FEATURES)
    assert f["total_spend"] == f["monetary_total"] == 160.0  # 180 bought - 20 returned
    assert f["order_count"] == f["transaction_count"] == 3
    assert f["frequency"] == 2  # two purchase days
    assert f["days_since_last_purchase"] == f["recency_days"] == 2  # as of the day after day+4
    assert f["tenure_days"] == 5
    assert f["avg_days_between"] == 3
    assert f["monetary_avg"] == 80.0
    assert f["unique_products"] == 2
    assert f["discount_usage"] == pytest.approx(1 / 3)
    assert f["mobile_usage"] == pytest.approx(1 / 3)
    assert f["return_count"] == 1
    assert f["return_rate"] == pytest.approx(1 / 3)
    assert f["return_share"] == pytest.approx(20 / 180)


def test_features_do_not_depend_on_arrival_order():
    rng = random.Random(3)
    events = [
        {
            "customer_id": "c",
            "event_time": T0 + rng.uniform(0, 2 * DAY),
            "amount": round(rng.uniform(1, 100), 2),
            "product": f"p{rng.randint(0, 5)}",
            "returned": rng.random() < 0.2,
        }
        for _ in range(40)
    ]
    events[0]["returned"] = False
    in_order = _fold(sorted(events, key=lambda e: e["event_time"]))
    shuffled = _fold(events)
    a, b = in_order.features(FEATURES), shuffled.features(FEATURES)
    assert a == pytest.approx(b)
    assert in_order.folded == shuffled.folded == 40


def test_an_event_beyond_the_allowed_lateness_is_refused_and_changes_nothing():
    activity = Activity(allowed_lateness=3600)
    activity.add(parse_event(line(event_time=T0 + 2 * 3600)))
    activity.add(parse_event(line(event_time=T0 + 5400)))  # 30 min late: folded
    before = activity.features(FEATURES)
    with pytest.raises(EventError) as info:
        activity.add(parse_event(line(event_time=T0)))
    assert info.value.reason == "late"
    assert activity.features(FEATURES) == before
    assert activity.folded == 2


def test_only_returns_so_far_means_no_features():
    activity = _fold([{"customer_id": "c", "event_time": T0, "amount": 5.0, "returned": True}])
    assert not activity.has_purchase
    with pytest.raises(ValueError, match="no purchase"):
        activity.features(["total_spend"])


def test_a_rolling_window_forgets_old_days():
    activity = Activity(window_days=7)
    activity.add(parse_event(line(event_time=T0, amount=500.0, product="old")))
    activity.add(parse_event(line(event_time=T0 + 10 * DAY, amount=5.0, product="new")))
    f = activity.features(["total_spend", "order_count", "unique_products"])
    assert f == {"total_spend": 5.0, "order_count": 1.0, "unique_products": 1.0}


def test_fold_events_counts_refusals_by_reason():
    lines = [line(), line(amount=-1), "oops", line(customer_id="c2"), ""]
    result = fold_events(lines, now=NOW)
    assert set(result.activities) == {"c1", "c2"}
    assert result.refused == {"negative_amount": 1, "bad_json": 1}


def test_unknown_feature_names_are_reported():
    assert missing_definitions(["total_spend", "Income"]) == ["Income"]
    with pytest.raises(KeyError, match="Income"):
        _fold([json.loads(line())]).features(["Income"])
