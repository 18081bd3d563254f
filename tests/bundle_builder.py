"""Builds small, real bundles for tests without the training package (layers stay separate)."""

from __future__ import annotations

from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.impute import SimpleImputer
from sklearn.preprocessing import StandardScaler

from scoring.bundle import Bundle, write_bundle
from scoring.campaigns import Campaign
from scoring.compiled_trees import check_sample, compile_model
from scoring.features import (
    DerivedFeature,
    FeatureSchema,
    NumericInput,
    cluster_matrix,
    numeric_matrix,
)

INPUTS = [
    ("total_spend", "amount"),
    ("order_count", "count"),
    ("days_since_last_purchase", "days"),
    ("unique_products", "count"),
    ("discount_usage", "ratio"),
    ("return_rate", "ratio"),
    ("mobile_usage", "ratio"),
]
SEGMENT_NAMES = ["VIP Champions", "Bargain Hunters", "Dormant"]
CAMPAIGNS = [
    Campaign("cashback", "Cashback 5%", 20.0, "push", "5% back on card spend"),
    Campaign("savings_plan", "Savings plan", 60.0, "email", "Automatic monthly savings"),
    Campaign("win_back", "Win-back voucher", 15.0, "push", "Come back offer", ["Dormant"]),
    Campaign("wealth", "Wealth management", 120.0, "in_app", "Advisor call", ["VIP Champions"]),
]


def synthetic_customers(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Demo-contract customers from three planted segments, and the planted labels."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 3, size=n)
    spend = np.exp(np.array([8.0, 5.5, 4.0])[truth] + rng.normal(0, 0.3, n))
    orders = rng.poisson(np.array([40, 15, 1.5])[truth])
    frame = pd.DataFrame(
        {
            "customer_id": [f"c{i:06d}" for i in range(n)],
            "total_spend": spend.round(2),
            "order_count": orders,
            "days_since_last_purchase": rng.gamma(2.0, np.array([3, 10, 90])[truth]).round(),
            "unique_products": rng.poisson(np.array([25, 8, 2])[truth]),
            "discount_usage": np.clip(rng.normal(np.array([0.1, 0.7, 0.2])[truth], 0.08), 0, 1),
            "return_rate": np.clip(rng.normal(0.05, 0.03, n), 0, 1),
            "mobile_usage": np.clip(rng.normal(np.array([0.8, 0.6, 0.3])[truth], 0.1), 0, 1),
        }
    )
    # a few customers without a mobile-usage reading: that input is optional and imputed
    frame.loc[rng.random(n) < 0.02, "mobile_usage"] = np.nan
    return frame, truth


def build_bundle(
    root: Path,
    *,
    n: int = 3000,
    seed: int = 0,
    version: str | None = None,
    with_response_model: bool = True,
    compiled: bool = False,
) -> Bundle:
    """Fit a 3-segment bundle on synthetic customers and write it under ``root``.

    ``compiled`` also compiles the response model to native code (scoring/compiled_trees.py),
    checked on held-out-like rows of the same table with gaps, as training does.
    """
    frame, _ = synthetic_customers(n, seed)
    names = [name for name, _ in INPUTS]
    raw = frame[names].to_numpy(dtype=np.float64)
    imputer = SimpleImputer(strategy="median").fit(raw)
    inputs = tuple(
        NumericInput(
            name=name,
            kind=kind,
            required=not bool(np.isnan(raw[:, j]).any()),
            median=float(imputer.statistics_[j]),
            observed_min=float(np.nanmin(raw[:, j])),
            observed_max=float(np.nanmax(raw[:, j])),
        )
        for j, (name, kind) in enumerate(INPUTS)
    )
    derived = (DerivedFeature("avg_order_value", "total_spend", "order_count"),)
    all_numeric = (*names, "avg_order_value")
    schema = FeatureSchema(
        inputs=inputs,
        derived=derived,
        cluster_features=all_numeric,
        log_features=(
            "total_spend",
            "order_count",
            "unique_products",
            "avg_order_value",
            "days_since_last_purchase",
        ),
        response_features=all_numeric,
    )
    numeric = numeric_matrix(raw, schema)
    c = cluster_matrix(numeric, schema)
    scaler = StandardScaler().fit(c)
    pca = PCA(n_components=0.9, random_state=seed).fit(scaler.transform(c))
    p = pca.transform(scaler.transform(c))
    kmeans = KMeans(n_clusters=3, n_init=3, random_state=seed).fit(p)
    labels = kmeans.labels_
    # name segments by their mean spend so names follow the planted structure
    spend_rank = np.argsort([-numeric[labels == s, 0].mean() for s in range(3)])
    seg_names = [""] * 3
    for rank, s in enumerate(spend_rank):
        seg_names[s] = ["VIP Champions", "Bargain Hunters", "Dormant"][rank]

    rng = np.random.default_rng(seed + 1)
    m = len(CAMPAIGNS)
    customer = np.repeat(np.arange(n), m)
    campaign = np.tile(np.arange(m), n)
    model_cols = schema.response_model_columns
    rows = np.column_stack([numeric[customer], labels[customer], campaign])
    logit = -2.0 + 0.8 * (campaign == 0) * (numeric[customer, 4] > 0.5) + 0.3 * campaign
    logit += 0.002 * np.minimum(numeric[customer, 0], 1000) - 1.0 * (labels[customer] == 2)
    y = (rng.random(len(logit)) < 1 / (1 + np.exp(-logit))).astype(int)
    booster = None
    if with_response_model:
        booster = lgb.train(
            {
                "objective": "binary",
                "num_leaves": 7,
                "learning_rate": 0.1,
                "verbosity": -1,
                "seed": seed,
                "deterministic": True,
                "num_threads": 1,
            },
            lgb.Dataset(
                rows, y, feature_name=model_cols, categorical_feature=["segment", "campaign"]
            ),
            num_boost_round=30,
        )
    dist = np.linalg.norm(p - kmeans.cluster_centers_[labels], axis=1)
    profiles = []
    for s in range(3):
        member = labels == s
        resp = {
            CAMPAIGNS[j].id: float(y[(labels[customer] == s) & (campaign == j)].mean())
            for j in range(m)
        }
        eligible = [
            cp
            for cp in CAMPAIGNS
            if cp.eligible_segments is None or seg_names[s] in cp.eligible_segments
        ]
        eligible.sort(key=lambda cp: -resp[cp.id] * cp.value)
        profiles.append(
            {
                "segment_id": s,
                "name": seg_names[s],
                "description": f"planted segment {s}",
                "size": int(member.sum()),
                "share": float(member.mean()),
                "mean": {f: float(numeric[member, j].mean()) for j, f in enumerate(all_numeric)},
                "median": {
                    f: float(np.median(numeric[member, j])) for j, f in enumerate(all_numeric)
                },
                "response_rate": resp if with_response_model else {},
                "default_campaigns": [cp.id for cp in eligible[:3]],
                "outlier_threshold": float(np.quantile(dist[member], 0.99)),
            }
        )
    bundle = Bundle(
        schema=schema,
        imputer=imputer,
        scaler=scaler,
        pca=pca,
        kmeans=kmeans,
        segment_names=seg_names,
        profiles=profiles,
        campaigns=list(CAMPAIGNS) if with_response_model else [],
        response_model=booster,
        manifest={
            "data_fingerprint": {"sha256": f"{seed:064d}", "rows": n},
            "config": {"builder": "tests/bundle_builder.py"},
            "metrics": {},
        },
    )
    if compiled and booster is not None:
        # as training does: the campaign column and the pool's size, for the one-walk entry
        bundle.compiled = compile_model(
            booster.model_to_string(),
            check_sample(rows, seed),
            campaign_slot=schema.response_layout().campaign_slot,
            campaigns=m,
        )
    write_bundle(bundle, root, version=version)
    return bundle
