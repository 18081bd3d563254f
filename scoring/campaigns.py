"""The campaign pool and its rules: who may receive a campaign, on which channel, in what order.

This module is the one place those rules live. The scoring engine, the single-customer path,
the batch command, training's segment defaults and its pool warnings all ask it, so they cannot
disagree. The rules:

- **eligibility**: ``eligible_segments`` None opens a campaign to every segment; otherwise each
  entry names a segment by its name or by its id written as text (``"0"``), with one meaning
  wherever it is asked;
- **channel**: a campaign reaches the channel it names (and any listed in ``channels``), and
  one with channel ``"any"`` reaches every channel;
- **conditions**: feature conditions (:mod:`scoring.conditions`, e.g. ``"total_spend >= 1000"``),
  all of which must hold for the customer; parsed when the pool is read, stored as trees;
- **dates**: ``start``/``end`` (ISO dates, inclusive, UTC): outside them the campaign is off;
- **money and volume**: ``cost`` of one contact (default 0, subtracted from the expected gain),
  ``daily_cap`` (sends per day across all customers) and ``per_customer_day`` /
  ``per_customer_week`` (frequency caps, counted by the service in Redis);
- **control group**: ``holdout_share`` of the campaign's customers are held out
  (:mod:`scoring.policy`), plus the pool's global share, drawn with the pool's ``salt``;
- **ranking**: eligible campaigns by expected gain (:func:`scoring.policy.expected_gain`),
  highest first, only those with a positive gain; ties keep pool order.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from scoring.conditions import Condition, ConditionError, parse

#: the channel of a campaign that may go out on any channel
ANY_CHANNEL = "any"


@dataclass
class Campaign:
    """One campaign of the pool. ``eligible_segments`` None means every segment."""

    id: str
    name: str
    value: float
    channel: str = ANY_CHANNEL
    description: str = ""
    eligible_segments: list[str] | None = field(default=None)
    #: further channels the campaign may go out on, besides ``channel``
    channels: list[str] | None = None
    #: feature conditions, all of which must hold: text when read from a pool file, stored as
    #: {"text", "tree"} (parsed once, never evaluated as code)
    conditions: list[Any] | None = None
    #: first and last day (ISO dates, UTC, inclusive) the campaign may be offered
    start: str | None = None
    end: str | None = None
    #: cost of one contact, in the unit of ``value``
    cost: float = 0.0
    #: sends per day across all customers (None: no cap)
    daily_cap: int | None = None
    #: sends to one customer per day and per ISO week (None: no cap)
    per_customer_day: int | None = None
    per_customer_week: int | None = None
    #: share of the campaign's customers held out as its control group
    holdout_share: float = 0.0

    def __post_init__(self) -> None:
        # Checked wherever a campaign is built (pool file, bundle): a bad rule names itself.
        parsed = []
        for entry in self.conditions or ():
            try:
                parsed.append(
                    parse(entry) if isinstance(entry, str) else Condition.from_dict(entry)
                )
            except (ConditionError, KeyError, TypeError) as exc:
                raise ValueError(f"condition {entry!r}: {exc}") from None
        if self.conditions is not None:
            self.conditions = [c.to_dict() for c in parsed]
        self._conditions = tuple(parsed)
        days = []
        for key in ("start", "end"):
            text = getattr(self, key)
            if text is None:
                days.append(None)
                continue
            try:
                days.append(dt.date.fromisoformat(str(text)))
            except ValueError:
                raise ValueError(f"{key} {text!r} is not a date (YYYY-MM-DD)") from None
            setattr(self, key, days[-1].isoformat())
        self._start, self._end = days
        if self._start and self._end and self._end < self._start:
            raise ValueError(f"end {self.end} is before start {self.start}")
        if not isinstance(self.cost, int | float) or not math.isfinite(self.cost) or self.cost < 0:
            raise ValueError(f"cost {self.cost!r} should be a number >= 0")
        self.cost = float(self.cost)
        for key in ("daily_cap", "per_customer_day", "per_customer_week"):
            v = getattr(self, key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise ValueError(f"{key} {v!r} should be a whole number >= 0")
        share = self.holdout_share
        if not isinstance(share, int | float) or not 0.0 <= share < 1.0:
            raise ValueError(f"holdout_share {share!r} should be in [0, 1)")
        self.holdout_share = float(share)
        if self.channels is not None:
            self.channels = [str(c) for c in self.channels]

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form, stored as campaigns.json."""
        return asdict(self)

    @property
    def parsed_conditions(self) -> tuple[Condition, ...]:
        """The conditions as parsed trees."""
        return self._conditions

    def admits(self, values: Mapping[str, Any]) -> bool:
        """True when every condition holds for one customer (feature name -> value)."""
        return all(c.holds(values) for c in self._conditions)

    def condition_mask(self, columns: Mapping[str, np.ndarray], n: int) -> np.ndarray:
        """(n,) where every condition holds, over a batch's feature columns."""
        out = np.ones(n, dtype=bool)
        for c in self._conditions:
            out &= c.mask(columns, n)
        return out

    def active_on(self, day: dt.date) -> bool:
        """True when ``day`` is within the campaign's start/end dates."""
        return (self._start is None or day >= self._start) and (
            self._end is None or day <= self._end
        )

    def static_rules(self) -> list[str]:
        """The customer-independent rules that admit an offer: conditions, dates, cost."""
        rules = [f"condition {c.text}" for c in self._conditions]
        if self._start or self._end:
            rules.append(f"running {self.start or '...'} to {self.end or '...'}")
        return rules

    def eligibility_rule(self, segment_id: int, segment_name: str) -> str | None:
        """Why segment ``segment_id`` (named ``segment_name``) may receive this campaign, or None.

        An entry of ``eligible_segments`` matches the segment's name or its id as text.
        """
        if self.eligible_segments is None:
            return "open to all segments"
        for entry in self.eligible_segments:
            entry = str(entry)
            if entry in (segment_name, str(segment_id)):
                return f"segment '{segment_name}' is eligible"
        return None

    def is_eligible(self, segment_id: int, segment_name: str) -> bool:
        """True when segment ``segment_id`` (named ``segment_name``) may receive this campaign."""
        return self.eligibility_rule(segment_id, segment_name) is not None

    def unknown_segments(self, segment_names: Sequence[str]) -> list[str]:
        """Entries of ``eligible_segments`` that name no segment (by name or id)."""
        if self.eligible_segments is None:
            return []
        known = set(segment_names) | {str(s) for s in range(len(segment_names))}
        return [str(e) for e in self.eligible_segments if str(e) not in known]

    def reaches(self, channel: str | None) -> bool:
        """True when the campaign may go out on ``channel`` (None: no channel asked)."""
        return (
            channel is None
            or self.channel in (channel, ANY_CHANNEL)
            or (
                self.channels is not None
                and (channel in self.channels or ANY_CHANNEL in self.channels)
            )
        )


@dataclass(frozen=True)
class PoolSettings:
    """Pool-wide settings read from the pool file, kept in the manifest (``pool``).

    ``salt`` seeds the control-group hashing: it belongs to the pool, not the bundle, so a
    customer keeps their control groups across retraining and reloads until the salt changes.
    ``holdout_share`` holds customers out of every campaign (a global control group).
    """

    salt: str = ""
    holdout_share: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.salt, str):
            raise ValueError(f"salt {self.salt!r} should be text")
        share = self.holdout_share
        if isinstance(share, bool) or not isinstance(share, int | float) or not 0 <= share < 1:
            raise ValueError(f"holdout_share {share!r} should be in [0, 1)")

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form for the manifest."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> PoolSettings:
        """Inverse of :meth:`to_dict`; None (an older bundle) gives the defaults."""
        if not data:
            return cls()
        return cls(
            salt=str(data.get("salt", "")), holdout_share=float(data.get("holdout_share", 0))
        )


def eligibility_table(
    campaigns: Sequence[Campaign], segment_names: Sequence[str]
) -> tuple[np.ndarray, list[list[str]]]:
    """(k, m) mask of which campaign may go to which segment, and the rule text of each pair."""
    k, m = len(segment_names), len(campaigns)
    mask = np.zeros((k, m), dtype=bool)
    rules = [[""] * m for _ in range(k)]
    for s, name in enumerate(segment_names):
        for j, campaign in enumerate(campaigns):
            rule = campaign.eligibility_rule(s, name)
            if rule is not None:
                mask[s, j] = True
                rules[s][j] = rule
    return mask, rules


def condition_columns(
    numeric: np.ndarray,
    numeric_names: Sequence[str],
    codes: np.ndarray,
    categoricals: Sequence[Any],
) -> dict[str, np.ndarray]:
    """Feature columns a batch's conditions read: numeric features by name, categoricals as text."""
    columns = {name: numeric[:, j] for j, name in enumerate(numeric_names)}
    for j, cat in enumerate(categoricals):
        lookup = np.array([*cat.categories, None], dtype=object)
        idx = np.where(np.isnan(codes[:, j]), len(cat.categories), np.nan_to_num(codes[:, j]))
        columns[cat.name] = lookup[idx.astype(np.intp)]
    return columns


def rank(expected_value: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Campaign order per customer and how many are eligible: (n, m) -> order (n, m), counts (n,).

    ``order[i, :counts[i]]`` are customer i's eligible campaigns, highest expected value first,
    ties in pool order (a stable sort); ineligible ones follow and are to be cut.
    """
    order = np.argsort(np.where(mask, -expected_value, np.inf), axis=1, kind="stable")
    return order, mask.sum(axis=1)


def rank_one(expected_value: Sequence[float]) -> list[int]:
    """:func:`rank` for one customer in plain Python: positions in ``expected_value``, best first.

    ``expected_value`` holds the customer's eligible campaigns in pool order, so the stable sort
    keeps pool order on ties, as :func:`rank` does.
    """
    return sorted(range(len(expected_value)), key=lambda r: -expected_value[r])
