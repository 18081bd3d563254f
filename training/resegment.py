"""Re-segmentation against a previous bundle: matching, migration, drift and the promotion gate.

A monthly re-segmentation must keep "segment 3" meaning the same customers. After the new
K-Means is fitted:

1. **Matching** (:func:`match_segments`): the new segments' centroids and the previous bundle's
   (its profiles' means) are compared in the original feature space of the cluster features both
   bundles share, each feature divided by its standard deviation in the new table so that no unit
   dominates; the distance is the root-mean-square of those differences. The Hungarian
   assignment (``scipy.optimize.linear_sum_assignment``) pairs them at least total distance; a
   pair farther apart than ``match_distance`` is not a match. Matched segments keep the previous
   id order and name; unmatched new segments are *new* (ids after the matched ones, generated
   names) and unmatched previous ones have *vanished*. With k unchanged and no pair beyond the
   limit, ids and names map one-to-one.
2. **Migration** (:func:`migration_matrix`): customers present in both snapshots (the previous
   bundle's ``assignments.npz``), counted from each previous segment to each new one.
3. **Drift**: the population stability index (:func:`psi`) of every numeric feature against the
   previous bundle's decile bins (manifest ``feature_distribution``), and the shift of each
   matched segment's share.
4. **Promotion gate** (:func:`gate`): ``current`` moves to the new bundle only when no feature's
   PSI exceeds ``gate_max_psi``, no matched share moved more than ``gate_max_share_shift``, and
   at least ``gate_min_retention`` of the customers in both snapshots stayed in their (matched)
   segment; otherwise the bundle is written but not promoted, and the refusal names the threshold
   that tripped (``--force`` promotes anyway).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from scoring.bundle import Bundle

log = logging.getLogger(__name__)

#: deciles: the bins of the feature distributions kept for PSI
PSI_BINS = 10
#: share floor inside the PSI logarithm (an empty bin would make it infinite)
PSI_FLOOR = 1e-4


# ---- feature distributions and PSI ---------------------------------------------------------
def feature_distribution(numeric: np.ndarray, names: list[str]) -> dict[str, dict[str, list]]:
    """Per feature: inner decile edges and the share of rows in each bin (for a later PSI)."""
    out = {}
    for j, name in enumerate(names):
        column = numeric[:, j]
        column = column[np.isfinite(column)]
        if not column.size:
            continue
        edges = np.unique(np.quantile(column, np.linspace(0, 1, PSI_BINS + 1)[1:-1]))
        out[name] = {"edges": edges.tolist(), "shares": _bin_shares(column, edges).tolist()}
    return out


def _bin_shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    bins = np.searchsorted(edges, values, side="right")
    return np.bincount(bins, minlength=len(edges) + 1) / max(len(values), 1)


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of two bin-share vectors: sum (a - e) ln(a / e)."""
    e = np.maximum(np.asarray(expected, dtype=np.float64), PSI_FLOOR)
    a = np.maximum(np.asarray(actual, dtype=np.float64), PSI_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def feature_psi(
    previous: dict[str, dict[str, list]], numeric: np.ndarray, names: list[str]
) -> dict[str, float]:
    """PSI of each feature of the new table against the previous bundle's bins."""
    out = {}
    for j, name in enumerate(names):
        if name not in previous:
            continue
        edges = np.asarray(previous[name]["edges"], dtype=np.float64)
        column = numeric[:, j]
        column = column[np.isfinite(column)]
        out[name] = psi(previous[name]["shares"], _bin_shares(column, edges))
    return out


# ---- matching ------------------------------------------------------------------------------
@dataclass
class Matching:
    """How the new segments map onto the previous bundle's."""

    #: new segment (as fitted) -> position in the final order (the bundle's segment id)
    order: np.ndarray
    #: final new id -> previous id, for matched segments
    previous_of: dict[int, int]
    #: final new id -> previous name, for matched segments
    names: dict[int, str]
    #: per matched pair: previous id/name, new id, distance
    pairs: list[dict[str, Any]]
    #: final ids of new segments (no previous counterpart)
    new: list[int]
    #: previous segments without a counterpart
    vanished: list[dict[str, Any]]
    features: list[str]

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form for the manifest."""
        return {
            "features": self.features,
            "pairs": self.pairs,
            "new_segments": self.new,
            "vanished_segments": self.vanished,
        }


def segment_means(matrix: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """(k, n_features) mean of each segment's rows (0 for an empty segment)."""
    sums = np.zeros((k, matrix.shape[1]))
    np.add.at(sums, labels, matrix)
    counts = np.bincount(labels, minlength=k)[:, None]
    return sums / np.maximum(counts, 1)


def match_segments(
    previous: Bundle,
    numeric: np.ndarray,
    names: list[str],
    cluster_features: list[str],
    labels: np.ndarray,
    k: int,
    max_distance: float,
) -> Matching:
    """Hungarian matching of the new segments (``labels``) to the previous bundle's."""
    prev_means = [p.get("mean", {}) for p in previous.profiles]
    features = [f for f in cluster_features if all(f in m for m in prev_means) and f in names]
    if not features:
        raise ValueError(
            "the previous bundle shares no cluster feature with this one "
            f"(this one clusters on {', '.join(cluster_features)})"
        )
    cols = [names.index(f) for f in features]
    table = numeric[:, cols]
    scale = table.std(axis=0)
    scale[~(scale > 0)] = 1.0
    new_centres = segment_means(table, labels, k) / scale
    old_centres = np.array([[m[f] for f in features] for m in prev_means]) / scale
    diff = old_centres[:, None, :] - new_centres[None, :, :]
    distance = np.sqrt(np.mean(diff**2, axis=2))  # (k_old, k_new)
    rows, cols_new = linear_sum_assignment(distance)
    matched = [
        (int(o), int(n), float(distance[o, n]))
        for o, n in zip(rows, cols_new, strict=True)
        if distance[o, n] <= max_distance
    ]
    # matched segments first, in the previous ids' order; then new ones, largest first
    matched.sort()
    sizes = np.bincount(labels, minlength=k)
    matched_new = {n for _, n, _ in matched}
    unmatched_new = sorted(
        (n for n in range(k) if n not in matched_new), key=lambda n: (-sizes[n], n)
    )
    order_fitted = [n for _, n, _ in matched] + unmatched_new
    order = np.empty(k, dtype=np.int64)
    order[np.array(order_fitted, dtype=np.int64)] = np.arange(k)
    previous_of = {int(order[n]): o for o, n, _ in matched}
    pairs = [
        {
            "previous_id": o,
            "previous_name": previous.segment_names[o],
            "new_id": int(order[n]),
            "distance": round(d, 4),
        }
        for o, n, d in matched
    ]
    matched_old = {o for o, _, _ in matched}
    vanished = [
        {"previous_id": o, "name": previous.segment_names[o]}
        for o in range(len(prev_means))
        if o not in matched_old
    ]
    return Matching(
        order=order,
        previous_of=previous_of,
        names={new: previous.segment_names[old] for new, old in previous_of.items()},
        pairs=pairs,
        new=[int(order[n]) for n in unmatched_new],
        vanished=vanished,
        features=features,
    )


# ---- migration ----------------------------------------------------------------------------
def migration_matrix(
    previous_ids: np.ndarray,
    previous_segments: np.ndarray,
    ids: np.ndarray,
    segments: np.ndarray,
    k_previous: int,
    k: int,
    previous_of: dict[int, int],
) -> dict[str, Any]:
    """Customers in both snapshots, counted from each previous segment to each new one."""
    prev = dict(zip(previous_ids.tolist(), previous_segments.tolist(), strict=True))
    old = np.array([prev.get(i, -1) for i in ids.tolist()], dtype=np.int64)
    both = old >= 0
    counts = np.zeros((k_previous, k), dtype=np.int64)
    np.add.at(counts, (old[both], segments[both]), 1)
    stayed = sum(int(counts[o, n]) for n, o in previous_of.items())
    n_both = int(both.sum())
    return {
        "rows": "previous segment id",
        "columns": "new segment id",
        "counts": counts.tolist(),
        "customers_in_both": n_both,
        "customers_new": int((~both).sum()),
        "customers_gone": len(prev) - n_both,
        "retention": stayed / n_both if n_both else None,
    }


# ---- the gate ------------------------------------------------------------------------------
@dataclass
class GateResult:
    """Whether the new bundle may become ``current``, and why not."""

    passed: bool
    tripped: list[str] = field(default_factory=list)
    forced: bool = False
    thresholds: dict[str, float] = field(default_factory=dict)

    @property
    def promote(self) -> bool:
        """True when ``current`` should move to the new bundle."""
        return self.passed or self.forced

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form for the manifest."""
        return {
            "passed": self.passed,
            "tripped": self.tripped,
            "forced": self.forced,
            "promoted": self.promote,
            "thresholds": self.thresholds,
        }


def gate(
    psi_values: dict[str, float],
    share_shift: dict[str, dict[str, float]],
    retention: float | None,
    *,
    max_psi: float,
    max_share_shift: float,
    min_retention: float,
    force: bool = False,
    ignore: tuple[str, ...] = (),
) -> GateResult:
    """Apply the promotion thresholds; each tripped one is named with its value."""
    tripped = []
    for feature, value in sorted(psi_values.items(), key=lambda kv: -kv[1]):
        if value > max_psi and feature not in ignore:
            tripped.append(
                f"PSI of {feature} is {value:.3f} > segmentation.gate_max_psi = {max_psi:g}"
            )
    for segment, shift in share_shift.items():
        if abs(shift["shift"]) > max_share_shift:
            tripped.append(
                f"the share of segment {segment} moved {shift['previous']:.3f} -> "
                f"{shift['new']:.3f} (|{shift['shift']:+.3f}| > segmentation."
                f"gate_max_share_shift = {max_share_shift:g})"
            )
    if retention is not None and retention < min_retention:
        tripped.append(
            f"only {retention:.3f} of the customers in both snapshots stayed in their segment "
            f"(< segmentation.gate_min_retention = {min_retention:g})"
        )
    return GateResult(
        passed=not tripped,
        tripped=tripped,
        forced=force and bool(tripped),
        thresholds={
            "gate_max_psi": max_psi,
            "gate_max_share_shift": max_share_shift,
            "gate_min_retention": min_retention,
            "gate_ignore": list(ignore),
        },
    )


def share_shifts(
    previous: Bundle, sizes: np.ndarray, previous_of: dict[int, int]
) -> dict[str, dict[str, float]]:
    """Per matched segment (new id, as text): previous share, new share, shift."""
    n = max(int(sizes.sum()), 1)
    out = {}
    for new, old in sorted(previous_of.items()):
        before = float(previous.profiles[old]["share"])
        after = float(sizes[new] / n)
        out[str(new)] = {"previous": before, "new": after, "shift": after - before}
    return out
