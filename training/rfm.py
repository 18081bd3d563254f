"""RFM in training: quintile edges from the training population, the RFM segmentation, and the
RFM part of the profiles and the manifest.

The rule itself (edges -> scores -> group) is :mod:`scoring.rfm`; this module only fits the
edges and describes the training customers with it. With ``[segmentation] method = "rfm"`` the
segments are the 11 named groups (ids in :data:`scoring.rfm.GROUPS` order, every group a
segment even when no training customer falls in it, so a campaign's ``eligible_segments`` may
name any group and a new customer always lands in a served segment). The scaler and PCA are
still fitted on the cluster features: they give ``distance`` (to the group's centre in PCA
space), ``atypical``, the report's map and the what-if page's position, exactly as for K-Means.
A group without training customers has no centre: its distance is measured from the population
centre (the PCA origin) and, with no training customer to compare with, such a customer is
atypical.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
from sklearn.cluster import KMeans

from scoring.rfm import DESCRIPTIONS, GROUPS, ROLES, RFMRule, quintile_edges
from training.config import RfmConfig, SegmentationConfig
from training.naming import SegmentName, apply_overrides
from training.segmentation import (
    KSelection,
    Segmentation,
    centroid_distances,
    fit_projection,
    outlier_thresholds,
)

log = logging.getLogger(__name__)


def fit_rule(
    numeric: np.ndarray, numeric_names: list[str], config: RfmConfig, *, segments: bool
) -> RFMRule:
    """Quintile edges of the three ``[rfm]`` features over the training rows (imputed)."""
    features = (config.recency, config.frequency, config.monetary)
    positions = tuple(numeric_names.index(f) for f in features)
    edges = tuple(tuple(quintile_edges(numeric[:, p])) for p in positions)
    return RFMRule(features, positions, edges, segments)  # type: ignore[arg-type]


def centroid_model(centers: np.ndarray, labels: np.ndarray, inertia: float) -> KMeans:
    """A ``KMeans`` holding the groups' centres (PCA space) where the bundle keeps centres.

    Not fitted by Lloyd's algorithm: the RFM rule makes the segments, this object only stores
    where each group sits, which distances, the report and the what-if map read.
    """
    k, d = centers.shape
    model = KMeans(n_clusters=k, n_init=1)
    model.cluster_centers_ = np.ascontiguousarray(centers, dtype=np.float64)
    model.labels_ = labels.astype(np.int32)
    model.inertia_ = float(inertia)
    model.n_iter_ = 0
    model.n_features_in_ = d
    model._n_threads = 1
    return model


def rfm_segmentation(
    X: np.ndarray, numeric: np.ndarray, rule: RFMRule, config: SegmentationConfig
) -> Segmentation:
    """The segmentation whose segments are the RFM groups of ``rule`` (see the module doc)."""
    start = time.perf_counter()
    scaler, pca = fit_projection(X, config)
    P = pca.transform(scaler.transform(X))
    labels = rule.groups(rule.scores(numeric)).astype(np.int64)
    k = len(GROUPS)
    sizes = np.bincount(labels, minlength=k)
    centers = np.zeros((k, P.shape[1]), dtype=np.float64)
    np.add.at(centers, labels, P)
    centers[sizes > 0] /= sizes[sizes > 0, None]
    distances = centroid_distances(P, centers, labels)
    thresholds = outlier_thresholds(distances, labels, k, config.outlier_quantile)
    empty = [GROUPS[g] for g in range(k) if sizes[g] == 0]
    reasoning = (
        'segmentation.method = "rfm": the 11 named RFM groups of the R and F quintile scores '
        "(no k search)"
    )
    selection = KSelection([], None, k, reasoning, overridden=True, search_rows=len(X))
    if empty:
        selection.warnings.append(
            f"rfm: no training customer in {', '.join(empty)}; those segments are served with "
            "zero size (a new customer landing there is marked atypical)"
        )
    log.info("RFM groups: %s", ", ".join(f"{GROUPS[g]} {sizes[g]}" for g in range(k)))
    return Segmentation(
        scaler=scaler,
        pca=pca,
        kmeans=centroid_model(centers, labels, float(np.sum(distances**2))),
        labels=labels,
        distances=distances,
        outlier_thresholds=thresholds,
        selection=selection,
        stability={},
        timings={"rfm": round(time.perf_counter() - start, 3)},
    )


def group_names(overrides: dict[str, str] | None) -> list[SegmentName]:
    """The groups as segment names (a names file may rename them by id or group name)."""
    names = [SegmentName(g, DESCRIPTIONS[g], "rfm") for g in GROUPS]
    return apply_overrides(names, overrides) if overrides else names


def profile_scores(scores: np.ndarray, labels: np.ndarray, k: int) -> list[dict[str, Any]]:
    """Per segment: mean R, F, M score and the share of its customers in each RFM group."""
    groups = RFMRule.groups(scores)
    out = []
    for s in range(k):
        mine = labels == s
        n = int(mine.sum())
        if not n:
            out.append({"recency": None, "frequency": None, "monetary": None, "groups": {}})
            continue
        counts = np.bincount(groups[mine], minlength=len(GROUPS))
        out.append(
            {
                **{role: float(scores[mine, c].mean()) for c, role in enumerate(ROLES)},
                # largest first; groups without customers of this segment are left out
                "groups": {
                    GROUPS[g]: float(counts[g] / n)
                    for g in sorted(range(len(GROUPS)), key=lambda g: (-counts[g], g))
                    if counts[g]
                },
            }
        )
    return out


#: the report tables' columns after the segment's name (both reports, Markdown and HTML)
SCORE_COLUMNS = ["mean R", "mean F", "mean M", "largest RFM groups"]


def score_cells(profile: dict[str, Any]) -> list[Any]:
    """One segment's cells under :data:`SCORE_COLUMNS`: mean scores and its three largest groups."""
    rfm = profile["rfm"]
    largest = list(rfm["groups"].items())[:3]
    return [
        rfm["recency"],
        rfm["frequency"],
        rfm["monetary"],
        ", ".join(f"{g} {100 * v:.0f}%" for g, v in largest),
    ]


def manifest_entry(rule: RFMRule, scores: np.ndarray) -> dict[str, Any]:
    """The manifest's ``rfm``: the rule, customers per group and per score value."""
    groups = RFMRule.groups(scores)
    return {
        **rule.to_dict(),
        "customers": {
            g: int(c)
            for g, c in zip(GROUPS, np.bincount(groups, minlength=len(GROUPS)), strict=True)
        },
        "score_counts": {
            role: np.bincount(scores[:, c], minlength=6)[1:].tolist()
            for c, role in enumerate(ROLES)
        },
        # customers per (R, F) cell: cells[R - 1][F - 1]
        "cells": np.bincount((scores[:, 0] - 1) * 5 + scores[:, 1] - 1, minlength=25)
        .reshape(5, 5)
        .tolist(),
    }
