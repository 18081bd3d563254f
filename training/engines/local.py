"""The single-process engine: the whole table in one process (today's ``training.pipeline``)."""

from __future__ import annotations

import logging

import pandas as pd

from scoring.bundle import Bundle
from scoring.engine import ScoringEngine
from scoring.ids import ids_as_text
from training.pipeline import train

log = logging.getLogger("training")

__all__ = ["score_chunk", "score_table", "train"]


def score_chunk(engine: ScoringEngine, chunk: pd.DataFrame) -> pd.DataFrame:
    """Scores of one chunk of customers, the id column (as text) first when the chunk has one.

    The one function both engines apply to customer rows (the Dask engine per partition), so
    batch scoring cannot differ between them.
    """
    from training.cli import score_frame

    scored = score_frame(engine, chunk)
    id_column = engine.bundle.schema.id_column
    if id_column in chunk.columns:
        scored.insert(0, id_column, ids_as_text(chunk[id_column]).to_numpy())
    return scored


def score_table(bundle: Bundle, frame: pd.DataFrame, batch_size: int) -> pd.DataFrame:
    """Score a customer table held in memory, ``batch_size`` rows at a time."""
    engine = ScoringEngine(bundle)
    parts = []
    for start in range(0, len(frame), batch_size):
        parts.append(score_chunk(engine, frame.iloc[start : start + batch_size]))
        log.info("scored %d of %d customers", min(start + batch_size, len(frame)), len(frame))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
