"""Demo data: a digital wallet's customers, its campaign pool and their campaign responses.

Two shapes: ``demo`` (7 features, 7 campaigns: small and quick to learn) and ``production``
(12 features, 6 campaigns, responses with interactions and thresholds, so a LightGBM model at
the library defaults keeps improving for about 200 rounds of 31 leaves, as models trained on
real tables do; the benchmarks serve both side by side).

The generator plants a known number of segments (:data:`SEGMENTS`) whose feature means are far
apart in the log-scaled, standardised space the segmentation works in, so that K-Means recovers
them; the ``true_segment`` column holds the planted label and is never a feature. Responses
depend on the customer's features, segment and the campaign, so a response model has real signal
to learn. Everything is drawn from one ``numpy`` generator seeded by ``seed``: the same seed gives
identical tables.

The response history is a randomized experiment with a control arm. A share of customers
(:data:`CONTROL_SHARE`) is held out: they receive nothing, and the history records, for every
campaign, whether they took up its product anyway (``treated = 0``). The others receive 3-5
random campaigns (``treated = 1``). Whether a campaign *causes* a response differs by segment,
campaign and mobile usage (:data:`UPLIFT_LOGIT`): persuadables respond only when treated, sure
things respond anyway (the response model loves them, the offer earns nothing), lost causes never
respond, and do-not-disturbs respond *less* when treated. The true probabilities with and without
each campaign are kept in :class:`UpliftTruth` so tests can score any policy exactly.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from scoring.campaigns import Campaign

logger = logging.getLogger("training")

#: columns of the generated customer table that are features, in order
FEATURES = (
    "total_spend",
    "order_count",
    "days_since_last_purchase",
    "unique_products",
    "discount_usage",
    "return_rate",
    "mobile_usage",
)
#: the production shape's five extra features (after :data:`FEATURES`)
EXTRA_FEATURES = (
    "tenure_days",
    "sessions_per_month",
    "support_tickets",
    "card_share",
    "international_share",
)
PRODUCTION_FEATURES = (*FEATURES, *EXTRA_FEATURES)
TRUTH_COLUMN = "true_segment"
#: the shapes ``generate_demo`` can draw
SHAPES = ("demo", "production")


@dataclass(frozen=True)
class SegmentSpec:
    """The planted profile of one segment: share and the centre of each feature."""

    name: str
    share: float
    #: median total spend over the observation period (lognormal centre)
    spend: float
    #: mean number of orders (negative binomial centre)
    orders: float
    #: median days since the last purchase (lognormal centre)
    recency: float
    #: mean share of orders placed with a discount, return rate and mobile share (beta means)
    discount: float
    returns: float
    mobile: float


#: The planted segments. Means differ by several within-segment spreads on the log scale, so
#: K-Means after log1p, scaling and PCA separates them; the shares are deliberately unequal.
SEGMENTS: tuple[SegmentSpec, ...] = (
    SegmentSpec("vip_champions", 0.10, 6500.0, 85.0, 2.0, 0.06, 0.02, 0.90),
    SegmentSpec("loyal_regulars", 0.24, 750.0, 22.0, 10.0, 0.25, 0.05, 0.45),
    SegmentSpec("bargain_hunters", 0.22, 260.0, 18.0, 14.0, 0.75, 0.22, 0.80),
    SegmentSpec("new_occasional", 0.24, 45.0, 2.0, 25.0, 0.30, 0.04, 0.60),
    SegmentSpec("dormant", 0.20, 180.0, 6.0, 260.0, 0.20, 0.10, 0.15),
)

#: Per segment centres of the production shape's extra features: tenure (median days, lognormal),
#: sessions per month and support tickets (Poisson means), card and international shares (beta).
_EXTRA_CENTRES: dict[str, tuple[float, float, float, float, float]] = {
    "vip_champions": (900.0, 30.0, 0.5, 0.70, 0.30),
    "loyal_regulars": (700.0, 15.0, 0.3, 0.50, 0.10),
    "bargain_hunters": (400.0, 20.0, 1.2, 0.30, 0.05),
    "new_occasional": (40.0, 4.0, 0.2, 0.40, 0.05),
    "dormant": (800.0, 1.0, 0.4, 0.30, 0.05),
}

#: The campaign pool of the demo wallet; every campaign is open to every segment.
CAMPAIGNS: tuple[Campaign, ...] = (
    Campaign("cashback", "Cashback boost", 18.0, "push", "5% cashback on the next ten payments"),
    Campaign(
        "bill_payment_discount",
        "Bill payment discount",
        12.0,
        "in_app",
        "A discount on utility and phone bills paid from the wallet",
    ),
    Campaign("savings_plan", "Savings plan", 45.0, "email", "An automatic monthly savings pocket"),
    Campaign("personal_loan", "Personal loan", 90.0, "email", "A pre-approved personal loan"),
    Campaign(
        "wealth_management",
        "Wealth management",
        120.0,
        "email",
        "Managed investment portfolios with a personal adviser",
    ),
    Campaign("referral_bonus", "Referral bonus", 25.0, "push", "A bonus for each friend invited"),
    Campaign(
        "win_back", "Win-back offer", 15.0, "email", "A welcome-back voucher for lapsed users"
    ),
)

#: The production shape's pool: six campaigns, one of them driven by the extra features.
PRODUCTION_CAMPAIGNS: tuple[Campaign, ...] = (
    *CAMPAIGNS[:5],
    Campaign(
        "travel_card",
        "Travel card",
        60.0,
        "push",
        "A card without foreign-exchange fees, with travel insurance",
    ),
)

#: Per-campaign logit intercept and weights on standardised signals, plus segment affinities.
#: Signals: s = log spend, o = log orders, r = log recency, d = discount, m = mobile, x = returns.
_RESPONSE_WEIGHTS: dict[str, dict[str, float]] = {
    "cashback": {"b": -2.3, "d": 1.0, "m": 0.4, "o": 0.2},
    "bill_payment_discount": {"b": -2.6, "m": 1.0, "o": 0.4, "r": -0.3},
    "savings_plan": {"b": -3.0, "s": 0.8, "r": -0.4, "d": -0.3},
    "personal_loan": {"b": -3.6, "o": 0.5, "x": 0.4, "s": 0.2},
    "wealth_management": {"b": -4.2, "s": 1.5, "d": -0.5},
    "referral_bonus": {"b": -2.9, "m": 0.7, "o": 0.5, "r": -0.5},
    "win_back": {"b": -3.2, "r": 1.3, "o": -0.2},
}
#: Production shape: extra signals t = log tenure, n = log sessions, k = tickets, c = card share,
#: i = international share, and products of two signals ("s*i") and thresholds ("r>1": 1 where
#: the standardised signal exceeds 1), which a tree model needs many splits to follow.
_PRODUCTION_WEIGHTS: dict[str, dict[str, float]] = {
    "cashback": {"b": -2.3, "d": 1.0, "m": 0.4, "c": 0.5, "d*c": 0.6, "n>1": 0.5},
    "bill_payment_discount": {"b": -2.6, "m": 0.9, "n": 0.5, "r": -0.3, "k": -0.3, "m*n": 0.4},
    "savings_plan": {"b": -3.0, "s": 0.7, "t": 0.5, "d": -0.3, "s*t": 0.5, "r>1": -0.7},
    "personal_loan": {"b": -3.6, "o": 0.5, "x": 0.4, "k": 0.4, "t": -0.3, "o*x": 0.5},
    "wealth_management": {"b": -4.2, "s": 1.3, "i": 0.4, "d": -0.5, "s*i": 0.6, "t>1": 0.5},
    "travel_card": {"b": -3.4, "i": 1.4, "m": 0.3, "s": 0.4, "i*m": 0.5, "c>1": 0.6},
}
_SEGMENT_AFFINITY: dict[str, dict[str, float]] = {
    "vip_champions": {"wealth_management": 1.2, "savings_plan": 0.5, "cashback": -0.4},
    "loyal_regulars": {"savings_plan": 0.6, "referral_bonus": 0.4},
    "bargain_hunters": {"cashback": 0.9, "bill_payment_discount": 0.5, "wealth_management": -1.0},
    "new_occasional": {"referral_bonus": 0.3, "personal_loan": -0.4},
    "dormant": {"win_back": 1.0, "wealth_management": -0.8},
}


#: Planted treatment effect on the log-odds of responding, by segment and campaign (campaigns not
#: named get :data:`DEFAULT_UPLIFT_LOGIT`). 0 marks "sure things" (the offer changes nothing),
#: large positive values persuadables, negative ones do-not-disturbs. The high-value, high-response
#: pairs a response-only ranking picks first (wealth management and savings for VIPs, cashback for
#: bargain hunters) are deliberately sure things.
UPLIFT_LOGIT: dict[str, dict[str, float]] = {
    "vip_champions": {
        "wealth_management": 0.0,
        "savings_plan": 0.0,
        "personal_loan": -1.2,
        "cashback": 1.5,
        "referral_bonus": 1.0,
    },
    "loyal_regulars": {
        "savings_plan": 0.0,
        "referral_bonus": 1.8,
        "bill_payment_discount": 1.5,
        "wealth_management": 0.5,
    },
    "bargain_hunters": {
        "cashback": 0.0,
        "bill_payment_discount": 0.0,
        "personal_loan": 1.5,
        "win_back": -1.0,
    },
    "new_occasional": {"referral_bonus": 2.0, "cashback": 1.5, "savings_plan": -0.8},
    "dormant": {"win_back": 2.5, "wealth_management": -1.5, "cashback": 0.5},
}
DEFAULT_UPLIFT_LOGIT = 0.6
#: push and in-app offers persuade heavy mobile users and annoy the others: this many log-odds
#: per standard deviation of mobile usage are added to their effect
MOBILE_UPLIFT_LOGIT = 0.7
#: share of customers in the randomized control arm (no campaign sent)
CONTROL_SHARE = 0.25


@dataclass(frozen=True)
class UpliftTruth:
    """The planted response probabilities: ``(n_customers, n_campaigns)``, rows in customer order.

    ``treated[i, j]`` is customer ``i``'s chance of responding when sent campaign ``j``,
    ``control[i, j]`` the chance of responding to it (taking up its product) when sent nothing.
    """

    treated: np.ndarray
    control: np.ndarray

    @property
    def uplift(self) -> np.ndarray:
        """Treated minus control probability: what each campaign causes for each customer."""
        return self.treated - self.control


@dataclass(frozen=True)
class DemoData:
    """Generated customers, the campaign pool and the long-form response history."""

    #: one row per customer: customer_id, the features and ``true_segment``
    customers: pd.DataFrame
    campaigns: list[Campaign]
    #: long form: customer_id, campaign_id, responded (0/1), treated (1 sent, 0 control arm)
    responses: pd.DataFrame
    #: the planted probabilities with and without each campaign (never written as a feature)
    truth: UpliftTruth


def _beta(rng: np.random.Generator, mean: float, concentration: float, n: int) -> np.ndarray:
    """Beta draws with the given mean; higher concentration means less spread."""
    return rng.beta(mean * concentration, (1.0 - mean) * concentration, size=n)


def _draw_segment(rng: np.random.Generator, spec: SegmentSpec, n: int) -> dict[str, np.ndarray]:
    """Feature columns for ``n`` customers of one planted segment."""
    # Orders: negative binomial around the segment mean (overdispersed like real counts).
    dispersion = 12.0
    mean = spec.orders - 1.0
    orders = 1 + rng.negative_binomial(dispersion, dispersion / (dispersion + mean), size=n)
    # A few sign-ups never ordered (about 0.3% of the newest customers).
    if spec.orders < 3.0:
        orders = np.where(rng.random(n) < 0.003, 0, orders)
    # Spend per order follows the segment's typical basket, with a heavy lognormal tail.
    basket = spec.spend / max(spec.orders, 1.0)
    spend = np.maximum(orders, 1) * basket * rng.lognormal(0.0, 0.3, size=n)
    products = np.minimum(orders, 1 + rng.poisson(0.45 * orders))
    recency = np.ceil(spec.recency * rng.lognormal(0.0, 0.3, size=n))
    # A customer who never ordered has spent nothing and bought nothing.
    none = orders == 0
    spend = np.where(none, 0.0, spend)
    products = np.where(none, 0, products)
    return {
        "total_spend": np.round(spend, 2),
        "order_count": orders.astype(np.int64),
        "days_since_last_purchase": recency.astype(np.int64),
        "unique_products": products.astype(np.int64),
        "discount_usage": np.round(_beta(rng, spec.discount, 40.0, n), 4),
        "return_rate": np.round(_beta(rng, spec.returns, 60.0, n), 4),
        "mobile_usage": np.round(_beta(rng, spec.mobile, 30.0, n), 4),
    }


def _draw_extra(rng: np.random.Generator, spec: SegmentSpec, n: int) -> dict[str, np.ndarray]:
    """The production shape's extra feature columns for ``n`` customers of one segment."""
    tenure, sessions, tickets, card, intl = _EXTRA_CENTRES[spec.name]
    return {
        "tenure_days": np.ceil(tenure * rng.lognormal(0.0, 0.5, size=n)).astype(np.int64),
        "sessions_per_month": rng.poisson(sessions * rng.lognormal(0.0, 0.4, size=n)),
        "support_tickets": rng.poisson(tickets, size=n).astype(np.int64),
        "card_share": np.round(_beta(rng, card, 8.0, n), 4),
        "international_share": np.round(_beta(rng, intl, 6.0, n), 4),
    }


def _draw_customers(
    rng: np.random.Generator, n_customers: int, shape: str = "demo"
) -> pd.DataFrame:
    """The customer table, rows shuffled so segments are not in blocks."""
    shares = np.array([s.share for s in SEGMENTS])
    counts = rng.multinomial(n_customers, shares / shares.sum())
    features = PRODUCTION_FEATURES if shape == "production" else FEATURES
    parts = []
    for spec, count in zip(SEGMENTS, counts, strict=True):
        cols = _draw_segment(rng, spec, int(count))
        if shape == "production":
            cols.update(_draw_extra(rng, spec, int(count)))
        cols[TRUTH_COLUMN] = np.full(int(count), spec.name, dtype=object)
        parts.append(pd.DataFrame(cols))
    frame = pd.concat(parts, ignore_index=True)
    frame = frame.iloc[rng.permutation(len(frame))].reset_index(drop=True)
    # mobile_usage is optional: about 0.5% of customers never opened the app's tracking consent.
    missing = rng.random(len(frame)) < 0.005
    frame.loc[missing, "mobile_usage"] = np.nan
    ids = pd.Series([f"W{i:07d}" for i in range(1, len(frame) + 1)], dtype=object)
    frame.insert(0, "customer_id", ids)
    return frame[["customer_id", *features, TRUTH_COLUMN]]


def _standardise(values: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance (NaN ignored and then read as the mean)."""
    z = (values - np.nanmean(values)) / (np.nanstd(values) or 1.0)
    return np.nan_to_num(z, nan=0.0)


def _signal(signals: dict[str, np.ndarray], key: str) -> np.ndarray:
    """A named signal, a product ("s*i") or a threshold ("r>1") of standardised signals."""
    if "*" in key:
        a, b = key.split("*")
        return signals[a] * signals[b]
    if ">" in key:
        a, level = key.split(">")
        return (signals[a] > float(level)).astype(np.float64)
    return signals[key]


def _response_logits(
    customers: pd.DataFrame,
    campaigns: tuple[Campaign, ...] = CAMPAIGNS,
    weights_by_campaign: dict[str, dict[str, float]] = _RESPONSE_WEIGHTS,
) -> tuple[np.ndarray, np.ndarray]:
    """Planted log-odds of responding with and without each campaign, ``(n, n_campaigns)`` each."""
    n = len(customers)
    signals = {
        "s": _standardise(np.log1p(customers["total_spend"].to_numpy(float))),
        "o": _standardise(np.log1p(customers["order_count"].to_numpy(float))),
        "r": _standardise(np.log1p(customers["days_since_last_purchase"].to_numpy(float))),
        "d": _standardise(customers["discount_usage"].to_numpy(float)),
        "m": _standardise(customers["mobile_usage"].to_numpy(float)),
        "x": _standardise(customers["return_rate"].to_numpy(float)),
    }
    if "tenure_days" in customers:
        signals.update(
            t=_standardise(np.log1p(customers["tenure_days"].to_numpy(float))),
            n=_standardise(np.log1p(customers["sessions_per_month"].to_numpy(float))),
            k=_standardise(customers["support_tickets"].to_numpy(float)),
            c=_standardise(customers["card_share"].to_numpy(float)),
            i=_standardise(customers["international_share"].to_numpy(float)),
        )
    segment = customers[TRUTH_COLUMN].to_numpy()
    treated = np.empty((n, len(campaigns)))
    effect = np.empty((n, len(campaigns)))
    for j, campaign in enumerate(campaigns):
        weights = weights_by_campaign[campaign.id]
        z = np.full(n, weights["b"])
        tau = np.full(n, DEFAULT_UPLIFT_LOGIT)
        for key, w in weights.items():
            if key != "b":
                z += w * _signal(signals, key)
        for name, affinity in _SEGMENT_AFFINITY.items():
            in_segment = segment == name
            z += np.where(in_segment, affinity.get(campaign.id, 0.0), 0.0)
            planted = UPLIFT_LOGIT.get(name, {}).get(campaign.id)
            if planted is not None:
                tau = np.where(in_segment, planted, tau)
        if campaign.channel in ("push", "in_app"):
            tau = tau + MOBILE_UPLIFT_LOGIT * signals["m"]
        treated[:, j] = z
        effect[:, j] = tau
    return treated, treated - effect


def _draw_responses(
    rng: np.random.Generator,
    customers: pd.DataFrame,
    campaigns: tuple[Campaign, ...] = CAMPAIGNS,
    weights_by_campaign: dict[str, dict[str, float]] = _RESPONSE_WEIGHTS,
) -> tuple[pd.DataFrame, UpliftTruth]:
    """A randomized history: the control arm records every campaign's outcome untreated; each
    other customer receives 3-5 random campaigns and responds with a feature-driven chance."""
    n = len(customers)
    n_campaigns = len(campaigns)
    treated_logit, control_logit = _response_logits(customers, campaigns, weights_by_campaign)
    truth = UpliftTruth(
        treated=1.0 / (1.0 + np.exp(-treated_logit)),
        control=1.0 / (1.0 + np.exp(-control_logit)),
    )
    control_arm = rng.random(n) < CONTROL_SHARE
    # A random subset of 3-5 campaigns per customer: rank random keys, keep the first few.
    offered_count = rng.integers(3, 6, size=n)
    order = np.argsort(rng.random((n, n_campaigns)), axis=1)
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(n_campaigns)[None, :], axis=1)
    offered = ranks < offered_count[:, None]
    recorded = np.where(control_arm[:, None], True, offered)
    prob = np.where(control_arm[:, None], truth.control, truth.treated)
    responded = rng.random((n, n_campaigns)) < prob
    rows, cols = np.nonzero(recorded)
    ids = customers["customer_id"].to_numpy()
    campaign_ids = np.array([c.id for c in campaigns], dtype=object)
    responses = pd.DataFrame(
        {
            "customer_id": ids[rows],
            "campaign_id": campaign_ids[cols],
            "responded": responded[rows, cols].astype(np.int8),
            "treated": (~control_arm[rows]).astype(np.int8),
        }
    )
    return responses, truth


def generate_demo(n_customers: int = 75_000, seed: int = 42, shape: str = "demo") -> DemoData:
    """Generate the demo wallet: customers with planted segments, campaigns and responses.

    ``shape`` is ``demo`` (7 features, 7 campaigns) or ``production`` (12 features, 6
    campaigns, responses a model needs about 200 rounds of 31 leaves to learn).
    """
    if n_customers < len(SEGMENTS):
        raise ValueError(
            f"n_customers={n_customers} should be >= {len(SEGMENTS)} (one per segment)"
        )
    if shape not in SHAPES:
        raise ValueError(f"shape={shape!r} should be one of {', '.join(SHAPES)}")
    rng = np.random.default_rng(seed)
    customers = _draw_customers(rng, n_customers, shape)
    if shape == "production":
        pool, weights = PRODUCTION_CAMPAIGNS, _PRODUCTION_WEIGHTS
    else:
        pool, weights = CAMPAIGNS, _RESPONSE_WEIGHTS
    responses, truth = _draw_responses(rng, customers, pool, weights)
    campaigns = [Campaign(**c.to_dict()) for c in pool]
    return DemoData(customers=customers, campaigns=campaigns, responses=responses, truth=truth)


def write_demo(
    out_dir: str | Path, n_customers: int = 75_000, seed: int = 42, shape: str = "demo"
) -> dict[str, Path]:
    """Generate the demo data and write it to ``out_dir``; return the written paths by role.

    Files: ``customers.parquet``, ``campaigns.json`` (the pool) and ``responses.parquet``
    (long form: customer_id, campaign_id, responded, treated).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    logger.info("generating %d %s customers (seed %d)", n_customers, shape, seed)
    demo = generate_demo(n_customers, seed, shape)
    paths = {
        "customers": out / "customers.parquet",
        "campaigns": out / "campaigns.json",
        "responses": out / "responses.parquet",
    }
    demo.customers.to_parquet(paths["customers"], index=False)
    demo.responses.to_parquet(paths["responses"], index=False)
    pool = [c.to_dict() for c in demo.campaigns]
    paths["campaigns"].write_text(json.dumps(pool, indent=2) + "\n", encoding="utf-8")
    logger.info(
        "wrote %d customers and %d responses to %s", len(demo.customers), len(demo.responses), out
    )
    return paths


def write_demo_partitioned(
    out_dir: str | Path,
    n_customers: int,
    seed: int = 42,
    rows_per_file: int = 500_000,
) -> dict[str, Path]:
    """The demo data as partitioned Parquet, generated one file at a time (memory stays at one
    file's worth whatever ``n_customers`` is).

    Writes ``customers.parquet/part-NNNNN.parquet`` and ``responses.parquet/part-NNNNN.parquet``
    (folders: the Dask engine reads each file as a partition; pandas and pyarrow read a folder as
    one table) and ``campaigns.json``. File ``i`` is drawn from its own generator seeded by
    ``(seed, i)``, so files can be produced independently; ids run on across files.
    """
    if n_customers < len(SEGMENTS):
        raise ValueError(
            f"n_customers={n_customers} should be >= {len(SEGMENTS)} (one per segment)"
        )
    if rows_per_file < len(SEGMENTS):
        raise ValueError(f"rows_per_file={rows_per_file} should be >= {len(SEGMENTS)}")
    out = Path(out_dir)
    paths = {
        "customers": out / "customers.parquet",
        "campaigns": out / "campaigns.json",
        "responses": out / "responses.parquet",
    }
    for folder in (paths["customers"], paths["responses"]):
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("part-*.parquet"):
            old.unlink()
    width = max(7, len(str(n_customers)))
    written = responses = 0
    index = 0
    while written < n_customers:
        size = min(rows_per_file, n_customers - written)
        rng = np.random.default_rng([seed, index])
        customers = _draw_customers(rng, size)
        customers["customer_id"] = [f"W{written + i:0{width}d}" for i in range(1, size + 1)]
        drawn, _ = _draw_responses(rng, customers)
        name = f"part-{index:05d}.parquet"
        customers.to_parquet(paths["customers"] / name, index=False)
        drawn.to_parquet(paths["responses"] / name, index=False)
        written += size
        responses += len(drawn)
        index += 1
        logger.info("generated %d of %d customers", written, n_customers)
    pool = [c.to_dict() for c in CAMPAIGNS]
    paths["campaigns"].write_text(json.dumps(pool, indent=2) + "\n", encoding="utf-8")
    logger.info(
        "wrote %d customers and %d responses in %d file(s) each to %s",
        written,
        responses,
        index,
        out,
    )
    return paths
