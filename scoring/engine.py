"""The scoring engine: features -> segment -> ranked campaigns, vectorised, no framework.

Everything that can be computed once is computed when the engine is built from a bundle:
the scaler and PCA are fused into one affine map, centroid norms are cached, eligibility of
every (segment, campaign) pair is a boolean matrix with the rule that made it eligible. A call
then does a handful of numpy operations and at most one LightGBM ``predict``, whether it scores
one customer or a million. ``scoring.reference`` holds the plain scikit-learn path that this
engine is tested against.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from scoring.bundle import Bundle
from scoring.features import encode_categoricals, frame_to_raw
from scoring.propensity import PropensityModel
from scoring.single import SingleCustomerScorer

#: how many feature contributions ``explain`` returns per campaign
EXPLAIN_TOP = 3


class ScoringError(Exception):
    """Base of the errors the scoring core raises for a request it cannot answer."""


class NoResponseModelError(ScoringError):
    """Campaign ranking was asked of a bundle trained without a response history."""


@dataclass(frozen=True)
class CustomerBatch:
    """Customers in model order: imputed numeric inputs + derived features, categorical codes."""

    numeric: np.ndarray
    codes: np.ndarray

    def __len__(self) -> int:
        return self.numeric.shape[0]


@dataclass(frozen=True)
class Assignment:
    """Segment of each customer, distance to its centroid (PCA space) and the atypical flag."""

    segment: np.ndarray
    distance: np.ndarray
    atypical: np.ndarray


class ScoringEngine:
    """Scores customers against one loaded, verified bundle."""

    def __init__(self, bundle: Bundle, *, threads: int = 1) -> None:
        self.bundle = bundle
        self.version = bundle.version
        self.schema = schema = bundle.schema
        self.segment_names = list(bundle.segment_names)
        self.campaigns = list(bundle.campaigns)
        self.campaign_ids = [c.id for c in self.campaigns]
        self.channels = {c.channel for c in self.campaigns}
        self.has_response_model = bundle.response_model is not None
        self._model = (
            PropensityModel(bundle.response_model, threads=threads)
            if self.has_response_model
            else None
        )

        self._input_names = schema.input_names
        self._cat_names = schema.categorical_names
        # Imputation values come from the fitted imputer: it is the object training used.
        self._medians = np.asarray(bundle.imputer.statistics_, dtype=np.float64)
        self._cluster_idx = schema.cluster_index()
        self._log_mask = schema.log_mask()
        self._any_log = bool(self._log_mask.any())
        self._log_idx = np.flatnonzero(self._log_mask)
        self._n_numeric = len(schema.numeric_names)
        self._derived = [
            (self._input_names.index(d.numerator), self._input_names.index(d.denominator), d.fill)
            for d in schema.derived
        ]
        # scaler then PCA is affine: p = (c - mu) / sigma @ V.T - m @ V.T == c @ W + b
        scale = np.asarray(bundle.scaler.scale_, dtype=np.float64)
        mean = np.asarray(bundle.scaler.mean_, dtype=np.float64)
        comps = np.asarray(bundle.pca.components_, dtype=np.float64)
        pca_mean = np.asarray(bundle.pca.mean_, dtype=np.float64)
        self._w = comps.T / scale[:, None]
        self._b = -(mean / scale) @ comps.T - pca_mean @ comps.T
        self._centers = np.asarray(bundle.kmeans.cluster_centers_, dtype=np.float64)
        self._center_sq = (self._centers**2).sum(axis=1)
        self._thresholds = np.array(
            [float(p.get("outlier_threshold", np.inf)) for p in bundle.profiles], dtype=np.float64
        )
        self._defaults = [list(p.get("default_campaigns", [])) for p in bundle.profiles]

        self._response_idx = schema.response_index()
        self._n_model_cols = len(schema.response_model_columns)
        self._values = np.array([c.value for c in self.campaigns], dtype=np.float64)
        self._eligible, self._rules = self._eligibility()
        self._campaign_index = {c.id: j for j, c in enumerate(self.campaigns)}
        self._model_columns = schema.response_model_columns
        self._items = self._static_items()
        self._single = SingleCustomerScorer(self)

    # ---- load-time tables -----------------------------------------------------------------
    def _eligibility(self) -> tuple[np.ndarray, list[list[str]]]:
        """(k, m) mask of which campaign may go to which segment, and the rule text for each."""
        k, m = len(self.segment_names), len(self.campaigns)
        mask = np.zeros((k, m), dtype=bool)
        rules = [[""] * m for _ in range(k)]
        for j, camp in enumerate(self.campaigns):
            allowed = camp.eligible_segments
            for s, name in enumerate(self.segment_names):
                if allowed is None:
                    mask[s, j] = True
                    rules[s][j] = "open to all segments"
                elif name in allowed or str(s) in {str(a) for a in allowed}:
                    mask[s, j] = True
                    rules[s][j] = f"segment '{name}' is eligible"
        return mask, rules

    def _static_items(self) -> dict[bool, list[list[dict[str, Any]]]]:
        """The fixed part of every answer item, per (segment, campaign), built once.

        Keyed by whether a channel was asked for (the rule text then names the channel). An
        answer item is this dict plus probability and expected value.
        """
        items: dict[bool, list[list[dict[str, Any]]]] = {}
        for with_channel in (False, True):
            items[with_channel] = [
                [
                    {
                        "campaign_id": camp.id,
                        "name": camp.name,
                        "channel": camp.channel,
                        "value": camp.value,
                        "eligibility": f"{rule}; channel '{camp.channel}'"
                        if with_channel
                        else rule,
                    }
                    for camp, rule in zip(self.campaigns, rules, strict=True)
                ]
                for rules in self._rules
            ]
        return items

    # ---- building batches -----------------------------------------------------------------
    def _batch(self, raw: np.ndarray, codes: np.ndarray) -> CustomerBatch:
        # One allocation for inputs and derived features: this runs on every request, and a
        # request is a single row, so the count of numpy calls matters more than their size.
        n, n_in = raw.shape
        numeric = np.empty((n, self._n_numeric), dtype=np.float64)
        numeric[:, :n_in] = raw
        nan = np.isnan(raw)
        if nan.any():
            np.copyto(numeric[:, :n_in], self._medians, where=nan)
        for j, (num, den, fill) in enumerate(self._derived, start=n_in):
            col = numeric[:, j]
            col.fill(fill)
            np.divide(numeric[:, num], numeric[:, den], out=col, where=numeric[:, den] > 0)
        return CustomerBatch(numeric=numeric, codes=codes)

    def batch_from_records(self, records: Sequence[Mapping[str, Any]]) -> CustomerBatch:
        """Validated records (dicts keyed by feature name; optional ones None/absent) -> batch."""
        names = self._input_names
        raw = np.array(
            [[r.get(name) for name in names] for r in records], dtype=np.float64
        ).reshape(len(records), len(names))
        if self._cat_names:
            codes = encode_categoricals(
                [[r.get(name) for name in self._cat_names] for r in records], self.schema
            )
        else:
            codes = np.empty((len(records), 0), dtype=np.float64)
        return self._batch(raw, codes)

    def batch_from_frame(self, frame: Any) -> CustomerBatch:
        """A pandas frame with the schema's columns (extra columns ignored) -> batch."""
        raw, codes = frame_to_raw(frame, self.schema)
        return self._batch(raw, codes)

    # ---- segments -------------------------------------------------------------------------
    def project(self, batch: CustomerBatch) -> np.ndarray:
        """Customers in PCA space (scaled, log-transformed cluster features)."""
        c = batch.numeric[:, self._cluster_idx]  # fancy indexing: already a copy
        if self._any_log:
            # clip: a negative value of an auto-logged "numeric" feature must not become NaN
            c[:, self._log_idx] = np.log1p(np.maximum(c[:, self._log_idx], 0.0))
        return c @ self._w + self._b

    def assign(self, batch: CustomerBatch) -> Assignment:
        """Nearest centroid of each customer, its distance, and whether it is atypical."""
        p = self.project(batch)
        d2 = self._center_sq - 2.0 * (p @ self._centers.T)
        segment = np.argmin(d2, axis=1)
        diff = p - self._centers[segment]
        distance = np.sqrt(np.einsum("ij,ij->i", diff, diff))
        return Assignment(segment, distance, distance > self._thresholds[segment])

    def predict_segment(self, batch: CustomerBatch) -> list[dict[str, Any]]:
        """Segment answer per customer, with the segment's default campaigns."""
        a = self.assign(batch)
        return [
            self._segment_result(s, d, at)
            for s, d, at in zip(
                a.segment.tolist(), a.distance.tolist(), a.atypical.tolist(), strict=True
            )
        ]

    def _segment_result(self, s: int, distance: float, atypical: bool) -> dict[str, Any]:
        return {
            "segment_id": s,
            "segment_name": self.segment_names[s],
            "distance": distance,
            "atypical": atypical,
            "recommended_campaigns": self._defaults[s],
        }

    def predict_segment_one(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """``predict_segment`` for one validated record, on the plain-Python request path."""
        return self._single.predict_segment(record)

    def recommend_one(
        self,
        record: Mapping[str, Any],
        *,
        top_k: int | None = None,
        channel: str | None = None,
        exclude: Collection[str] = (),
        explain: bool = False,
    ) -> dict[str, Any]:
        """``recommend`` for one validated record (explain goes through the batch path)."""
        if not self.has_response_model:
            raise NoResponseModelError("this bundle has no response model (no response history)")
        if explain:
            batch = self.batch_from_records([record])
            return self.recommend(
                batch, top_k=top_k, channel=channel, exclude=exclude, explain=True
            )[0]
        return self._single.recommend(record, top_k=top_k, channel=channel, exclude=exclude)

    def profile(self, segment_id: int) -> dict[str, Any]:
        """The training-time profile of a segment."""
        return self.bundle.profiles[segment_id]

    # ---- campaigns ------------------------------------------------------------------------
    def model_rows(
        self, batch: CustomerBatch, segment: np.ndarray, customer: np.ndarray, campaign: np.ndarray
    ) -> np.ndarray:
        """Response-model input rows for the (customer, campaign) pairs given by index arrays."""
        rows = np.empty((customer.shape[0], self._n_model_cols), dtype=np.float64)
        nr = self._response_idx.shape[0]
        nc = batch.codes.shape[1]
        rows[:, :nr] = batch.numeric[customer][:, self._response_idx]
        if nc:
            rows[:, nr : nr + nc] = batch.codes[customer]
        rows[:, nr + nc] = segment[customer]
        rows[:, nr + nc + 1] = campaign
        return rows

    def propensities(
        self, batch: CustomerBatch, segment: np.ndarray, mask: np.ndarray | None = None
    ) -> np.ndarray:
        """(n, m) response probabilities; NaN where ``mask`` (n, m) is False (not scored)."""
        if not self.has_response_model:
            raise NoResponseModelError("this bundle has no response model (no response history)")
        n, m = len(batch), len(self.campaigns)
        if mask is None:
            mask = np.ones((n, m), dtype=bool)
        customer, campaign = np.nonzero(mask)
        out = np.full((n, m), np.nan, dtype=np.float64)
        out[customer, campaign] = self._model.predict(
            self.model_rows(batch, segment, customer, campaign)
        )
        return out

    def eligibility_mask(
        self, segment: np.ndarray, channel: str | None = None, exclude: Collection[str] = ()
    ) -> np.ndarray:
        """(n, m): campaigns each customer may receive given its segment, channel and exclusions."""
        mask = self._eligible[segment]
        if channel is not None or exclude:
            keep = np.ones(len(self.campaigns), dtype=bool)
            if channel is not None:
                keep &= np.array([c.channel in (channel, "any") for c in self.campaigns])
            for cid in exclude:
                j = self._campaign_index.get(cid)
                if j is not None:
                    keep[j] = False
            mask = mask & keep
        return mask

    def recommend(
        self,
        batch: CustomerBatch,
        *,
        top_k: int | None = None,
        channel: str | None = None,
        exclude: Collection[str] = (),
        explain: bool = False,
    ) -> list[dict[str, Any]]:
        """Segment plus eligible campaigns ranked by expected value (probability x value)."""
        if not self.has_response_model:
            raise NoResponseModelError("this bundle has no response model (no response history)")
        a = self.assign(batch)
        mask = self.eligibility_mask(a.segment, channel, exclude)
        prob = self.propensities(batch, a.segment, mask)
        ev = prob * self._values
        # Rank by expected value, descending; ineligible pairs (NaN) sort last and are cut.
        order = np.argsort(np.where(mask, -ev, np.inf), axis=1, kind="stable")
        counts = mask.sum(axis=1)
        limit = len(self.campaigns) if top_k is None else top_k
        contrib = self._contributions(batch, a.segment, order, counts, limit) if explain else None
        # Plain Python lists from here on: indexing numpy scalars one by one costs more than
        # the whole ranking for a 1,000-customer batch.
        prob_l, ev_l, order_l = prob.tolist(), ev.tolist(), order.tolist()
        counts_l = np.minimum(counts, limit).tolist()
        segment_l, distance_l, atypical_l = (
            a.segment.tolist(),
            a.distance.tolist(),
            a.atypical.tolist(),
        )
        static = self._items[channel is not None]
        results = []
        for i in range(len(batch)):
            s = segment_l[i]
            items, p_i, ev_i = static[s], prob_l[i], ev_l[i]
            ranked = [
                {**items[j], "probability": p_i[j], "expected_value": ev_i[j]}
                for j in order_l[i][: counts_l[i]]
            ]
            if contrib is not None:
                for r, item in enumerate(ranked):
                    item["contributions"] = contrib[i][r]
            res = self._segment_result(s, distance_l[i], atypical_l[i])
            res["campaigns"] = ranked
            results.append(res)
        return results

    def _contributions(
        self,
        batch: CustomerBatch,
        segment: np.ndarray,
        order: np.ndarray,
        counts: np.ndarray,
        limit: int,
    ) -> list[list[list[dict[str, Any]]]]:
        """Top LightGBM feature contributions (log-odds) of each returned campaign."""
        pairs = [(i, int(j)) for i in range(len(batch)) for j in order[i, : min(limit, counts[i])]]
        out: list[list[list[dict[str, Any]]]] = [[] for _ in range(len(batch))]
        if not pairs:
            return out
        customer = np.array([p[0] for p in pairs])
        campaign = np.array([p[1] for p in pairs])
        values = self._model.contributions(self.model_rows(batch, segment, customer, campaign))
        top = np.argsort(-np.abs(values), axis=1)[:, :EXPLAIN_TOP]
        for row, (i, _) in enumerate(pairs):
            out[i].append(
                [
                    {"feature": self._model_columns[f], "contribution": float(values[row, f])}
                    for f in top[row]
                ]
            )
        return out
