"""The data behind the report's charts, taken at training time from the prepared features.

Stored in the bundle as ``evidence.json`` (hashed like every bundle file), so the HTML report
can be rebuilt from a bundle alone and the what-if page can draw the segment map:

- ``map``: a seeded sample of customers on the first two principal components, their segment
  and atypical flag, and the segment centres on the same axes;
- ``dendrogram``: a Ward linkage of a smaller sample and the height that cuts it into k;
- ``zscores``: each segment's mean standardized cluster feature (what sets it apart);
- ``comparison``: the algorithm comparison (also in the manifest).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.cluster.hierarchy import linkage

from training.compare import sample_rows

#: customers drawn on the segment map
MAP_ROWS = 1_500
#: customers in the Ward dendrogram
DENDROGRAM_ROWS = 400


def _rounded(a: np.ndarray, digits: int = 4) -> list:
    return np.round(np.asarray(a, dtype=np.float64), digits).tolist()


def segment_map(
    P: np.ndarray,
    labels: np.ndarray,
    atypical: np.ndarray,
    centers: np.ndarray,
    explained: np.ndarray,
    seed: int,
    rows: int = MAP_ROWS,
) -> dict[str, Any]:
    """A sample of customers and the segment centres on the first two PCA axes."""
    idx = sample_rows(P.shape[0], rows, seed + 1)
    second = P[idx, 1] if P.shape[1] > 1 else np.zeros(idx.size)
    center_y = centers[:, 1] if centers.shape[1] > 1 else np.zeros(centers.shape[0])
    return {
        "x": _rounded(P[idx, 0], 3),
        "y": _rounded(second, 3),
        "segment": labels[idx].astype(int).tolist(),
        "atypical": atypical[idx].astype(bool).tolist(),
        "centers": [
            [round(float(a), 4), round(float(b), 4)]
            for a, b in zip(centers[:, 0], center_y, strict=True)
        ],
        "explained": _rounded(explained[:2], 4),
        "axes": ["PC1", "PC2"],
    }


def ward_dendrogram(P: np.ndarray, k: int, seed: int, rows: int = DENDROGRAM_ROWS) -> dict:
    """Ward linkage of a sample and the height between the merges that leave k and k-1 groups."""
    idx = sample_rows(P.shape[0], rows, seed + 2)
    Z = linkage(P[idx], method="ward")
    n = idx.size
    if 1 < k < n:
        cut = float((Z[n - k - 1, 2] + Z[n - k, 2]) / 2.0)
    else:
        cut = float(Z[-1, 2]) if len(Z) else 0.0
    return {"linkage": _rounded(Z, 5), "rows": int(n), "cut_height": cut, "k": int(k)}


def segment_zscores(Z: np.ndarray, labels: np.ndarray, k: int, features: list[str]) -> dict:
    """Mean standardized cluster feature of each segment (rows: segments; columns: features)."""
    sums = np.zeros((k, Z.shape[1]))
    np.add.at(sums, labels, Z)
    counts = np.maximum(np.bincount(labels, minlength=k), 1)[:, None]
    return {"features": list(features), "values": _rounded(sums / counts, 3)}


def build_evidence(
    P: np.ndarray,
    Z: np.ndarray,
    labels: np.ndarray,
    atypical: np.ndarray,
    centers: np.ndarray,
    explained: np.ndarray,
    features: list[str],
    seed: int,
    comparison: dict[str, Any] | None,
) -> dict[str, Any]:
    """Everything the report's charts need that the manifest and pickles do not hold."""
    k = int(centers.shape[0])
    return {
        "map": segment_map(P, labels, atypical, centers, explained, seed),
        "dendrogram": ward_dendrogram(P, k, seed),
        "zscores": segment_zscores(Z, labels, k, features),
        "comparison": comparison,
    }
