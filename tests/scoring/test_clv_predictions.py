"""CLV predictions from fitted parameters (scoring.clv): published values and limiting cases."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from scoring.clv import (
    BGNBDParams,
    CLVModel,
    GammaGammaParams,
    bgnbd_inputs,
    customer_value,
    expected_purchases,
    expected_spend,
    model_from_manifest,
    probability_alive,
)

#: Fader, Hardie & Lee (2005), CDNOW
CDNOW = BGNBDParams(r=0.243, alpha=4.414, a=0.793, b=2.426)


def test_the_papers_worked_example():
    # a customer with 2 repeat purchases, the last at week 30.43, observed for 38.86 weeks,
    # is expected to buy 1.226 times in the next 39 weeks (FHL 2005, section 5)
    one = np.array([1.0])
    got = expected_purchases(CDNOW, 39.0, 2 * one, 30.43 * one, 38.86 * one)
    assert got[0] == pytest.approx(1.226, abs=5e-4)


def test_no_repeat_purchase_means_alive_and_later_silence_lowers_it():
    x = np.array([0.0, 3.0, 3.0])
    t_x = np.array([0.0, 30.0, 5.0])
    T = np.array([38.0, 38.0, 38.0])
    alive = probability_alive(CDNOW, x, t_x, T)
    assert alive[0] == 1.0
    assert alive[1] > alive[2]  # same purchases, but the third customer went quiet long ago


def test_without_drop_out_bgnbd_is_the_nbd_forecast():
    no_dropout = BGNBDParams(r=0.5, alpha=4.0, a=1e-9, b=1e6)
    x, t_x, T = np.array([2.0, 0.0]), np.array([10.0, 0.0]), np.array([30.0, 30.0])
    got = expected_purchases(no_dropout, 20.0, x, t_x, T)
    np.testing.assert_allclose(got, (0.5 + x) * 20.0 / (4.0 + T), rtol=1e-4)


def test_expected_purchases_grow_with_the_horizon():
    x, t_x, T = np.array([1.0, 4.0]), np.array([10.0, 30.0]), np.array([38.0, 38.0])
    values = [expected_purchases(CDNOW, t, x, t_x, T) for t in (0.0, 4.0, 13.0, 52.0)]
    assert np.all(values[0] == 0.0)
    assert all(np.all(b > a) for a, b in itertools.pairwise(values))


def test_gamma_gamma_shrinks_observed_spend_to_the_population_mean():
    gg = GammaGammaParams(p=6.25, q=3.74, gamma=15.44)
    population = gg.p * gg.gamma / (gg.q - 1)
    few, many = expected_spend(gg, np.array([1.0, 50.0]), np.array([100.0, 100.0]))
    assert population < few < many < 100.0
    assert expected_spend(gg, np.array([0.0]), np.array([0.0]))[0] == pytest.approx(population)


def test_customer_value_discounts_and_round_trips_through_the_manifest():
    model = CLVModel(CDNOW, GammaGammaParams(6.25, 3.74, 15.44), 7.0, 12, 0.0)
    freq, rec, ten, avg = (np.array([v]) for v in (4.0, 10.0, 200.0, 30.0))
    plain = customer_value(model, freq, rec, ten, avg)
    x, t_x, T = bgnbd_inputs(freq, rec, ten, 7.0)
    horizon = expected_purchases(CDNOW, 12 * 30 / 7.0, x, t_x, T)
    assert plain["clv"][0] == pytest.approx(horizon[0] * plain["expected_spend"][0])
    discounted = customer_value(
        CLVModel(CDNOW, model.gamma_gamma, 7.0, 12, 0.02), freq, rec, ten, avg
    )
    assert discounted["clv"][0] < plain["clv"][0]
    assert model_from_manifest({"clv": {"model": model.to_dict()}}) == model
    assert model_from_manifest({"clv": None}) is None


def test_the_series_fallback_agrees_with_scipy_where_scipy_answers():
    from scipy.special import hyp2f1

    from scoring.clv import _series_tail

    A = np.array([0.5, 3.0, 850.0, 1.2])
    B = np.array([-0.2, -0.99, -0.99999, 2.0])
    C = np.array([3.0, 5.0, 1300.0, 4.0])
    w = np.array([-0.5, -0.1, -4e-4, 0.3])
    np.testing.assert_allclose(_series_tail(A, B, C, w), hyp2f1(A, B, C, w) - 1.0, rtol=1e-9)
    assert np.isnan(
        _series_tail(np.array([1.0]), np.array([1.0]), np.array([2.0]), np.array([-1.5]))
    )


def test_a_boundary_fit_where_scipy_hyp2f1_fails_still_values_everyone():
    """alpha on its upper bound and r ~ 14,000 (no drop-out, no heterogeneity in the rates):
    scipy's hyp2f1 gives NaN there; the forecast is the no-drop-out Poisson one."""
    params = BGNBDParams(r=14147.2, alpha=1e5, a=1.5e-5, b=1289.6)
    x = np.array([0.0, 2.0, 10.0, 30.0])
    T = np.array([30.0, 50.0, 5.0, 52.0])
    t_x = np.minimum(T, np.array([0.0, 20.0, 4.0, 50.0]))
    got = expected_purchases(params, 4.3, x, t_x, T)
    assert np.isfinite(got).all()
    poisson = (params.r + x) * 4.3 / (params.alpha + T)
    np.testing.assert_allclose(got, poisson * probability_alive(params, x, t_x, T), rtol=1e-3)
    model = CLVModel(params, GammaGammaParams(2.0, 400.0, 8000.0))
    values = customer_value(model, x + 1, 7 * (T - t_x), 7 * T + 1, np.full(4, 40.0))
    assert np.isfinite(values["clv"]).all() and (values["clv"] > 0).all()
