"""Scoring one customer in plain Python: the path a single-customer request takes.

The vectorised engine pays numpy's per-call overhead (a microsecond or more per operation, some
twenty operations) whatever the batch size; for one customer that overhead is most of the work.
This path does the same arithmetic on Python floats over the load-time tables
(:class:`scoring.tables.ScoringTables`): imputation, ratio features, log1p, the fused
scaler+PCA map, nearest centroid, and one LightGBM single-row call per eligible campaign.

Same operations in the same order as the batch path, so the answers are equal to the bit, not
merely close: the projection adds feature by feature, squared distances add component by
component, log1p is the same numpy function, and IEEE arithmetic on Python floats rounds as
numpy's elementwise operations do. Campaign rules and ranking come from
:mod:`scoring.campaigns`, the row layout from :class:`scoring.features.ResponseLayout`.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from scoring.campaigns import rank_one
from scoring.conditions import compile_all
from scoring.policy import choose, control_group_rule

if TYPE_CHECKING:
    from scoring.propensity import PropensityModel
    from scoring.tables import ScoringTables


class SingleCustomerScorer:
    """Plain-Python scorer for one customer over the frozen load-time tables."""

    def __init__(
        self,
        tables: ScoringTables,
        model: PropensityModel | None,
        control: PropensityModel | None = None,
        today: Callable[[], dt.date] | None = None,
    ) -> None:
        self.tables = tables
        self.model = model
        #: the uplift bundle's model of responding without the campaign (None: by response)
        self.control = control
        self.today = today or dt.date.today
        self._numeric_names = list(tables.schema.numeric_names)
        self._costs = tables.costs.tolist()
        self._campaign_ids = [c.id for c in tables.campaigns]
        self._active_day: dt.date | None = None
        self._active: list[bool] = [True] * len(tables.campaigns)
        # Python-list copies of the tables: indexing a list is several times cheaper than
        # indexing a numpy array one element at a time.
        self._inputs = list(zip(tables.input_names, tables.medians.tolist(), strict=True))
        self._derived = list(tables.derived)
        self._cluster_idx = tables.cluster_index.tolist()
        self._log_idx = tables.log_index.tolist()
        self._w = tables.w.tolist()
        self._b = tables.b.tolist()
        self._centers = tables.centers.tolist()
        self._thresholds = tables.thresholds.tolist()
        self._categoricals = [
            (c.name, {v: float(i) for i, v in enumerate(c.categories)})
            for c in tables.schema.categoricals
        ]
        self._eligible = [row.tolist() for row in tables.eligible]
        # campaigns with the same conditions share one check per request (pools often repeat a
        # condition across campaigns); each group's conditions are one generated function of
        # (numeric values, record) (scoring.conditions.compile_all)
        groups: dict[str, int] = {}
        self._condition_group: dict[int, int] = {}
        self._condition_checks: list[Callable[[Sequence[float], Mapping[str, Any]], bool]] = []
        categorical = [name for name, _ in self._categoricals]
        for j in tables.conditional:
            conds = tables.campaigns[j].parsed_conditions
            key = json.dumps([c.tree for c in conds], sort_keys=True)
            if key not in groups:
                groups[key] = len(self._condition_checks)
                self._condition_checks.append(compile_all(conds, self._numeric_names, categorical))
            self._condition_group[j] = groups[key]
        #: per segment, the campaigns its rules allow (before dates, channel and exclusions)
        self._allowed = [[j for j, ok in enumerate(row) if ok] for row in self._eligible]
        #: per segment, the allowed campaigns within their dates on ``_active_day`` (the answer
        #: of the date and channel filter for a request with no channel and no exclusions) and
        #: the condition groups they ask, in first-use order: one attribute, so a reader never
        #: pairs one day's campaigns with another's groups
        self._open = self._opened(self._allowed)
        self._values = tables.values.tolist()
        #: the answer items of an offer to a customer with an id: with the control-group rule
        #: it passed already in ``rules`` (the engine adds it per answer on the batch path)
        self._items_with_id = tables.items
        if tables.has_holdout:
            ctl = [control_group_rule(h, tables.pool.holdout_share) for h in tables.holdout_shares]
            self._items_with_id = {
                with_channel: tuple(
                    tuple(
                        item if rule is None else {**item, "rules": [*item["rules"], rule]}
                        for item, rule in zip(row, ctl, strict=True)
                    )
                    for row in table
                )
                for with_channel, table in tables.items.items()
            }
        self._project = _projection(self._b, self._w)
        self._nearest = _nearest_centre(self._centers)

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

    def codes(self, record: Mapping[str, Any]) -> list[float]:
        """Categorical codes (NaN for missing or unknown), as the batch path computes them."""
        out = []
        for name, lookup in self._categoricals:
            v = record.get(name)
            out.append(math.nan if v is None else lookup.get(str(v), math.nan))
        return out

    def assign(
        self, vals: list[float]
    ) -> tuple[int, float, bool, list[float] | None, tuple[int, int, int] | None]:
        """(segment, distance to its centroid, atypical, memberships or None, R/F/M scores or
        None) for one customer."""
        rule = self.tables.rfm
        scores = None if rule is None else rule.score_one(vals)
        c = [vals[i] for i in self._cluster_idx]
        if self._log_idx:
            # numpy's log1p, not math.log1p: where numpy runs SIMD code the two may differ in
            # the last bit, and the batch path uses numpy's (max() clips as np.maximum does)
            logged = np.log1p([max(c[i], 0.0) for i in self._log_idx]).tolist()
            for i, v in zip(self._log_idx, logged, strict=True):
                c[i] = v
        p = self._project(*c)
        if rule is not None and rule.segments:
            # the RFM groups are the segments (scoring.rfm); distance to the group's centre
            best = rule.group_one(scores)
            d2 = 0.0
            for pk, ck in zip(p, self._centers[best], strict=True):
                diff = pk - ck
                d2 += diff * diff
            distance = math.sqrt(d2)
            return best, distance, distance > self._thresholds[best], None, scores
        mixture = self.tables.mixture
        if mixture is not None:
            # the mixture's rule itself (scoring.mixture), on this one row: same bits as a batch
            segment, membership = mixture.segments(np.array([p], dtype=np.float64))
            best = int(segment[0])
            d2 = 0.0
            for pk, ck in zip(p, self._centers[best], strict=True):
                diff = pk - ck
                d2 += diff * diff
            distance = math.sqrt(d2)
            return (
                best,
                distance,
                distance > self._thresholds[best],
                membership[0].tolist(),
                scores,
            )
        best, best_d2 = self._nearest(*p)
        distance = math.sqrt(best_d2)
        return best, distance, distance > self._thresholds[best], None, scores

    def predict_segment(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """The batch path's ``predict_segment`` answer for one customer."""
        s, distance, atypical, membership, scores = self.assign(self.numeric(record))
        return self.tables.segment_result(s, distance, atypical, membership, scores)

    # ---- campaigns ---------------------------------------------------------------------
    def recommend(
        self,
        record: Mapping[str, Any],
        *,
        top_k: int | None = None,
        channel: str | None = None,
        exclude: Collection[str] = (),
    ) -> dict[str, Any]:
        """The batch path's ``recommend`` answer (without ``explain``) for one customer.

        The control-group fields are left to the engine: ``_held`` (campaign positions held
        out) and ``_reason`` (why nothing is offered, or None) are popped by it. An offer to a
        customer with an id states its control-group rule in ``rules`` already.
        """
        tables = self.tables
        vals = self.numeric(record)
        s, distance, atypical, membership, scores = self.assign(vals)
        active = self._active_today() if tables.dated else self._active
        asked = None
        if channel is None and not exclude:
            chosen, asked = self._open[s]
        else:
            camps = tables.campaigns
            chosen = [
                j
                for j in self._allowed[s]
                if active[j] and camps[j].reaches(channel) and camps[j].id not in exclude
            ]
        if tables.conditional and chosen:
            group, checks = self._condition_group, self._condition_checks
            # the condition groups the campaigns ask, in first-use order: each checked once,
            # and when all hold (the usual answer) the list stands as it is
            if asked is None:
                asked = self._asked(chosen)
            failed = {g for g in asked if not checks[g](vals, record)}
            if failed:
                chosen = [j for j in chosen if group.get(j) not in failed]
        layout = tables.layout
        row = layout.row(vals, self.codes(record), s, 0)
        slot = layout.campaign_slot
        # one model row per chosen campaign: the customer's row with the campaign's code
        probs = self.model.predict_variants(row, slot, [float(j) for j in chosen])
        values_ = self._values
        costs = self._costs
        evs = [p * values_[j] for p, j in zip(probs, chosen, strict=True)]
        clv = weight = None
        if tables.gain_weight is not None:
            # the batch path's rule on a one-row matrix: the same numpy calls, the same bits
            clv_a, weight_a = tables.gain_weight.values(np.array([vals], dtype=np.float64))
            clv, weight = float(clv_a[0]), float(weight_a[0])
            values_ = [v * weight for v in values_]
        if self.control is None:
            without = None
            gains = [p * values_[j] - costs[j] for p, j in zip(probs, chosen, strict=True)]
        else:
            without = self.control.predict_variants(row, slot, [float(j) for j in chosen])
            gains = [
                (p - w) * values_[j] - costs[j]
                for p, w, j in zip(probs, without, chosen, strict=True)
            ]
        positive = [r for r in rank_one(gains) if gains[r] > 0.0]
        customer_id = record.get("customer_id")
        offers, held, reason = choose(
            customer_id,
            [chosen[r] for r in positive],
            len(chosen),
            self._campaign_ids,
            tables.holdout_shares,
            tables.pool.salt,
            tables.pool.holdout_share,
            top_k,
        )
        position = {j: r for r, j in enumerate(chosen)}
        items = (tables.items if customer_id is None else self._items_with_id)[channel is not None][
            s
        ]
        ranked = []
        for j in offers:
            r = position[j]
            item = {**items[j], "probability": probs[r]}
            if without is not None:
                item["probability_without"] = without[r]
                item["uplift"] = probs[r] - without[r]
            item["expected_value"] = evs[r]
            item["expected_gain"] = gains[r]
            ranked.append(item)
        res = tables.segment_result(s, distance, atypical, membership, scores)
        res["campaigns"] = ranked
        if clv is not None:
            res["gain_weight"] = "clv"
            res["customer_value"] = {"clv": clv, "weight": weight}
        res["_held"] = held
        res["_reason"] = reason
        return res

    def _asked(self, chosen: Sequence[int]) -> tuple[int, ...]:
        """The condition groups ``chosen`` campaigns ask, in first-use order."""
        group = self._condition_group
        return tuple(dict.fromkeys(group[j] for j in chosen if j in group))

    def _opened(self, rows: list[list[int]]) -> list[tuple[list[int], tuple[int, ...]]]:
        """Per segment, its open campaigns ``rows[s]`` with the condition groups they ask."""
        return [(row, self._asked(row)) for row in rows]

    def _active_today(self) -> list[bool]:
        """Which campaigns are within their dates today (computed once a day)."""
        day = self.today()
        if day != self._active_day:
            active = [c.active_on(day) for c in self.tables.campaigns]
            self._open = self._opened([[j for j in row if active[j]] for row in self._allowed])
            self._active = active
            self._active_day = day
        return self._active


# ---- the projection and the nearest centre as straight-line code ---------------------------------
# Generated once per bundle: the loops over an 8 x 3 map and 5 centres were most of a segment
# assignment (about 5 us of Python loop overhead per request). The generated code does the same
# operations in the same order as the loops they replace (and as the batch path), so the bits
# are the same: p_k = ((b_k + c_0 w_0k) + c_1 w_1k) + ..., and d2 = ((p_0 - m_0)^2 + ...) with
# 0.0 + x left out (exact for the non-negative x added first). Weights and centres go in as
# arguments' defaults (not literals), so any float, infinities and NaN included, is itself.
def _compiled(name: str, params: list[str], defaults: dict[str, float], body: list[str]):
    args = ", ".join(params + [f"{k}={k}" for k in defaults])
    source = f"def {name}({args}):\n" + "".join(f"    {line}\n" for line in body)
    namespace: dict[str, Any] = dict(defaults)
    # our own text, built above from names and numbers only
    exec(compile(source, f"<scoring.single {name}>", "exec"), namespace)
    return namespace[name]


def _projection(b: list[float], w: list[list[float]]) -> Callable[..., list[float]]:
    """``f(c_0, ..., c_n-1)`` -> ``[b_k + sum_i c_i w_ik]`` added in the order of ``i``."""
    n, m = len(w), len(b)
    defaults = {f"b{k}": b[k] for k in range(m)}
    defaults.update({f"w{i}_{k}": w[i][k] for i in range(n) for k in range(m)})
    terms = [" + ".join([f"b{k}"] + [f"c{i} * w{i}_{k}" for i in range(n)]) for k in range(m)]
    return _compiled(
        "project", [f"c{i}" for i in range(n)], defaults, [f"return [{', '.join(terms)}]"]
    )


def _nearest_centre(centers: list[list[float]]) -> Callable[..., tuple[int, float]]:
    """``f(p_0, ..., p_m-1)`` -> (index of the nearest centre, its squared distance); the first
    of equals wins, and a NaN distance never does (as with ``<`` in a loop)."""
    m = len(centers[0]) if centers else 0
    defaults = {f"m{s}_{k}": centers[s][k] for s in range(len(centers)) for k in range(m)}
    defaults["inf"] = math.inf
    body = ["best, best_d2 = 0, inf"]
    for s in range(len(centers)):
        for k in range(m):
            body.append(f"t = p{k} - m{s}_{k}")
            body.append(f"d2 {'=' if k == 0 else '+='} t * t")
        if m == 0:
            body.append("d2 = 0.0")
        body.append(f"if d2 < best_d2: best, best_d2 = {s}, d2")
    body.append("return best, best_d2")
    return _compiled("nearest", [f"p{k}" for k in range(m)], defaults, body)
