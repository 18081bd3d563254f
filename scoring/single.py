"""Scoring one customer in plain Python: the path a single-customer request takes.

The vectorised engine pays numpy's per-call overhead (a microsecond or more per operation, some
twenty operations) whatever the batch size; for one customer that overhead is most of the work.
This path does the same arithmetic on Python floats over tables prepared once from the engine:
imputation, ratio features, log1p, the fused scaler+PCA map, nearest centroid, and one
LightGBM single-row call per eligible campaign. Tests hold it to the batch path: the same
segments and rankings, probabilities equal to 1e-12.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from scoring.engine import ScoringEngine


class SingleCustomerScorer:
    """Plain-Python scorer for one customer, sharing the engine's load-time tables."""

    def __init__(self, engine: ScoringEngine) -> None:
        self.engine = engine
        schema = engine.schema
        self._inputs = list(zip(schema.input_names, engine._medians.tolist(), strict=True))
        self._derived = list(engine._derived)
        self._cluster_idx = engine._cluster_idx.tolist()
        self._log_idx = engine._log_idx.tolist()
        self._w = engine._w.tolist()
        self._b = engine._b.tolist()
        self._centers = engine._centers.tolist()
        self._thresholds = engine._thresholds.tolist()
        self._response_idx = engine._response_idx.tolist()
        self._categoricals = [
            (c.name, {v: float(i) for i, v in enumerate(c.categories)}) for c in schema.categoricals
        ]
        self._eligible = [row.tolist() for row in engine._eligible]
        self._values = engine._values.tolist()

    # ---- features and segment ----------------------------------------------------------
    def numeric(self, record: Mapping[str, Any]) -> list[float]:
        """Imputed inputs followed by derived features, as the batch path computes them."""
        vals = []
        for name, median in self._inputs:
            v = record.get(name)
            vals.append(median if v is None or v != v else float(v))
        for num, den, fill in self._derived:
            d = vals[den]
            vals.append(vals[num] / d if d > 0 else fill)
        return vals

    def assign(self, vals: list[float]) -> tuple[int, float, bool]:
        """(segment, distance to its centroid, atypical) for one customer."""
        c = [vals[i] for i in self._cluster_idx]
        for i in self._log_idx:
            c[i] = math.log1p(max(c[i], 0.0))
        p = list(self._b)
        for ci, row in zip(c, self._w, strict=True):
            for k, w in enumerate(row):
                p[k] += ci * w
        best, best_d2 = 0, math.inf
        for s, center in enumerate(self._centers):
            d2 = 0.0
            for pk, ck in zip(p, center, strict=True):
                d2 += (pk - ck) * (pk - ck)
            if d2 < best_d2:
                best, best_d2 = s, d2
        distance = math.sqrt(best_d2)
        return best, distance, distance > self._thresholds[best]

    def predict_segment(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """The batch path's ``predict_segment`` answer for one customer."""
        s, distance, atypical = self.assign(self.numeric(record))
        return self.engine._segment_result(s, distance, atypical)

    # ---- campaigns ---------------------------------------------------------------------
    def recommend(
        self,
        record: Mapping[str, Any],
        *,
        top_k: int | None = None,
        channel: str | None = None,
        exclude: Collection[str] = (),
    ) -> dict[str, Any]:
        """The batch path's ``recommend`` answer (without ``explain``) for one customer."""
        engine = self.engine
        vals = self.numeric(record)
        s, distance, atypical = self.assign(vals)
        eligible = self._eligible[s]
        camps = engine.campaigns
        chosen = [
            j
            for j, ok in enumerate(eligible)
            if ok
            and (channel is None or camps[j].channel in (channel, "any"))
            and camps[j].id not in exclude
        ]
        base = [vals[i] for i in self._response_idx]
        for name, lookup in self._categoricals:
            v = record.get(name)
            base.append(math.nan if v is None else lookup.get(str(v), math.nan))
        base.append(float(s))
        probs = engine._model.predict_rows([[*base, float(j)] for j in chosen])
        scored = sorted(
            ((p * self._values[j], p, j) for p, j in zip(probs, chosen, strict=True)),
            key=lambda t: -t[0],
        )  # stable: ties keep campaign order, as the batch path's stable argsort does
        if top_k is not None:
            scored = scored[:top_k]
        items = engine._items[channel is not None][s]
        ranked = [{**items[j], "probability": p, "expected_value": ev} for ev, p, j in scored]
        res = engine._segment_result(s, distance, atypical)
        res["campaigns"] = ranked
        return res
