"""The single-process engine: the whole table in one process (today's ``training.pipeline``)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from scoring.bundle import Bundle
from scoring.clv import CLV_FEATURES, customer_value, model_from_manifest
from scoring.engine import ScoringEngine
from scoring.ids import ids_as_text
from scoring.rfm import GROUPS, ROLES, RFMRule
from training.pipeline import train

log = logging.getLogger("training")

__all__ = ["score_chunk", "score_frame", "score_table", "train"]


def score_chunk(engine: ScoringEngine, chunk: pd.DataFrame) -> pd.DataFrame:
    """Scores of one chunk of customers, the id column (as text) first when the chunk has one.

    The one function both engines apply to customer rows (the Dask engine per partition), so
    batch scoring cannot differ between them.
    """
    scored = score_frame(engine, chunk)
    id_column = engine.bundle.schema.id_column
    if id_column in chunk.columns:
        scored.insert(0, id_column, ids_as_text(chunk[id_column]).to_numpy())
    return scored


def score_frame(engine: ScoringEngine, frame: pd.DataFrame) -> pd.DataFrame:
    """Segment and campaign scores of the customers in ``frame`` (one batch).

    Everything comes from the scoring core's ranking (``ScoringEngine.rank``), the same call
    ``/recommend`` makes: ``best_campaign`` is the first campaign ``/recommend`` returns.
    """
    batch = engine.batch_from_frame(frame)
    ranking = engine.rank(batch) if engine.has_response_model else None
    a = engine.assign(batch) if ranking is None else ranking.assignment
    out = {
        "segment_id": a.segment.astype(np.int64),
        "segment_name": np.asarray(engine.segment_names, dtype=object)[a.segment],
        "distance": a.distance,
        "atypical": a.atypical,
    }
    if ranking is not None:
        best = ranking.order[:, 0]
        has_any = ranking.counts > 0
        ids = np.array(engine.campaign_ids, dtype=object)
        best_ev = ranking.expected_value[np.arange(len(best)), best]
        out["best_campaign"] = np.where(has_any, ids[best], None)
        out["best_expected_value"] = np.where(has_any, best_ev, np.nan)
        for j, cid in enumerate(engine.campaign_ids):
            out[f"p_{cid}"] = ranking.probability[:, j]
        if ranking.weight is not None:
            # [clv] weight_gains: the gain /recommend ranked by, and the weight it used
            best_gain = ranking.gain[np.arange(len(best)), best]
            out["best_expected_gain"] = np.where(has_any, best_gain, np.nan)
            out["gain_weight"] = ranking.weight
    if a.rfm is not None:
        # the bundle's RFM rule (scoring/rfm.py): the scores and group /predict-segment gives
        for c, role in enumerate(ROLES):
            out[f"rfm_{role}"] = a.rfm[:, c]
        out["rfm_group"] = np.asarray(GROUPS, dtype=object)[RFMRule.groups(a.rfm)]
    clv_model = model_from_manifest(engine.bundle.manifest)
    if clv_model is not None and all(c in frame.columns for c in CLV_FEATURES):
        values = customer_value(
            clv_model, *(pd.to_numeric(frame[c]).to_numpy(np.float64) for c in CLV_FEATURES)
        )
        for name in ("clv", "p_alive", "expected_purchases"):
            out[name] = values[name]
    return pd.DataFrame(out)


def score_table(bundle: Bundle, frame: pd.DataFrame, batch_size: int) -> pd.DataFrame:
    """Score a customer table held in memory, ``batch_size`` rows at a time."""
    engine = ScoringEngine(bundle)
    parts = []
    for start in range(0, len(frame), batch_size):
        parts.append(score_chunk(engine, frame.iloc[start : start + batch_size]))
        log.info("scored %d of %d customers", min(start + batch_size, len(frame)), len(frame))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
