"""Tests of the targeting rules: control-group hashing and expected gain."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from scoring.policy import (
    IN_GLOBAL_HOLDOUT,
    CustomerDraws,
    choose,
    expected_gain,
    held_out,
    holdout_draw,
    is_offer,
)


def test_holdout_draw_is_fixed_by_customer_campaign_and_salt():
    a = holdout_draw("c-1", "cashback", "pool-salt")
    assert a == holdout_draw("c-1", "cashback", "pool-salt")
    assert 0.0 <= a < 1.0
    assert a != holdout_draw("c-2", "cashback", "pool-salt")
    assert a != holdout_draw("c-1", "savings", "pool-salt")
    assert a != holdout_draw("c-1", "cashback", "other-salt")


def test_holdout_draw_is_the_same_in_another_process():
    # unlike hash(), the draw must not depend on the process (PYTHONHASHSEED) or the worker
    code = "from scoring.policy import holdout_draw; print(repr(holdout_draw('c-1', 'x', 's')))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123", "PATH": ""},
    )
    assert float(out.stdout) == holdout_draw("c-1", "x", "s")


def test_holdout_share_is_respected_and_customers_without_id_never_held_out():
    ids = [f"customer-{i}" for i in range(20_000)]
    share = np.mean([held_out(i, "cashback", 0.1, "salt") for i in ids])
    assert share == pytest.approx(0.1, abs=0.01)
    assert not held_out(None, "cashback", 0.99, "salt")
    assert not any(held_out(i, "cashback", 0.0, "salt") for i in ids[:100])
    # a field separator in ids cannot make two different pairs collide
    assert holdout_draw("a", "bc", "s") != holdout_draw("ab", "c", "s")


def test_expected_gain_uses_the_lift_when_there_is_a_control_probability():
    assert expected_gain(0.3, 0.1, 50.0, 2.0) == pytest.approx(0.2 * 50 - 2)
    assert expected_gain(0.3, None, 50.0, 2.0) == pytest.approx(0.3 * 50 - 2)
    # a do-not-disturb: the offer lowers the response, so it is never an offer
    assert not is_offer(expected_gain(0.1, 0.2, 50.0, 0.0))
    assert not is_offer(0.0)
    assert not is_offer(float("nan"))
    assert is_offer(0.01)
    # arrays work the same (the batch path)
    np.testing.assert_allclose(
        expected_gain(np.array([0.3, 0.1]), np.array([0.1, 0.2]), np.array([10.0, 10.0]), 1.0),
        [1.0, -2.0],
    )


def test_assignments_are_pinned_and_choose_draws_as_holdout_draw_does():
    # users rely on the same control groups after an upgrade: the draws are pinned to the
    # values the first release gave, and choose()'s per-customer hashing reproduces them
    assert holdout_draw("c-1", "cashback", "pool-salt") == 0.5247589495730958
    assert holdout_draw("c-42", "*", "") == 0.29357125397268685
    campaigns = ["cashback", "savings", "travel", "é-mail"]
    shares = [0.3, 0.0, 0.5, 0.2]
    for i in range(300):
        cid, salt = f"c-{i}", ("pool-salt", "", "s" * 80)[i % 3]
        draws = CustomerDraws(cid, salt)
        assert [draws.draw(c) for c in campaigns] == [holdout_draw(cid, c, salt) for c in campaigns]
        offers, held, reason = choose(cid, [0, 1, 2, 3], 4, campaigns, shares, salt, 0.1, None)
        if held_out(cid, "*", 0.1, salt):
            assert (offers, held, reason) == ([], [0, 1, 2, 3], IN_GLOBAL_HOLDOUT)
        else:
            expected = [j for j in range(4) if held_out(cid, campaigns[j], shares[j], salt)]
            assert held == expected
            assert offers == [j for j in range(4) if j not in expected]
