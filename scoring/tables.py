"""The frozen load-time tables both scorers read: built once from a verified bundle.

Everything a request needs that does not depend on the customer is computed here, once: the
imputation values, the ratio features' positions, the scaler and PCA fused into one affine map,
the centroids (the Gaussian mixture's means and its membership rule when the bundle serves the
mixture) and outlier thresholds, the segment defaults, the response-row layout, and the
campaign tables (values, the eligibility of every (segment, campaign) pair with the rule that
made it eligible, and the fixed part of every answer item). The vectorised engine
(:mod:`scoring.engine`) and the single-customer path (:mod:`scoring.single`) both read this
object and nothing private of each other. Its arrays are read-only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from scoring.bundle import Bundle
from scoring.campaigns import Campaign, PoolSettings, eligibility_table
from scoring.clv import GainWeight
from scoring.features import FeatureSchema, ResponseLayout
from scoring.mixture import MixtureRule
from scoring.policy import gain_rule
from scoring.rfm import RFMRule, answer


def _frozen(array: Any, dtype: Any = np.float64) -> np.ndarray:
    out = np.array(array, dtype=dtype)
    out.flags.writeable = False
    return out


@dataclass(frozen=True)
class ScoringTables:
    """Load-time tables of one bundle (see the module docstring); build with :meth:`of`."""

    schema: FeatureSchema
    segment_names: tuple[str, ...]
    campaigns: tuple[Campaign, ...]
    # ---- features
    input_names: tuple[str, ...]
    categorical_names: tuple[str, ...]
    #: imputation value of each numeric input (the fitted imputer's statistics)
    medians: np.ndarray
    #: per derived feature: (numerator position, denominator position, fill)
    derived: tuple[tuple[int, int, float], ...]
    #: inputs plus derived features
    n_numeric: int
    # ---- segments
    #: positions of the cluster features in the numeric matrix
    cluster_index: np.ndarray
    #: positions, among the cluster features, of those that get log1p
    log_index: np.ndarray
    #: scaler then PCA as one affine map: projection = cluster features @ w + b
    w: np.ndarray
    b: np.ndarray
    #: (k, n_components) centroids in PCA space (the mixture's means when it is served)
    centers: np.ndarray
    #: (k,) distance beyond which a customer of the segment is atypical
    thresholds: np.ndarray
    #: default campaign ids of each segment (training's choice)
    defaults: tuple[list[str], ...]
    # ---- campaigns
    layout: ResponseLayout
    #: (m,) campaign values
    values: np.ndarray
    #: (k, m) may segment s receive campaign j
    eligible: np.ndarray
    #: campaign id -> pool position
    campaign_index: dict[str, int]
    #: (m,) campaign channels
    channels: tuple[str, ...]
    #: the fixed part of every answer item per (segment, campaign), keyed by whether a channel
    #: was asked for (the eligibility text then names the channel)
    items: dict[bool, tuple[tuple[dict[str, Any], ...], ...]]
    # ---- campaign rules and policy
    #: (m,) cost of one contact
    costs: np.ndarray
    #: (m,) control-group share of each campaign
    holdout_shares: tuple[float, ...]
    #: pool-wide control-group salt and share
    pool: PoolSettings
    #: positions of the campaigns that carry feature conditions
    conditional: tuple[int, ...]
    #: True when some campaign has start/end dates
    dated: bool
    #: True when some campaign (or the pool) holds customers out
    has_holdout: bool
    #: "uplift" (the bundle has a control model) or "response"
    ranking: str
    #: per campaign: (per_customer_day, per_customer_week, daily_cap), None where uncapped
    caps: tuple[tuple[int | None, int | None, int | None], ...]
    #: True when some campaign has a frequency cap
    has_caps: bool
    #: the served Gaussian mixture's membership rule; None when K-Means serves (nearest centre)
    mixture: MixtureRule | None = None
    #: the RFM rule (quintile edges of the training population) when the bundle has one; with
    #: ``rfm.segments`` it assigns the segments (``served_clustering = "rfm"``)
    rfm: RFMRule | None = None
    #: per-customer weight of offer values by lifetime value (``[clv] weight_gains``), or None
    gain_weight: GainWeight | None = None

    @classmethod
    def of(cls, bundle: Bundle) -> ScoringTables:
        """Build the tables of ``bundle`` (a loaded, verified bundle)."""
        schema = bundle.schema
        names = schema.input_names
        # scaler then PCA is affine: p = (c - mu) / sigma @ V.T - m @ V.T == c @ W + b
        scale = np.asarray(bundle.scaler.scale_, dtype=np.float64)
        mean = np.asarray(bundle.scaler.mean_, dtype=np.float64)
        comps = np.asarray(bundle.pca.components_, dtype=np.float64)
        pca_mean = np.asarray(bundle.pca.mean_, dtype=np.float64)
        campaigns = tuple(bundle.campaigns)
        segment_names = tuple(bundle.segment_names)
        eligible, rules = eligibility_table(campaigns, segment_names)
        return cls(
            schema=schema,
            segment_names=segment_names,
            campaigns=campaigns,
            input_names=tuple(names),
            categorical_names=tuple(schema.categorical_names),
            # the fitted imputer's values: the object training used
            medians=_frozen(bundle.imputer.statistics_),
            derived=tuple(
                (names.index(d.numerator), names.index(d.denominator), float(d.fill))
                for d in schema.derived
            ),
            n_numeric=len(schema.numeric_names),
            cluster_index=_frozen(schema.cluster_index(), np.intp),
            log_index=_frozen(np.flatnonzero(schema.log_mask()), np.intp),
            w=_frozen(comps.T / scale[:, None]),
            b=_frozen(-(mean / scale) @ comps.T - pca_mean @ comps.T),
            centers=_frozen(
                bundle.kmeans.cluster_centers_ if bundle.mixture is None else bundle.mixture.means_
            ),
            thresholds=_frozen(
                [float(p.get("outlier_threshold", np.inf)) for p in bundle.profiles]
            ),
            defaults=tuple(list(p.get("default_campaigns", [])) for p in bundle.profiles),
            layout=schema.response_layout(),
            values=_frozen([c.value for c in campaigns]),
            eligible=_frozen(eligible, bool),
            campaign_index={c.id: j for j, c in enumerate(campaigns)},
            channels=tuple(c.channel for c in campaigns),
            items=_answer_items(
                campaigns,
                rules,
                gain_rule(
                    "uplift" if bundle.control_model is not None else "response",
                    weighted=bool((bundle.manifest.get("clv") or {}).get("weight_gains")),
                ),
            ),
            costs=_frozen([c.cost for c in campaigns]),
            holdout_shares=tuple(c.holdout_share for c in campaigns),
            pool=(pool := PoolSettings.from_dict(bundle.manifest.get("pool"))),
            conditional=tuple(j for j, c in enumerate(campaigns) if c.parsed_conditions),
            dated=any(c.start or c.end for c in campaigns),
            has_holdout=pool.holdout_share > 0 or any(c.holdout_share > 0 for c in campaigns),
            ranking="uplift" if bundle.control_model is not None else "response",
            caps=(
                caps := tuple(
                    (c.per_customer_day, c.per_customer_week, c.daily_cap) for c in campaigns
                )
            ),
            has_caps=any(v is not None for cap in caps for v in cap),
            mixture=None if bundle.mixture is None else MixtureRule.from_estimator(bundle.mixture),
            rfm=None
            if not bundle.manifest.get("rfm")
            else RFMRule.from_dict(bundle.manifest["rfm"], list(schema.numeric_names)),
            gain_weight=GainWeight.from_manifest(bundle.manifest, list(schema.numeric_names)),
        )

    def segment_result(
        self,
        s: int,
        distance: float,
        atypical: bool,
        membership: list[float] | None = None,
        rfm: tuple[int, int, int] | list[int] | None = None,
    ) -> dict[str, Any]:
        """The segment part of an answer (both scorers build it here).

        A bundle serving the Gaussian mixture adds ``membership``: the probability of every
        segment, by segment id. A bundle with an RFM rule adds ``rfm``: the customer's R, F, M
        scores and RFM group (:func:`scoring.rfm.answer`).
        """
        out = {
            "segment_id": s,
            "segment_name": self.segment_names[s],
            "distance": distance,
            "atypical": atypical,
            "recommended_campaigns": self.defaults[s],
        }
        if membership is not None:
            out["membership"] = membership
        if rfm is not None:
            out["rfm"] = answer(rfm)
        return out


def _answer_items(
    campaigns: tuple[Campaign, ...], rules: list[list[str]], gain: str
) -> dict[bool, tuple[tuple[dict[str, Any], ...], ...]]:
    """The fixed part of every answer item: an item is this dict plus probability and
    expected value. ``gain``: the text of the positive-gain rule every offer passed."""
    return {
        with_channel: tuple(
            tuple(
                {
                    "campaign_id": c.id,
                    "name": c.name,
                    "channel": c.channel,
                    "value": c.value,
                    "cost": c.cost,
                    "eligibility": f"{rule}; channel '{c.channel}'" if with_channel else rule,
                    # every rule that admitted the offer; the control-group rule is added per
                    # answer (only a request with a customer id passes it), the caps' by api/
                    "rules": [
                        rule,
                        *([f"channel '{c.channel}'"] if with_channel else []),
                        *c.static_rules(),
                        gain,
                    ],
                }
                for c, rule in zip(campaigns, segment_rules, strict=True)
            )
            for segment_rules in rules
        )
        for with_channel in (False, True)
    }
