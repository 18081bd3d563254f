"""The plain scikit-learn/LightGBM path: each fitted object's own transform/predict.

Slow but obviously right; the fused :class:`scoring.engine.ScoringEngine` is tested against it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from scoring.bundle import Bundle
from scoring.features import cluster_matrix, derive, frame_to_raw


def reference_numeric(bundle: Bundle, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Imputed + derived numeric features and categorical codes, via the fitted imputer."""
    raw, codes = frame_to_raw(frame, bundle.schema)
    imputed = bundle.imputer.transform(raw)
    return derive(np.asarray(imputed, dtype=np.float64), bundle.schema), codes


def reference_segments(bundle: Bundle, frame: pd.DataFrame) -> np.ndarray:
    """Segment ids through scaler.transform -> pca.transform -> kmeans.predict."""
    numeric, _ = reference_numeric(bundle, frame)
    c = cluster_matrix(numeric, bundle.schema)
    z = bundle.scaler.transform(c)
    return bundle.kmeans.predict(bundle.pca.transform(z))


def reference_propensities(bundle: Bundle, frame: pd.DataFrame, segments: np.ndarray) -> np.ndarray:
    """(n, n_campaigns) probabilities through Booster.predict on a pandas frame."""
    numeric, codes = reference_numeric(bundle, frame)
    schema = bundle.schema
    layout = schema.response_layout()
    n, m = len(frame), len(bundle.campaigns)
    resp = numeric[:, schema.response_index()]
    # keyed by the model's own column names: a feature may itself be called "campaign"
    cols = {}
    for j, name in enumerate(layout.columns[layout.numeric_slots]):
        cols[name] = np.repeat(resp[:, j], m)
    for j, name in enumerate(layout.columns[layout.code_slots]):
        cols[name] = np.repeat(codes[:, j], m)
    cols[layout.segment_column] = np.repeat(np.asarray(segments, dtype=np.float64), m)
    cols[layout.campaign_column] = np.tile(np.arange(m, dtype=np.float64), n)
    rows = pd.DataFrame(cols)[list(layout.columns)]
    return bundle.response_model.predict(rows.to_numpy()).reshape(n, m)
