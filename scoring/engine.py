"""The scoring engine: features -> segment -> ranked campaigns, vectorised, no framework.

Everything that can be computed once is computed when the engine is built from a bundle, in
the frozen :class:`scoring.tables.ScoringTables` (the scaler and PCA fused into one affine map,
eligibility of every (segment, campaign) pair as a boolean matrix with the rule that made it
eligible, ...); the campaign rules themselves live in :mod:`scoring.campaigns`. A call then does
a few dozen numpy operations and at most one LightGBM ``predict``, whether it scores one
customer or a million. ``scoring.reference`` holds the plain scikit-learn path that this engine
is tested against; :mod:`scoring.single` the plain-Python path of a one-customer request.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from scoring import attribution_walk
from scoring.attribution import METHODS as EXPLAIN_METHODS
from scoring.bundle import Bundle
from scoring.campaigns import condition_columns, rank
from scoring.features import (
    encode_categoricals,
    encode_columns,
    frame_to_raw,
    log1p_clipped,
)
from scoring.policy import (
    NO_ELIGIBLE,
    NO_ID_NOTE,
    NO_OFFER_REQUESTED,
    NO_POSITIVE_GAIN,
    choose,
    control_group_rule,
    expected_gain,
)
from scoring.propensity import PropensityModel, walk_order
from scoring.single import SingleCustomerScorer
from scoring.tables import ScoringTables

#: how many feature contributions ``explain`` returns per campaign
EXPLAIN_TOP = 3
#: customers per block in the vectorised stages: a block's intermediate arrays and model rows
#: (block x campaigns x model columns doubles) fit in the CPU's cache
BLOCK = 2048
#: a customer's walk for every campaign at once (compiled trees' ``forest_campaigns``) costs
#: about as much as this many of its pairs walked one by one, so a sparser mask walks pairs
WALK_PAIRS = 2


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
    #: (n, k) membership probabilities when the bundle serves the Gaussian mixture, else None
    membership: np.ndarray | None = None
    #: (n, 3) R, F, M scores when the bundle has an RFM rule, else None
    rfm: np.ndarray | None = None

    def memberships(self) -> list[list[float] | None]:
        """Each customer's membership list for the answer (None when K-Means serves)."""
        if self.membership is None:
            return [None] * self.segment.shape[0]
        return self.membership.tolist()

    def rfm_scores(self) -> list[list[int] | None]:
        """Each customer's (R, F, M) for the answer (None without an RFM rule)."""
        if self.rfm is None:
            return [None] * self.segment.shape[0]
        return self.rfm.tolist()


@dataclass(frozen=True)
class Ranking:
    """Campaign scores of a batch: (n, m) arrays, and ``order[i, :counts[i]]`` best first."""

    assignment: Assignment
    #: may customer i receive campaign j (segment, channel, exclusions)
    mask: np.ndarray
    #: response probability; NaN where not eligible (not scored)
    probability: np.ndarray
    #: probability x campaign value; NaN where not eligible
    expected_value: np.ndarray
    #: expected gain (scoring.policy.expected_gain); NaN where not eligible
    gain: np.ndarray
    #: (n,) lifetime value and (n,) weight of each customer's offer values when the bundle
    #: weights gains by CLV (``scoring.clv.GainWeight``), else None
    clv: np.ndarray | None
    weight: np.ndarray | None
    #: uplift bundles: probability without the campaign (else None)
    probability_without: np.ndarray | None
    #: ``order[i, :counts[i]]``: customer i's campaigns with a positive gain, best first
    order: np.ndarray
    counts: np.ndarray


@dataclass(frozen=True)
class Choice:
    """What each customer of a ranked batch is offered (:func:`scoring.policy.choose`)."""

    #: every offer, customer after customer, best first: the customer's index in the batch ...
    customer: np.ndarray
    #: ... and the campaign's pool position
    campaign: np.ndarray
    #: (n,) offers per customer
    counts: np.ndarray
    #: per customer: pool positions of the campaigns it is held out of (control groups)
    held: list[list[int]]
    #: per customer: why nothing is offered (None when something is)
    reasons: list[str | None]
    #: the customers held out of a campaign or given a reason, ascending (answers write their
    #: ends apart; most batches have few)
    special: np.ndarray


class ScoringEngine:
    """Scores customers against one loaded, verified bundle."""

    def __init__(
        self,
        bundle: Bundle,
        *,
        threads: int = 1,
        clock: Callable[[], float] = time.time,
        explain_method: str = "path",
    ) -> None:
        if explain_method not in EXPLAIN_METHODS:
            raise ValueError(
                f"explain_method={explain_method!r} should be one of {EXPLAIN_METHODS}"
            )
        self.bundle = bundle
        self.version = bundle.version
        self.schema = bundle.schema
        #: the frozen load-time tables this engine and the single-customer path read
        self.tables = tables = ScoringTables.of(bundle)
        self.segment_names = list(tables.segment_names)
        self.campaigns = list(tables.campaigns)
        self.campaign_ids = [c.id for c in self.campaigns]
        self.channels = set(tables.channels) | {
            ch for c in self.campaigns for ch in (c.channels or ())
        }
        self.has_response_model = bundle.response_model is not None
        #: model columns of the customer features (what a batch's walk order may follow)
        order_slots = range(tables.layout.width)[tables.layout.numeric_slots]
        #: the response model (None for a segmentation-only bundle)
        self.model = (
            PropensityModel(
                bundle.response_model,
                threads=threads,
                compiled=bundle.compiled_forest,
                order_slots=order_slots,
            )
            if self.has_response_model
            else None
        )
        #: how ``explain`` computes contributions (scoring.attribution): "path" or "treeshap"
        self.explain_method = explain_method
        if self.model is not None and explain_method == "path":
            self.model.prepare_explain()
        #: an uplift bundle also predicts the response without the campaign
        self.has_uplift_model = self.has_response_model and bundle.control_model is not None
        self._control = (
            PropensityModel(
                bundle.control_model,
                threads=threads,
                compiled=bundle.compiled_control_forest,
                order_slots=order_slots,
            )
            if self.has_uplift_model
            else None
        )
        #: seconds since the epoch; decides which campaigns are within their dates (UTC)
        self.clock = clock
        self._day = dt.date.min
        self._day_from = self._day_to = math.inf
        self.ranking = tables.ranking
        self._control_rules = {
            c.id: control_group_rule(share, tables.pool.holdout_share)
            for c, share in zip(self.campaigns, tables.holdout_shares, strict=True)
        }
        #: id(a table item's rules) -> (those rules, the same + the control-group rule): built
        #: once per shared list, not per answer (the original is kept, so an id is never reused)
        self._with_control: dict[int, tuple[list[str], list[str]]] = {}
        self._single = SingleCustomerScorer(tables, self.model, self._control, self.today)

    def today(self) -> dt.date:
        """The UTC date by :attr:`clock` (campaign start/end dates are UTC days)."""
        now = self.clock()
        # the day's date is kept with the seconds it covers, so a request asks the clock only
        # (a UTC day is 86,400 s of POSIX time); a millisecond from either end, or a clock
        # that went back, takes datetime's own rounding as before
        if self._day_from <= now < self._day_to:
            return self._day
        day = dt.datetime.fromtimestamp(now, dt.UTC).date()
        start = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()
        self._day, self._day_from, self._day_to = day, start + 0.001, start + 86_399.999
        return day

    # ---- building batches -----------------------------------------------------------------
    def _batch(self, raw: np.ndarray, codes: np.ndarray) -> CustomerBatch:
        # One allocation for inputs and derived features: this runs on every request, and a
        # request is a single row, so the count of numpy calls matters more than their size.
        t = self.tables
        n, n_in = raw.shape
        numeric = np.empty((n, t.n_numeric), dtype=np.float64)
        numeric[:, :n_in] = raw
        nan = np.isnan(raw)
        if nan.any():
            np.copyto(numeric[:, :n_in], t.medians, where=nan)
        for j, (num, den, fill) in enumerate(t.derived, start=n_in):
            col = numeric[:, j]
            col.fill(fill)
            np.divide(numeric[:, num], numeric[:, den], out=col, where=numeric[:, den] > 0)
        return CustomerBatch(numeric=numeric, codes=codes)

    def batch_from_records(self, records: Sequence[Mapping[str, Any]]) -> CustomerBatch:
        """Validated records (dicts keyed by feature name; optional ones None/absent) -> batch."""
        names = self.tables.input_names
        raw = np.array(
            [[r.get(name) for name in names] for r in records], dtype=np.float64
        ).reshape(len(records), len(names))
        cat_names = self.tables.categorical_names
        if cat_names:
            codes = encode_categoricals(
                [[r.get(name) for name in cat_names] for r in records], self.schema
            )
        else:
            codes = np.empty((len(records), 0), dtype=np.float64)
        return self._batch(raw, codes)

    def batch_from_columns(
        self, raw: np.ndarray, categoricals: Sequence[Sequence[Any]]
    ) -> CustomerBatch:
        """Validated columns -> batch: ``raw`` (n, inputs) float64 with NaN where an optional
        input is missing, ``categoricals`` one sequence of values (None: missing) per
        categorical input. The same batch as :meth:`batch_from_records` of the same records."""
        return self._batch(raw, encode_columns(categoricals, self.schema, raw.shape[0]))

    def batch_from_frame(self, frame: Any) -> CustomerBatch:
        """A pandas frame with the schema's columns (extra columns ignored) -> batch."""
        raw, codes = frame_to_raw(frame, self.schema)
        return self._batch(raw, codes)

    # ---- segments -------------------------------------------------------------------------
    def project(self, batch: CustomerBatch) -> np.ndarray:
        """Customers in PCA space (scaled, log-transformed cluster features).

        The sums run feature by feature in the order :mod:`scoring.single` adds them, with
        elementwise operations only (no BLAS, whose summation order is its own), so a customer
        gets the same bits alone or in a batch.
        """
        return self._project(batch.numeric)

    def _project(self, numeric: np.ndarray) -> np.ndarray:
        t = self.tables
        c = numeric[:, t.cluster_index]  # fancy indexing: already a copy
        if t.log_index.size:
            # clip: a negative value of an auto-logged "numeric" feature must not become NaN
            c[:, t.log_index] = log1p_clipped(c[:, t.log_index])
        p = np.tile(t.b, (c.shape[0], 1))
        term = np.empty_like(p)
        for i in range(c.shape[1]):
            # product rounded, then added: the single path's ``p[k] += ci * w`` (no fused op)
            np.multiply(c[:, i, None], t.w[i], out=term)
            p += term
        return p

    def assign(self, batch: CustomerBatch) -> Assignment:
        """Nearest centroid of each customer, its distance, and whether it is atypical.

        A bundle serving the Gaussian mixture assigns the most probable component instead
        (:class:`scoring.mixture.MixtureRule`) and keeps every membership probability; the
        distance is then to that component's mean.

        Customers go through in blocks of :data:`BLOCK`, so the intermediate arrays stay in the
        CPU cache (a million customers at once spent most of their time in memory traffic).
        """
        numeric = batch.numeric
        n = numeric.shape[0]
        if n <= BLOCK:
            return self._assign(numeric)
        parts = [self._assign(numeric[s : s + BLOCK]) for s in range(0, n, BLOCK)]
        membership = rfm = None
        if parts[0].membership is not None:
            membership = np.concatenate([a.membership for a in parts])
        if parts[0].rfm is not None:
            rfm = np.concatenate([a.rfm for a in parts])
        return Assignment(
            np.concatenate([a.segment for a in parts]),
            np.concatenate([a.distance for a in parts]),
            np.concatenate([a.atypical for a in parts]),
            membership,
            rfm,
        )

    def _assign(self, numeric: np.ndarray) -> Assignment:
        t = self.tables
        p = self._project(numeric)
        scores = None if t.rfm is None else t.rfm.scores(numeric)
        if t.rfm is not None and t.rfm.segments:
            # the RFM groups are the segments (scoring.rfm); distance to the group's centre
            segment = t.rfm.groups(scores)
            d2 = np.zeros(p.shape[0], dtype=np.float64)
            for k in range(p.shape[1]):
                diff = p[:, k] - t.centers[segment, k]
                d2 += diff * diff
            distance = np.sqrt(d2)
            return Assignment(segment, distance, distance > t.thresholds[segment], None, scores)
        if t.mixture is not None:
            segment, membership = t.mixture.segments(p)
            d2 = np.zeros(p.shape[0], dtype=np.float64)
            for k in range(p.shape[1]):
                diff = p[:, k] - t.centers[segment, k]
                d2 += diff * diff
            distance = np.sqrt(d2)
            return Assignment(
                segment, distance, distance > t.thresholds[segment], membership, scores
            )
        # squared distance to every centroid, summed component by component like the
        # single-customer path; the first of equal distances wins in both
        n = p.shape[0]
        d2 = np.zeros((n, t.centers.shape[0]), dtype=np.float64)
        diff = np.empty_like(d2)
        for k in range(p.shape[1]):
            np.subtract(p[:, k, None], t.centers[:, k], out=diff)
            np.multiply(diff, diff, out=diff)
            d2 += diff
        segment = np.argmin(d2, axis=1)
        distance = np.sqrt(d2[np.arange(n), segment])
        return Assignment(segment, distance, distance > t.thresholds[segment], None, scores)

    def predict_segment(self, batch: CustomerBatch) -> list[dict[str, Any]]:
        """Segment answer per customer, with the segment's default campaigns."""
        a = self.assign(batch)
        result = self.tables.segment_result
        return [
            result(s, d, at, m, r)
            for s, d, at, m, r in zip(
                a.segment.tolist(),
                a.distance.tolist(),
                a.atypical.tolist(),
                a.memberships(),
                a.rfm_scores(),
                strict=True,
            )
        ]

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
        """``recommend`` for one validated record, on the plain-Python request path."""
        if not self.has_response_model:
            raise NoResponseModelError("this bundle has no response model (no response history)")
        res = self._single.recommend(record, top_k=top_k, channel=channel, exclude=exclude)
        held = res.pop("_held")
        if explain:
            self._explain_one(record, res)
        self._policy_fields(
            res, record.get("customer_id"), held, res.pop("_reason"), rules_stated=True
        )
        return res

    def _explain_one(self, record: Mapping[str, Any], res: dict[str, Any]) -> None:
        """Add the batch path's ``contributions`` to each offer of a single-path answer.

        The model rows are rebuilt from the record as the single path built them (same
        numbers to the bit as the batch path's rows), so both paths explain alike.
        """
        single, layout = self._single, self.tables.layout
        vals, codes = single.numeric(record), single.codes(record)
        index = self.tables.campaign_index
        s = res["segment_id"]
        rows = [layout.row(vals, codes, s, index[item["campaign_id"]]) for item in res["campaigns"]]
        if rows:
            values = self.model.contributions(np.array(rows), self.explain_method)
            for item, top in zip(res["campaigns"], self._top_contributions(values), strict=True):
                item["contributions"] = top
        res["explain_method"] = self.explain_method

    def profile(self, segment_id: int) -> dict[str, Any]:
        """The training-time profile of a segment."""
        return self.bundle.profiles[segment_id]

    # ---- campaigns ------------------------------------------------------------------------
    def model_rows(
        self, batch: CustomerBatch, segment: np.ndarray, customer: np.ndarray, campaign: np.ndarray
    ) -> np.ndarray:
        """Response-model input rows for the (customer, campaign) pairs given by index arrays."""
        return self.tables.layout.rows(batch.numeric, batch.codes, segment, customer, campaign)

    def propensities(
        self,
        batch: CustomerBatch,
        segment: np.ndarray,
        mask: np.ndarray | None = None,
        *,
        control: bool = False,
    ) -> np.ndarray:
        """(n, m) response probabilities; NaN where ``mask`` (n, m) is False (not scored).

        ``control=True`` gives the uplift bundle's probabilities of responding *without* each
        campaign (its control model, same input rows).
        """
        if self.model is None:
            raise NoResponseModelError("this bundle has no response model (no response history)")
        model = self.model
        if control:
            if not self.has_uplift_model:
                raise NoResponseModelError("this bundle has no uplift (control) model")
            model = self._control
        n, m = len(batch), len(self.campaigns)
        out = np.full((n, m), np.nan, dtype=np.float64)
        layout = self.tables.layout
        # customers in the order the model walks faster (PropensityModel.order_slot)
        order = None
        if model.order_slot is not None and n > 1:
            column = batch.numeric[:, layout.numeric_index[model.order_slot]]
            order = walk_order(segment, column)
        if model.campaigns_at_once(layout.campaign_slot, m) and (
            mask is None or mask.sum() >= WALK_PAIRS * mask.any(axis=1).sum()
        ):
            return self._campaigns_at_once(model, batch, segment, mask, order, out)
        if mask is None or mask.all():
            # every pair: rows built by broadcasting, block by block, and predicted straight
            # into the answer (no pair index arrays; the rows stay in the CPU cache)
            major = model.campaign_major
            for s in range(0, n, BLOCK):
                e = min(n, s + BLOCK)
                at = slice(s, e) if order is None else order[s:e]
                rows = layout.dense_rows(
                    batch.numeric[at], batch.codes[at], segment[at], m, campaign_major=major
                )
                p = model.predict(rows)
                out[at] = p.reshape(m, e - s).T if major else p.reshape(e - s, m)
            return out
        # pairs in the order the model walks faster (PropensityModel.campaign_major)
        if order is not None:
            campaign, position = np.nonzero(mask[order].T)
            customer = order[position]
        elif model.campaign_major:
            campaign, customer = np.nonzero(mask.T)
        else:
            customer, campaign = np.nonzero(mask)
        step = BLOCK * m
        for s in range(0, customer.shape[0], step):
            c, j = customer[s : s + step], campaign[s : s + step]
            out[c, j] = model.predict(self.model_rows(batch, segment, c, j))
        return out

    def _campaigns_at_once(
        self,
        model: PropensityModel,
        batch: CustomerBatch,
        segment: np.ndarray,
        mask: np.ndarray | None,
        order: np.ndarray | None,
        out: np.ndarray,
    ) -> np.ndarray:
        """:meth:`propensities` through the compiled trees' one walk per customer for every
        campaign (the same bits as a row per pair): one model row per customer, block by block.
        With a ``mask``, the customers with at least one pair are walked, and the pairs outside
        it left NaN."""
        layout, n = self.tables.layout, len(batch)
        customers = order
        if mask is not None and not mask.all():
            wanted = mask.any(axis=1)
            customers = (np.arange(n) if order is None else order)[
                wanted if order is None else wanted[order]
            ]
        count = n if customers is None else customers.shape[0]
        for s in range(0, count, BLOCK):
            e = min(count, s + BLOCK)
            at = slice(s, e) if customers is None else customers[s:e]
            # campaign column 0: forest_campaigns does not read it
            rows = layout.dense_rows(batch.numeric[at], batch.codes[at], segment[at], 1)
            out[at] = model.predict_campaigns(rows)
        if mask is not None:
            out[~mask] = np.nan
        return out

    def eligibility_mask(
        self, segment: np.ndarray, channel: str | None = None, exclude: Collection[str] = ()
    ) -> np.ndarray:
        """(n, m): campaigns each customer may receive given its segment, channel and exclusions."""
        t = self.tables
        mask = t.eligible[segment]
        if channel is not None or exclude:
            keep = np.array([c.reaches(channel) for c in t.campaigns], dtype=bool)
            for cid in exclude:
                j = t.campaign_index.get(cid)
                if j is not None:
                    keep[j] = False
            mask = mask & keep
        return mask

    def rule_mask(self, batch: CustomerBatch, mask: np.ndarray) -> np.ndarray:
        """``mask`` narrowed by the campaigns' dates (today) and feature conditions."""
        t = self.tables
        if not t.dated and not t.conditional:
            return mask
        mask = mask.copy()
        if t.dated:
            day = self.today()
            active = np.array([c.active_on(day) for c in t.campaigns], dtype=bool)
            mask &= active
        if t.conditional:
            columns = condition_columns(
                batch.numeric, self.schema.numeric_names, batch.codes, self.schema.categoricals
            )
            for j in t.conditional:
                mask[:, j] &= t.campaigns[j].condition_mask(columns, len(batch))
        return mask

    def rank(
        self,
        batch: CustomerBatch,
        *,
        channel: str | None = None,
        exclude: Collection[str] = (),
    ) -> Ranking:
        """Segments, probabilities, gains and the campaign order of every customer of ``batch``.

        The one ranking every caller uses (``recommend``, the batch command): campaigns that
        pass every rule (segment, channel, dates, conditions) and have a positive expected gain
        (:func:`scoring.policy.expected_gain`: uplift x value - cost with an uplift model,
        probability x value - cost without), best first, ties in pool order
        (:func:`scoring.campaigns.rank`).
        """
        if self.model is None:
            raise NoResponseModelError("this bundle has no response model (no response history)")
        t = self.tables
        a = self.assign(batch)
        mask = self.rule_mask(batch, self.eligibility_mask(a.segment, channel, exclude))
        prob = self.propensities(batch, a.segment, mask)
        ev = prob * t.values
        without = (
            self.propensities(batch, a.segment, mask, control=True)
            if self.has_uplift_model
            else None
        )
        clv = weight = None
        values = t.values
        if t.gain_weight is not None:
            # each customer's offer values scaled by its lifetime value (costs are not)
            clv, weight = t.gain_weight.values(batch.numeric)
            values = t.values[None, :] * weight[:, None]
        gain = expected_gain(prob, without, values, t.costs)
        with np.errstate(invalid="ignore"):
            offer = mask & (gain > 0.0)
        order, counts = rank(gain, offer)
        return Ranking(a, mask, prob, ev, gain, clv, weight, without, order, counts)

    def choose(
        self, r: Ranking, customer_ids: Sequence[Any] | None = None, top_k: int | None = None
    ) -> Choice:
        """The offers of a ranked batch: :func:`scoring.policy.choose` for every customer.

        Without control groups (the pool holds nobody out) nobody is held out and the offers
        are the first ``top_k`` of each ranking, taken with array operations; otherwise each
        customer goes through :func:`scoring.policy.choose`.
        """
        t = self.tables
        n, m = r.order.shape
        eligible = r.mask.sum(1)
        if not t.has_holdout:
            limit = r.counts if top_k is None else np.minimum(r.counts, top_k)
            keep = np.arange(m) < limit[:, None]
            reasons: list[str | None] = [None] * n
            empty = np.flatnonzero(limit == 0)
            for i in empty.tolist():
                reasons[i] = (
                    NO_ELIGIBLE
                    if eligible[i] == 0
                    else NO_POSITIVE_GAIN
                    if r.counts[i] == 0
                    else NO_OFFER_REQUESTED
                )
            return Choice(
                np.nonzero(keep)[0],
                r.order[keep],
                limit,
                [[] for _ in range(n)],
                reasons,
                empty,
            )
        ids = [None] * n if customer_ids is None else list(customer_ids)
        order_l, counts_l, eligible_l = r.order.tolist(), r.counts.tolist(), eligible.tolist()
        pool = t.pool
        offers_all, held_all, reasons = [], [], []
        for i in range(n):
            offers, held, reason = choose(
                ids[i],
                order_l[i][: counts_l[i]],
                eligible_l[i],
                self.campaign_ids,
                t.holdout_shares,
                pool.salt,
                pool.holdout_share,
                top_k,
            )
            offers_all.append(offers)
            held_all.append(held)
            reasons.append(reason)
        counts = np.array([len(o) for o in offers_all], dtype=np.intp)
        campaign = np.array([j for o in offers_all for j in o], dtype=np.intp)
        special = [i for i in range(n) if reasons[i] is not None or held_all[i]]
        return Choice(
            np.repeat(np.arange(n), counts),
            campaign,
            counts,
            held_all,
            reasons,
            np.array(special, dtype=np.intp),
        )

    def recommend(
        self,
        batch: CustomerBatch,
        *,
        top_k: int | None = None,
        channel: str | None = None,
        exclude: Collection[str] = (),
        explain: bool = False,
        customer_ids: Sequence[Any] | None = None,
    ) -> list[dict[str, Any]]:
        """Segment plus the campaigns worth offering, by expected gain (see :meth:`rank`).

        ``customer_ids`` (one per customer, None where absent) put customers in control groups
        (:func:`scoring.policy.choose`); a customer without an id is never held out.
        """
        t = self.tables
        r = self.rank(batch, channel=channel, exclude=exclude)
        a = r.assignment
        # Plain Python lists from here on: indexing numpy scalars one by one costs more than
        # the whole ranking for a 1,000-customer batch.
        prob_l, ev_l, gain_l = r.probability.tolist(), r.expected_value.tolist(), r.gain.tolist()
        without_l = None if r.probability_without is None else r.probability_without.tolist()
        segment_l, distance_l, atypical_l, membership_l, rfm_l = (
            a.segment.tolist(),
            a.distance.tolist(),
            a.atypical.tolist(),
            a.memberships(),
            a.rfm_scores(),
        )
        clv_l = None if r.clv is None else r.clv.tolist()
        weight_l = None if r.weight is None else r.weight.tolist()
        ids = [None] * len(batch) if customer_ids is None else list(customer_ids)
        static = t.items[channel is not None]
        segment_result = t.segment_result
        choice = self.choose(r, ids, top_k)
        flat = choice.campaign.tolist()
        chosen = []
        at = 0
        for i, k in enumerate(choice.counts.tolist()):
            chosen.append((flat[at : at + k], choice.held[i], choice.reasons[i]))
            at += k
        contrib = self._contributions(batch, a.segment, [c[0] for c in chosen]) if explain else None
        results = []
        for i, (offers, held, reason) in enumerate(chosen):
            s = segment_l[i]
            items, p_i, ev_i, g_i = static[s], prob_l[i], ev_l[i], gain_l[i]
            if without_l is None:
                ranked = [
                    {
                        **items[j],
                        "probability": p_i[j],
                        "expected_value": ev_i[j],
                        "expected_gain": g_i[j],
                    }
                    for j in offers
                ]
            else:
                w_i = without_l[i]
                ranked = [
                    {
                        **items[j],
                        "probability": p_i[j],
                        "probability_without": w_i[j],
                        "uplift": p_i[j] - w_i[j],
                        "expected_value": ev_i[j],
                        "expected_gain": g_i[j],
                    }
                    for j in offers
                ]
            if contrib is not None:
                for k, item in enumerate(ranked):
                    item["contributions"] = contrib[i][k]
            res = segment_result(s, distance_l[i], atypical_l[i], membership_l[i], rfm_l[i])
            res["campaigns"] = ranked
            if contrib is not None:
                res["explain_method"] = self.explain_method
            if clv_l is not None:
                res["gain_weight"] = "clv"
                res["customer_value"] = {"clv": clv_l[i], "weight": weight_l[i]}
            self._policy_fields(res, ids[i], held, reason)
            results.append(res)
        return results

    def _policy_fields(
        self,
        res: dict[str, Any],
        customer_id: Any,
        held: list[int],
        reason: str | None,
        *,
        rules_stated: bool = False,
    ) -> None:
        """The answer's ranking, control-group and empty-answer fields (both paths);
        ``rules_stated``: the offers' ``rules`` name their control-group rule already (the
        one-customer path takes its items from tables built with it)."""
        res["ranking"] = self.ranking
        res["held_out"] = [self.campaign_ids[j] for j in held]
        if self.tables.has_holdout:
            if customer_id is None:
                res["holdout_note"] = NO_ID_NOTE
            elif not rules_stated:
                # the offer passed its control-group draw: say so (another list: the table's
                # rules are shared by every answer, and so is the extended one; answers replace
                # an item's rules, never change them in place)
                memo = self._with_control
                for item in res["campaigns"]:
                    rule = self.control_rule(item["campaign_id"])
                    if rule is not None:
                        rules = item["rules"]
                        seen = memo.get(id(rules))
                        if seen is None or seen[0] is not rules or seen[1][-1] != rule:
                            if len(memo) > 4096:  # only the tables' lists come here: a bound
                                memo.clear()
                            seen = memo[id(rules)] = (rules, [*rules, rule])
                        item["rules"] = seen[1]
        if reason is not None:
            res["reason"] = reason

    def control_rule(self, campaign_id: str) -> str | None:
        """The control-group rule an offer of ``campaign_id`` to a customer *with an id* passed,
        as its ``rules`` state it (None: the campaign and the pool hold nobody out)."""
        return self._control_rules[campaign_id]

    def _contributions(
        self, batch: CustomerBatch, segment: np.ndarray, offers: list[list[int]]
    ) -> list[list[list[dict[str, Any]]]]:
        """Top feature contributions (log-odds, by :attr:`explain_method`) of each returned
        campaign."""
        pairs = [(i, int(j)) for i in range(len(batch)) for j in offers[i]]
        out: list[list[list[dict[str, Any]]]] = [[] for _ in range(len(batch))]
        if not pairs:
            return out
        customer = np.array([p[0] for p in pairs])
        campaign = np.array([p[1] for p in pairs])
        rows = self.model_rows(batch, segment, customer, campaign)
        values = self.model.contributions(rows, self.explain_method)
        for (i, _), top in zip(pairs, self._top_contributions(values), strict=True):
            out[i].append(top)
        return out

    def _top_contributions(self, values: np.ndarray) -> list[list[dict[str, Any]]]:
        """The EXPLAIN_TOP largest contributions by magnitude of each row of ``values``."""
        if attribution_walk.available():
            top = attribution_walk.top_k(values, EXPLAIN_TOP).tolist()
        else:
            top = np.argsort(-np.abs(values), axis=1, kind="stable")[:, :EXPLAIN_TOP].tolist()
        columns = self.tables.layout.columns
        vals = values.tolist()
        return [
            [{"feature": columns[f], "contribution": v[f]} for f in t]
            for t, v in zip(top, vals, strict=True)
        ]
