"""Campaign rules and the targeting policy in the engine: conditions, dates, cost, control groups.

Each rule is asked of both scoring paths (the batch engine and the one-customer path), which must
give the same answer to the bit.
"""

from __future__ import annotations

import copy
import datetime as dt
import math

import numpy as np
import pytest

from scoring.campaigns import Campaign
from scoring.engine import ScoringEngine
from scoring.policy import (
    ALL_HELD_OUT,
    IN_GLOBAL_HOLDOUT,
    NO_ELIGIBLE,
    NO_ID_NOTE,
    NO_POSITIVE_GAIN,
)

NOW = dt.datetime(2026, 12, 2, 12, tzinfo=dt.UTC).timestamp()


def _engine(tiny_bundle, campaigns=None, pool=None, **changes) -> ScoringEngine:
    bundle = copy.copy(tiny_bundle)
    bundle.manifest = dict(tiny_bundle.manifest)
    base = [Campaign(**c.to_dict()) for c in tiny_bundle.campaigns]
    if changes:
        base = [Campaign(**{**c.to_dict(), **changes.get(c.id, {})}) for c in base]
    bundle.campaigns = campaigns if campaigns is not None else base
    if pool is not None:
        bundle.manifest["pool"] = pool
    return ScoringEngine(bundle, clock=lambda: NOW)


def _records(demo_customers, n=200, with_ids=True):
    frame, _ = demo_customers
    records = []
    for i, row in enumerate(frame.head(n).to_dict(orient="records")):
        rec = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        rec["customer_id"] = f"c-{i}" if with_ids else None
        records.append(rec)
    return records


def _both(engine, records, **options):
    """Batch answers, asserting the one-customer path gives the same."""
    batch = engine.recommend(
        engine.batch_from_records(records),
        customer_ids=[r["customer_id"] for r in records],
        **options,
    )
    for record, expected in zip(records, batch, strict=True):
        assert engine.recommend_one(record, **options) == expected
    return batch


def test_a_condition_admits_only_customers_who_meet_it(tiny_bundle, demo_customers):
    engine = _engine(tiny_bundle, cashback={"conditions": ["total_spend >= 1000"]})
    records = _records(demo_customers)
    answers = _both(engine, records)
    for record, answer in zip(records, answers, strict=True):
        ids = [c["campaign_id"] for c in answer["campaigns"]]
        assert ("cashback" in ids) == (record["total_spend"] >= 1000)
        for item in answer["campaigns"]:
            if item["campaign_id"] == "cashback":
                assert "condition total_spend >= 1000" in item["rules"]
    assert any("cashback" in [c["campaign_id"] for c in a["campaigns"]] for a in answers)


def test_campaigns_outside_their_dates_are_never_offered(tiny_bundle, demo_customers):
    engine = _engine(
        tiny_bundle,
        cashback={"end": "2026-12-01"},
        savings_plan={"start": "2026-12-03"},
        win_back={"start": "2026-12-02", "end": "2026-12-02"},
    )
    answers = _both(engine, _records(demo_customers))
    offered = {c["campaign_id"] for a in answers for c in a["campaigns"]}
    assert "cashback" not in offered and "savings_plan" not in offered
    assert "win_back" in offered
    item = next(c for a in answers for c in a["campaigns"] if c["campaign_id"] == "win_back")
    assert "running 2026-12-02 to 2026-12-02" in item["rules"]


def test_the_day_follows_the_clock_across_midnight_and_back(tiny_bundle, demo_customers):
    """The engine keeps today's date between requests; the clock still decides it, to the
    microsecond at midnight, forwards and backwards, and so do the campaigns' dates."""
    engine = _engine(tiny_bundle, win_back={"start": "2026-12-03", "end": "2026-12-03"})
    midnight = dt.datetime(2026, 12, 3, tzinfo=dt.UTC).timestamp()
    records = _records(demo_customers, n=40)
    steps = [NOW, midnight - 1e-6, midnight - 0.0004, midnight, midnight + 86_399.9996]
    steps += [midnight + 86_400, midnight - 1e-6, midnight + 0.5, NOW]
    for now in steps:
        engine.clock = lambda now=now: now
        expected = dt.datetime.fromtimestamp(now, dt.UTC).date()
        assert engine.today() == expected, now
        offered = {c["campaign_id"] for a in _both(engine, records) for c in a["campaigns"]}
        assert ("win_back" in offered) == (expected == dt.date(2026, 12, 3)), now


def test_cost_is_subtracted_and_a_campaign_with_no_positive_gain_is_not_an_answer(
    tiny_bundle, demo_customers
):
    records = _records(demo_customers, 50)
    costly = {c.id: {"cost": 1e6} for c in tiny_bundle.campaigns}
    answers = _both(_engine(tiny_bundle, **costly), records)
    for answer in answers:
        assert answer["campaigns"] == []
        assert answer["reason"] in (NO_POSITIVE_GAIN, NO_ELIGIBLE)
        assert answer["ranking"] == "response"
    assert any(a["reason"] == NO_POSITIVE_GAIN for a in answers)
    cheap = _both(_engine(tiny_bundle, cashback={"cost": 0.5}), records)
    for answer in cheap:
        for item in answer["campaigns"]:
            expected = item["probability"] * item["value"] - item["cost"]
            assert item["expected_gain"] == pytest.approx(expected)
            assert item["expected_gain"] > 0
        gains = [c["expected_gain"] for c in answer["campaigns"]]
        assert gains == sorted(gains, reverse=True)


def test_control_groups_are_deterministic_and_need_a_customer_id(tiny_bundle, demo_customers):
    pool = {"salt": "pool-salt-1", "holdout_share": 0.0}
    engine = _engine(tiny_bundle, pool=pool, cashback={"holdout_share": 0.5})
    records = _records(demo_customers)
    answers = _both(engine, records)
    held = [a for a in answers if "cashback" in a["held_out"]]
    assert 0.3 * len(answers) < len(held) < 0.7 * len(answers)
    for a in held:
        assert "cashback" not in [c["campaign_id"] for c in a["campaigns"]]
    # the same assignment from a freshly built engine (a reload, another worker)
    again = _both(_engine(tiny_bundle, pool=pool, cashback={"holdout_share": 0.5}), records)
    assert [a["held_out"] for a in again] == [a["held_out"] for a in answers]
    # another salt, another draw
    other = _engine(tiny_bundle, pool={"salt": "pool-salt-2"}, cashback={"holdout_share": 0.5})
    assert [a["held_out"] for a in _both(other, records)] != [a["held_out"] for a in answers]
    # no customer id: never held out, and the answer says so
    anonymous = _both(engine, _records(demo_customers, with_ids=False))
    for a in anonymous:
        assert a["held_out"] == [] and a["holdout_note"] == NO_ID_NOTE


def test_control_groups_survive_a_new_bundle_version_written_and_reloaded(
    tiny_bundle, demo_customers, tmp_path
):
    """The salt lives in the pool, not the bundle: a retrained bundle (another version, written
    and verified from disk) holds out exactly the same customers."""
    from scoring.bundle import load_current, write_bundle

    pool = {"salt": "pool-salt-1", "holdout_share": 0.1}
    engine = _engine(tiny_bundle, pool=pool, cashback={"holdout_share": 0.5})
    records = _records(demo_customers)
    before = [a["held_out"] for a in _both(engine, records)]
    assert any(before)
    versions = []
    for version in ("v-monday", "v-tuesday"):
        bundle = copy.copy(engine.bundle)
        bundle.manifest = {k: v for k, v in bundle.manifest.items() if k in ("config", "metrics")}
        bundle.manifest["pool"] = pool
        write_bundle(bundle, tmp_path, version=version)
        versions.append(load_current(tmp_path))
    for reloaded in versions:
        again = ScoringEngine(reloaded, clock=lambda: NOW)
        assert again.version != engine.version
        assert [a["held_out"] for a in _both(again, records)] == before
        # the rules of an offer to a customer with an id say it passed the control-group draw
        offered = [c for a in _both(again, records[:20]) for c in a["campaigns"]]
        assert any("outside the global control group (10% held out)" in c["rules"] for c in offered)


def test_the_global_control_group_gets_nothing(tiny_bundle, demo_customers):
    engine = _engine(tiny_bundle, pool={"salt": "s", "holdout_share": 0.3})
    answers = _both(engine, _records(demo_customers))
    globally = [a for a in answers if a.get("reason") == IN_GLOBAL_HOLDOUT]
    assert 0.15 * len(answers) < len(globally) < 0.45 * len(answers)
    for a in globally:
        assert a["campaigns"] == [] and a["held_out"]


def test_held_out_of_every_campaign_with_a_gain_says_so(tiny_bundle, demo_customers):
    shares = {c.id: {"holdout_share": 0.999} for c in tiny_bundle.campaigns}
    answers = _both(
        _engine(tiny_bundle, pool={"salt": "s"}, **shares), _records(demo_customers, 20)
    )
    assert all(a["campaigns"] == [] for a in answers)
    assert any(a.get("reason") == ALL_HELD_OUT for a in answers)


def test_the_batch_command_ranks_by_the_same_gain(tiny_bundle, demo_customers):
    engine = _engine(tiny_bundle, cashback={"cost": 2.0})
    frame, _ = demo_customers
    r = engine.rank(engine.batch_from_frame(frame.head(100)))
    values = np.array([c.value for c in engine.campaigns])
    costs = np.array([c.cost for c in engine.campaigns])
    np.testing.assert_allclose(r.gain, r.probability * values - costs)
    for i in range(100):
        top = r.order[i, : r.counts[i]]
        assert (r.gain[i, top] > 0).all()


@pytest.mark.parametrize("holdout", [0.0, 0.5])
@pytest.mark.parametrize("top_k", [None, 1])
def test_choice_names_the_customers_held_out_or_given_a_reason(
    tiny_bundle, demo_customers, holdout, top_k
):
    # Choice.special: exactly the customers with a held-out campaign or a reason, ascending,
    # with and without control groups (the answers' writers take their own tails from it)
    pool = {"salt": "pool-salt-1", "holdout_share": 0.0}
    costly = {"holdout_share": holdout, "cost": 5.0}
    engine = _engine(tiny_bundle, pool=pool, cashback=costly)
    records = _records(demo_customers, n=300)
    # only cashback, at a cost: some customers get it, some are held out of it, some have none
    others = [c for c in engine.campaign_ids if c != "cashback"]
    ranking = engine.rank(engine.batch_from_records(records), exclude=others)
    choice = engine.choose(ranking, [r["customer_id"] for r in records], top_k)
    expected = [i for i in range(len(records)) if choice.reasons[i] or choice.held[i]]
    assert choice.special.tolist() == expected
    assert 0 < len(expected) < len(records)
