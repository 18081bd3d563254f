"""Customer lifetime value from fitted parameters: BG/NBD purchases and Gamma-Gamma spend.

Predictions only (``training.clv`` fits the parameters; both sides read this module so batch
scoring, the profiles and the service agree). Vectorised over customers; numpy and
``scipy.special`` only.

Per customer, in periods of ``period_days`` days:

- ``x``: repeat purchases (purchase days after the first), ``t_x``: time of the last purchase
  since the first, ``T``: time from the first purchase to the snapshot date
  (:func:`bgnbd_inputs` derives them from the transaction features ``frequency``,
  ``recency_days`` and ``tenure_days``);
- ``zbar``: mean spend per purchase day (``monetary_avg``), ``n``: purchase days it averages.

BG/NBD (Fader, Hardie & Lee 2005): :func:`probability_alive` and
:func:`expected_purchases` (conditional on the history, over the next ``t`` periods).
Gamma-Gamma (Fader & Hardie 2013): :func:`expected_spend`. :func:`customer_value` sums the
expected purchases of each month of the horizon times the expected spend, discounted monthly
(the convention of the ``lifetimes`` package: months of 30 days).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.special import hyp2f1

#: days per month of the CLV horizon (discounting is monthly)
MONTH_DAYS = 30.0
#: terms of the hypergeometric series summed where scipy's hyp2f1 gives no number
SERIES_TERMS = 500
#: the transaction features a customer's CLV is computed from
CLV_FEATURES = ("frequency", "recency_days", "tenure_days", "monetary_avg")


@dataclass(frozen=True)
class BGNBDParams:
    """BG/NBD: purchase rate ~ Gamma(r, alpha); drop-out probability ~ Beta(a, b)."""

    r: float
    alpha: float
    a: float
    b: float


@dataclass(frozen=True)
class GammaGammaParams:
    """Gamma-Gamma: spend per purchase ~ Gamma(p, nu), nu ~ Gamma(q, gamma)."""

    p: float
    q: float
    gamma: float


@dataclass(frozen=True)
class CLVModel:
    """Everything needed to value a customer: both fitted models and the horizon."""

    bgnbd: BGNBDParams
    gamma_gamma: GammaGammaParams
    period_days: float = 7.0
    horizon_months: int = 12
    #: monthly discount rate
    discount_rate: float = 0.01

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (the manifest's ``clv.model``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CLVModel:
        """Inverse of :meth:`to_dict`."""
        return cls(
            bgnbd=BGNBDParams(**data["bgnbd"]),
            gamma_gamma=GammaGammaParams(**data["gamma_gamma"]),
            period_days=float(data["period_days"]),
            horizon_months=int(data["horizon_months"]),
            discount_rate=float(data["discount_rate"]),
        )


def bgnbd_inputs(
    frequency: np.ndarray, recency_days: np.ndarray, tenure_days: np.ndarray, period_days: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, t_x, T) in periods from purchase days, days since the last and since the first.

    The snapshot date is exclusive (the features count days up to it), so the observation
    ends the day before: a customer whose first purchase was on the last observed day has
    T = 0, as in the published CDNOW summaries.
    """
    frequency = np.asarray(frequency, dtype=np.float64)
    tenure = np.asarray(tenure_days, dtype=np.float64)
    recency = np.asarray(recency_days, dtype=np.float64)
    x = np.maximum(frequency - 1.0, 0.0)
    span = np.maximum(tenure - recency, 0.0)
    t_x = span / period_days
    T = np.maximum(tenure - 1.0, span) / period_days
    return x, t_x, T


def _log_odds_dead(params: BGNBDParams, x: np.ndarray, t_x: np.ndarray, T: np.ndarray):
    """log of a/(b+x-1) ((alpha+T)/(alpha+t_x))^(r+x) for x > 0 (-inf for x = 0)."""
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    with np.errstate(divide="ignore", invalid="ignore"):
        value = (
            np.log(a)
            - np.log(np.maximum(b + x - 1.0, 1e-300))
            + (r + x) * (np.log(alpha + T) - np.log(alpha + t_x))
        )
    return np.where(x > 0, value, -np.inf)


def probability_alive(
    params: BGNBDParams, x: np.ndarray, t_x: np.ndarray, T: np.ndarray
) -> np.ndarray:
    """P(the customer has not dropped out) given the purchase history."""
    return 1.0 / (1.0 + np.exp(_log_odds_dead(params, x, t_x, T)))


def _series_tail(A: np.ndarray, B: np.ndarray, C: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Gauss's series of 2F1(A, B; C; w) less its leading 1, for |w| < 1 (NaN where it has not
    converged in :data:`SERIES_TERMS` terms)."""
    term = np.ones_like(w)
    total = np.zeros_like(w)
    converged = np.zeros(w.shape, dtype=bool)
    for k in range(SERIES_TERMS):
        term = term * (A + k) * (B + k) / ((C + k) * (k + 1.0)) * w
        total = total + term
        converged = np.abs(term) <= 1e-15 * np.maximum(np.abs(total), 1e-300)
        if converged.all():
            break
    return np.where(converged & (np.abs(w) < 1.0), total, np.nan)


def _purchases_if_alive(
    params: BGNBDParams, t: float | np.ndarray, x: np.ndarray, T: np.ndarray
) -> np.ndarray:
    """Expected purchases in the next ``t`` periods divided by P(alive): a function of (x, T)
    alone (t_x enters only through P(alive)), so it is computed once per distinct (x, T).

    ``scipy.special.hyp2f1`` returns NaN for large first parameters (r + x above ~10,000, as on
    a boundary optimum with alpha at its upper bound); there the Euler-transformed form
    2F1(r+x, a-1; a+b+x-1; -t/(alpha+T)), whose series converges fast for t << alpha + T, is
    summed directly; what neither gives takes the no-drop-out limit (r+x) t / (alpha+T).
    """
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    if abs(a - 1.0) < 1e-9:  # the closed form divides by a - 1; the limit is continuous
        a = 1.0 + 1e-9
    t, x, T = np.broadcast_arrays(
        np.asarray(t, dtype=np.float64),
        np.asarray(x, dtype=np.float64),
        np.asarray(T, dtype=np.float64),
    )
    z = t / (alpha + T + t)
    head = (a + b + x - 1.0) / (a - 1.0)
    with np.errstate(all="ignore"):
        ratio = np.exp((r + x) * (np.log(alpha + T) - np.log(alpha + T + t)))
        value = head * (1.0 - ratio * hyp2f1(r + x, b + x, a + b + x - 1.0, z))
    bad = ~np.isfinite(value)
    if bad.any():
        xb, Tb, tb = x[bad], T[bad], t[bad]
        with np.errstate(all="ignore"):
            tail = _series_tail(r + xb, a - 1.0, a + b + xb - 1.0, -tb / (alpha + Tb))
            fallback = head[bad] * -tail
        value[bad] = np.where(np.isfinite(fallback), fallback, (r + xb) * tb / (alpha + Tb))
    return value


def expected_purchases(
    params: BGNBDParams, t: float | np.ndarray, x: np.ndarray, t_x: np.ndarray, T: np.ndarray
) -> np.ndarray:
    """Expected purchases in the next ``t`` periods given the history (x, t_x, T)."""
    t = np.asarray(t, dtype=np.float64)
    out = _purchases_if_alive(params, t, x, T) * probability_alive(params, x, t_x, T)
    return np.where(t > 0, np.maximum(out, 0.0), 0.0)


def expected_spend(params: GammaGammaParams, n: np.ndarray, zbar: np.ndarray) -> np.ndarray:
    """Expected spend per purchase given ``n`` purchases averaging ``zbar`` (n = 0: the mean)."""
    p, q, gamma = params.p, params.q, params.gamma
    n = np.asarray(n, dtype=np.float64)
    zbar = np.nan_to_num(np.asarray(zbar, dtype=np.float64))
    return (p * (gamma + n * zbar)) / (p * n + q - 1.0)


def customer_value(
    model: CLVModel,
    frequency: np.ndarray,
    recency_days: np.ndarray,
    tenure_days: np.ndarray,
    monetary_avg: np.ndarray,
) -> dict[str, np.ndarray]:
    """Per customer: ``clv`` (discounted value over the horizon), ``expected_purchases`` over the
    horizon, ``p_alive`` and ``expected_spend`` per purchase, from transaction features."""
    x, t_x, T = bgnbd_inputs(frequency, recency_days, tenure_days, model.period_days)
    spend = expected_spend(model.gamma_gamma, np.asarray(frequency, np.float64), monetary_avg)
    # the purchase forecast is P(alive | x, t_x, T) times a function of (x, T) alone, and
    # customers share (x, T) pairs (whole days, few purchase counts: 8,220 pairs for the
    # benchmark's million customers): the hypergeometric function, the costly part, runs once per pair
    if len(x):
        order = np.lexsort((T, x))
        ox, oT = x[order], T[order]
        starts = np.ones(len(order), dtype=bool)
        starts[1:] = (ox[1:] != ox[:-1]) | (oT[1:] != oT[:-1])
        ux, uT = ox[starts], oT[starts]
        back = np.empty(len(order), dtype=np.int64)
        back[order] = np.cumsum(starts) - 1
    else:
        ux = uT = x
        back = np.zeros(0, dtype=np.int64)
    discounted = np.zeros_like(ux)
    previous = np.zeros_like(ux)
    for month in range(1, model.horizon_months + 1):
        t = month * MONTH_DAYS / model.period_days
        cumulative = np.maximum(_purchases_if_alive(model.bgnbd, t, ux, uT), 0.0)
        discounted += (cumulative - previous) / (1.0 + model.discount_rate) ** month
        previous = cumulative
    p_alive = probability_alive(model.bgnbd, x, t_x, T)
    return {
        "clv": spend * discounted[back] * p_alive,
        "expected_purchases": previous[back] * p_alive,
        "p_alive": p_alive,
        "expected_spend": spend,
    }


def model_from_manifest(manifest: dict[str, Any]) -> CLVModel | None:
    """The bundle's CLV model (manifest ``clv.model``), or None when it was trained without."""
    entry = manifest.get("clv")
    return CLVModel.from_dict(entry["model"]) if entry else None


@dataclass(frozen=True)
class GainWeight:
    """Offer values weighted by the customer's lifetime value (``[clv] weight_gains``).

    ``weight = max(CLV, 0) / reference``, where ``reference`` is the mean CLV of the training
    customers: an average customer's offers keep their value, a customer worth twice the
    average doubles it, one the models expect never to buy again drops towards zero. The
    contact cost is not weighted, so the weight changes which offers pay for themselves, not
    only their order: ``gain = uplift x value x weight - cost``. The CLV is computed at scoring
    time from the customer's own features by :func:`customer_value`, the function training
    and ``training score`` use, so every path gets the same number.
    """

    model: CLVModel
    #: positions of ``CLV_FEATURES`` in the numeric matrix (inputs then derived)
    positions: tuple[int, int, int, int]
    #: mean CLV of the training customers
    reference: float

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any], numeric_names: list[str]) -> GainWeight | None:
        """The bundle's weighting, or None when it ranks by unweighted gains."""
        entry = manifest.get("clv") or {}
        if not entry.get("weight_gains"):
            return None
        return cls(
            model=CLVModel.from_dict(entry["model"]),
            positions=tuple(numeric_names.index(f) for f in CLV_FEATURES),  # type: ignore[arg-type]
            reference=float(entry["weight_reference"]),
        )

    def values(self, numeric: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(clv, weight) of each row of the numeric matrix (n, n_numeric)."""
        clv = customer_value(self.model, *(numeric[:, p] for p in self.positions))["clv"]
        return clv, np.maximum(clv, 0.0) / self.reference
