"""The campaign pool and its rules: who may receive a campaign, on which channel, in what order.

This module is the one place those rules live. The scoring engine, the single-customer path,
the batch command, training's segment defaults and its pool warnings all ask it, so they cannot
disagree. The rules:

- **eligibility**: ``eligible_segments`` None opens a campaign to every segment; otherwise each
  entry names a segment by its name or by its id written as text (``"0"``), with one meaning
  wherever it is asked;
- **channel**: a campaign reaches the channel it names, and one with channel ``"any"`` reaches
  every channel;
- **ranking**: eligible campaigns by expected value (probability x value), highest first; ties
  keep pool order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

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

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form, stored as campaigns.json."""
        return asdict(self)

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
        return channel is None or self.channel in (channel, ANY_CHANNEL)


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
