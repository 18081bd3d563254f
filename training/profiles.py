"""Segment profiles: size, share, feature means and medians, response rates, default campaigns.

One profile per segment, index = segment id, in the shape ``profiles.json`` stores (see
docs/architecture.md). Everything is computed from the training rows; nothing is modified.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from scoring.campaigns import Campaign
from training.naming import SegmentName

#: default campaigns kept per segment
MAX_DEFAULT_CAMPAIGNS = 3


def segment_response_rates(
    responses: pd.DataFrame | None, labels: np.ndarray, k: int, n_campaigns: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per (segment, campaign): historical response rate (NaN when never offered) and offers."""
    offers = np.zeros((k, n_campaigns), dtype=np.int64)
    hits = np.zeros((k, n_campaigns), dtype=np.float64)
    if responses is not None and len(responses) and n_campaigns:
        seg = labels[responses["customer_idx"].to_numpy()]
        camp = responses["campaign_idx"].to_numpy()
        cell = seg.astype(np.int64) * n_campaigns + camp
        size = k * n_campaigns
        offers = np.bincount(cell, minlength=size).reshape(k, n_campaigns)
        hits = np.bincount(
            cell, weights=responses["responded"].to_numpy(np.float64), minlength=size
        ).reshape(k, n_campaigns)
    with np.errstate(invalid="ignore", divide="ignore"):
        rates = np.where(offers > 0, hits / np.maximum(offers, 1), np.nan)
    return rates, offers


def default_campaigns(
    segment_id: int, segment_name: str, rates: np.ndarray, campaigns: list[Campaign]
) -> list[str]:
    """Eligible campaigns ranked by historical expected value (rate x value), at most three.

    Eligibility is :meth:`Campaign.is_eligible`, the rule serving applies (names and ids).

    Campaigns never offered to the segment count with rate 0; without any history the ranking
    falls back to campaign value alone. Ties keep pool order.
    """
    has_history = bool(np.isfinite(rates).any())
    ranked = []
    for j, c in enumerate(campaigns):
        if not c.is_eligible(segment_id, segment_name):
            continue
        rate = float(rates[j]) if np.isfinite(rates[j]) else 0.0
        expected = rate * c.value if has_history else c.value
        ranked.append((-expected, -c.value, j, c.id))
    ranked.sort()
    return [cid for *_, cid in ranked[:MAX_DEFAULT_CAMPAIGNS]]


def _segment_slices(labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(k + 1))
    return order, bounds


def build_profiles(
    numeric: np.ndarray,
    feature_names: list[str],
    labels: np.ndarray,
    names: list[SegmentName],
    campaigns: list[Campaign],
    responses: pd.DataFrame | None,
    outlier_thresholds: np.ndarray,
) -> list[dict[str, Any]]:
    """The profile of every segment, index = segment id."""
    k = len(names)
    rates, _ = segment_response_rates(responses, labels, k, len(campaigns))
    order, bounds = _segment_slices(labels, k)
    sizes = np.zeros(k, dtype=np.int64)
    means = np.zeros((k, len(feature_names)))
    medians = np.zeros((k, len(feature_names)))
    for s in range(k):
        rows = numeric[order[bounds[s] : bounds[s + 1]]]
        sizes[s] = rows.shape[0]
        if sizes[s]:
            means[s], medians[s] = rows.mean(axis=0), np.median(rows, axis=0)
    return profiles_from_stats(
        feature_names, sizes, means, medians, names, campaigns, rates, outlier_thresholds
    )


def profiles_from_stats(
    feature_names: list[str],
    sizes: np.ndarray,
    means: np.ndarray,
    medians: np.ndarray,
    names: list[SegmentName],
    campaigns: list[Campaign],
    rates: np.ndarray,
    outlier_thresholds: np.ndarray,
) -> list[dict[str, Any]]:
    """Profiles from per-segment statistics: sizes (k,), means and medians (k, features) and
    response rates (k, campaigns; NaN where never offered). Both engines end here."""
    n = int(np.sum(sizes))
    profiles = []
    for s in range(len(names)):
        size = int(sizes[s])
        profiles.append(
            {
                "segment_id": s,
                "name": names[s].name,
                "description": names[s].description,
                "size": int(size),
                "share": float(size / n) if n else 0.0,
                "mean": {f: float(v) for f, v in zip(feature_names, means[s], strict=True)},
                "median": {f: float(v) for f, v in zip(feature_names, medians[s], strict=True)},
                "response_rate": {
                    c.id: float(rates[s, j])
                    for j, c in enumerate(campaigns)
                    if np.isfinite(rates[s, j])
                },
                "default_campaigns": default_campaigns(s, names[s].name, rates[s], campaigns),
                "outlier_threshold": float(outlier_thresholds[s]),
            }
        )
    return profiles
