"""Fitting the lifetime-value models: BG/NBD and Gamma-Gamma by maximum likelihood (scipy).

Written here rather than taken from a library: ``lifetimes`` is unmaintained (last release 2020)
and raises ConvergenceError on real retail tables; its fork ``btyd`` has had no release since a
2022 beta; ``pymc-marketing`` is maintained but brings PyMC and PyTensor (a compiler toolchain
and hundreds of MB) for what is a four-parameter likelihood. The likelihoods are the published
closed forms (Fader, Hardie & Lee 2005; Fader & Hardie 2013), maximised over log-parameters
with L-BFGS-B inside wide bounds using their analytic gradients
(:mod:`training.clv_likelihood`, which also compresses the data: a million customers have far
fewer distinct histories).

A fit never raises on data it can read: an optimum on a bound (e.g. ``a`` at its lower bound:
the data show no drop-out) or an optimiser that stops early is reported in
:attr:`ModelFit.notes` (the summary and manifest carry them) and the best parameters found are
used. Predictions from the parameters live in :mod:`scoring.clv`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import minimize

from scoring.clv import (
    BGNBDParams,
    CLVModel,
    GammaGammaParams,
    bgnbd_inputs,
    customer_value,
    expected_purchases,
)
from training.clv_likelihood import (
    BGNBDData,
    GammaGammaData,
    bgnbd_log_likelihood,
    gamma_gamma_log_likelihood,
)

log = logging.getLogger(__name__)

#: parameters are searched in [LOWER, UPPER] (log scale inside the optimiser)
LOWER, UPPER = 1e-5, 1e5
#: a fitted log-parameter this close to a bound counts as on it
BOUND_TOLERANCE = 1e-3
#: a mean drop-out probability per purchase below this is "no drop-out"
NO_DROPOUT = 1e-6
#: Gamma-Gamma q above this: the customers' mean spends vary by under 3% (1/sqrt(q)), the
#: optimum lies at infinity along a ridge (q, gamma -> inf with gamma/q fixed)
HOMOGENEOUS_SPEND_Q = 1e3
#: what an optimum on each bound means, for the notes
BOUND_MEANING = {
    ("r", "upper"): "purchase rates barely vary between customers",
    ("alpha", "upper"): "purchase rates are tiny, or with a large r barely vary between customers",
    ("a", "lower"): "the data show almost no drop-out",
    ("b", "upper"): "the data show almost no drop-out",
    ("q", "lower"): "spend per purchase is so dispersed its mean is barely finite",
    ("q", "upper"): "the customers' mean spend per purchase barely varies",
    ("gamma", "upper"): "the customers' mean spend per purchase barely varies",
}


@dataclass
class ModelFit:
    """A maximum-likelihood fit: parameters, mean log-likelihood and what to know about it."""

    params: dict[str, float]
    #: total log-likelihood over the customers
    log_likelihood: float
    n_customers: int
    converged: bool
    #: boundary optima and optimiser messages (empty for a clean interior optimum)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form for the manifest."""
        return {
            "params": dict(self.params),
            "log_likelihood": self.log_likelihood,
            "n_customers": self.n_customers,
            "converged": self.converged,
            "notes": list(self.notes),
        }


def _maximise(
    loglik, names: tuple[str, ...], start: np.ndarray, lower: dict[str, float] | None = None
) -> tuple[np.ndarray, float, bool, list[str]]:
    """Maximise ``loglik(params) -> (value, gradient)`` over log-parameters within the bounds.

    L-BFGS-B with the analytic gradient (chain rule: d/d log(p) = p d/dp); never raises.
    """
    lower = lower or {}
    bounds = [(np.log(lower.get(n, LOWER)), np.log(UPPER)) for n in names]
    scale = [1.0]

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        params = np.exp(theta)
        value, grad = loglik(params)
        if not (np.isfinite(value) and np.all(np.isfinite(grad))):
            # outside where the closed forms can be evaluated: a wall the line search backs off
            return 1e300, np.zeros_like(theta)
        return -value / scale[0], -grad * params / scale[0]

    def value_only(theta: np.ndarray) -> float:
        return objective(theta)[0]

    theta0 = np.log(start)
    first = loglik(start)[0]
    # the likelihood of a million customers is ~1e7: scaled, L-BFGS-B's tolerances mean the same
    # on any table size
    scale[0] = max(abs(first), 1.0) if np.isfinite(first) else 1.0
    notes: list[str] = []
    try:
        result = minimize(
            objective,
            theta0,
            jac=True,
            method="L-BFGS-B",
            bounds=bounds,
            options={"maxiter": 2000, "ftol": 1e-15, "gtol": 1e-10},
        )
        best, converged = result, bool(result.success)
        on_bound = any(
            min(abs(v - lo), abs(v - hi)) < BOUND_TOLERANCE
            for v, (lo, hi) in zip(result.x, bounds, strict=True)
        )
        if not converged and on_bound:
            # the line search ends abnormally against a bound: the bound is the optimum
            converged = True
        elif not converged:
            # a derivative-free pass from there: flat ridges can stop L-BFGS-B's line search
            # before the optimum
            polish = minimize(
                value_only,
                result.x,
                method="Nelder-Mead",
                bounds=bounds,
                options={"xatol": 1e-8, "fatol": 1e-14, "maxiter": 600},
            )
            best = polish if polish.fun <= result.fun else result
            converged = bool(polish.success)
            if not converged:
                notes.append(f"the optimiser stopped early: {polish.message}")
        theta = best.x
    except (ValueError, FloatingPointError, ArithmeticError) as exc:
        theta, converged = theta0, False
        notes.append(f"the optimiser failed ({exc}); starting values kept")
    params = np.exp(theta)
    for name, value, (lo, hi) in zip(names, theta, bounds, strict=True):
        for side, edge in (("lower", lo), ("upper", hi)):
            if abs(value - edge) < BOUND_TOLERANCE:
                meaning = BOUND_MEANING.get((name, side), "the likelihood keeps improving there")
                notes.append(
                    f"{name} is at its {side} bound {np.exp(edge):g} (boundary optimum: {meaning})"
                )
    return params, loglik(params)[0], converged, notes


def fit_bgnbd(x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> ModelFit:
    """Maximum-likelihood BG/NBD on repeat purchases ``x``, last-purchase time ``t_x``, age ``T``."""
    data = BGNBDData.build(x, t_x, T)
    names = ("r", "alpha", "a", "b")
    mean_T = float(np.average(data.T_values[data.T_index], weights=data.weights)) or 1.0
    start = np.array([1.0, max(mean_T, 1e-3), 1.0, 1.0])
    params, ll, converged, notes = _maximise(lambda p: bgnbd_log_likelihood(p, data), names, start)
    fit = ModelFit(dict(zip(names, map(float, params), strict=True)), ll, data.customers, converged)
    a, b = fit.params["a"], fit.params["b"]
    if a / (a + b) < NO_DROPOUT and not any("drop-out" in n for n in notes):
        # the no-drop-out optimum lies at infinity along a ridge (a -> 0, b -> inf), often
        # short of either bound
        notes.append(
            f"the mean drop-out probability a/(a+b) = {a / (a + b):.2g} is ~0 (boundary optimum: "
            "the data show almost no drop-out; p_alive is ~1 for everyone)"
        )
    fit.notes = [f"BG/NBD: {n}" for n in notes]
    return fit


def fit_gamma_gamma(n: np.ndarray, zbar: np.ndarray) -> ModelFit:
    """Maximum-likelihood Gamma-Gamma on customers with ``n`` >= 1 purchases of mean ``zbar`` > 0."""
    n = np.asarray(n, dtype=np.float64)
    zbar = np.asarray(zbar, dtype=np.float64)
    keep = (n >= 1) & (zbar > 0) & np.isfinite(zbar)
    names = ("p", "q", "gamma")
    if keep.sum() < 3:
        fit = ModelFit({"p": 1.0, "q": 2.0, "gamma": 1.0}, float("nan"), int(keep.sum()), False)
        fit.notes.append(
            "Gamma-Gamma: fewer than 3 customers with a positive spend; spend set to the mean"
        )
        return fit
    data = GammaGammaData.build(n[keep], zbar[keep])
    start = np.array([1.0, 2.0, float(np.mean(zbar[keep]))])
    # q > 1 keeps the expected spend finite
    params, ll, converged, notes = _maximise(
        lambda p: gamma_gamma_log_likelihood(p, data), names, start, {"q": 1.0 + 1e-3}
    )
    fit = ModelFit(dict(zip(names, map(float, params), strict=True)), ll, data.customers, converged)
    if fit.params["q"] > HOMOGENEOUS_SPEND_Q and not notes:
        notes.append(
            f"q = {fit.params['q']:.3g} (boundary optimum: the customers' mean spend per purchase "
            "barely varies; expected spend is ~ the overall mean for everyone)"
        )
    fit.notes = [f"Gamma-Gamma: {note}" for note in notes]
    return fit


@dataclass
class CLVFit:
    """The fitted CLV model, its evidence and the per-customer values of the training table."""

    model: CLVModel
    bgnbd: ModelFit
    gamma_gamma: ModelFit
    #: per customer: clv, expected_purchases, p_alive, expected_spend (training row order)
    values: dict[str, np.ndarray]

    @property
    def notes(self) -> list[str]:
        """Boundary optima and optimiser messages of both fits."""
        return self.bgnbd.notes + self.gamma_gamma.notes

    def to_dict(self) -> dict[str, Any]:
        """The manifest's ``clv`` entry."""
        return {
            "model": self.model.to_dict(),
            "bgnbd": self.bgnbd.to_dict(),
            "gamma_gamma": self.gamma_gamma.to_dict(),
            "total_value": float(np.sum(self.values["clv"])),
            "notes": self.notes,
        }


def fit_clv(
    features: pd.DataFrame,
    *,
    period_days: float = 7.0,
    horizon_months: int = 12,
    discount_rate: float = 0.01,
) -> CLVFit:
    """Fit BG/NBD and Gamma-Gamma on per-customer transaction features and value everyone.

    ``features`` holds ``frequency``, ``recency_days``, ``tenure_days`` and ``monetary_avg``
    (:mod:`training.transactions`). Gamma-Gamma is fitted on repeat buyers (two or more purchase
    days), as Fader & Hardie do.
    """
    freq = features["frequency"].to_numpy(np.float64)
    x, t_x, T = bgnbd_inputs(
        freq,
        features["recency_days"].to_numpy(np.float64),
        features["tenure_days"].to_numpy(np.float64),
        period_days,
    )
    bg = fit_bgnbd(x, t_x, T)
    spend = features["monetary_avg"].to_numpy(np.float64)
    repeat = freq >= 2
    gg = fit_gamma_gamma(freq[repeat], spend[repeat])
    model = CLVModel(
        bgnbd=BGNBDParams(**bg.params),
        gamma_gamma=GammaGammaParams(**gg.params),
        period_days=period_days,
        horizon_months=horizon_months,
        discount_rate=discount_rate,
    )
    values = customer_value(
        model,
        freq,
        features["recency_days"].to_numpy(np.float64),
        features["tenure_days"].to_numpy(np.float64),
        spend,
    )
    for note in bg.notes + gg.notes:
        log.warning("%s", note)
    log.info(
        "CLV: BG/NBD %s; Gamma-Gamma %s; total %.0f over %d months",
        ", ".join(f"{k}={v:.3g}" for k, v in bg.params.items()),
        ", ".join(f"{k}={v:.3g}" for k, v in gg.params.items()),
        float(values["clv"].sum()),
        horizon_months,
    )
    return CLVFit(model=model, bgnbd=bg, gamma_gamma=gg, values=values)


def segment_values(clv: np.ndarray, labels: np.ndarray, k: int) -> list[dict[str, float]]:
    """Per segment: mean and total CLV and the segment's share of the total value."""
    totals = np.bincount(labels, weights=clv, minlength=k)
    sizes = np.bincount(labels, minlength=k)
    grand = float(totals.sum())
    return [
        {
            "mean": float(totals[s] / sizes[s]) if sizes[s] else 0.0,
            "total": float(totals[s]),
            "share": float(totals[s] / grand) if grand > 0 else 0.0,
        }
        for s in range(k)
    ]


def holdout_check(
    calibration: pd.DataFrame,
    holdout_purchases: pd.Series,
    fit: CLVFit,
    holdout_days: float,
) -> dict[str, float]:
    """Predicted against actual repeat purchases in a hold-out period after the calibration.

    ``calibration``: features as of the calibration end (id index); ``holdout_purchases``:
    purchase days per customer id in the hold-out period (absent = 0). Returns the aggregate
    predicted and actual totals and the per-customer Pearson correlation.
    """
    x, t_x, T = bgnbd_inputs(
        calibration["frequency"].to_numpy(np.float64),
        calibration["recency_days"].to_numpy(np.float64),
        calibration["tenure_days"].to_numpy(np.float64),
        fit.model.period_days,
    )
    predicted = expected_purchases(fit.model.bgnbd, holdout_days / fit.model.period_days, x, t_x, T)
    actual = holdout_purchases.reindex(calibration.index, fill_value=0).to_numpy(np.float64)
    return {
        "customers": len(actual),
        "predicted_total": float(predicted.sum()),
        "actual_total": float(actual.sum()),
        "correlation": float(np.corrcoef(predicted, actual)[0, 1]),
        "mean_absolute_error": float(np.mean(np.abs(predicted - actual))),
    }
