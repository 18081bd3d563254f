"""Classic RFM: quintile scores (R, F, M from 1 to 5) and the named RFM groups.

The one place the rule lives; training, the batch engine, the one-customer path and the stream
job all call it, so a customer gets the same scores and group everywhere.

Scores
------
Training stores the inner quintile edges (the 20th, 40th, 60th and 80th percentiles, numpy's
linear interpolation) of the recency, frequency and monetary features over the *training
population* in the manifest (``rfm.edges``); serving scores a new customer against those
edges, never against the other customers of a request. A score counts the edges a value
exceeds: ``score = 1 + #{edge < value}``, so the intervals are closed on the right (as
``pandas.cut``): a value equal to an edge takes the lower quintile, and equal values always
share a score (no ``rank(method="first")`` tie-breaking, which would give two customers with
the same history different scores depending on row order). When one value covers several
quintiles (CDNOW: about 60% of customers bought on a single day) the edges coincide and the
scores in between stay empty; the profiles and the report show how many customers hold each
score. Recency is reversed: the fewest days since the last purchase get R = 5.

Groups
------
The group comes from R and F through the R/F-score grid that most RFM write-ups reproduce
(the ``seg_map`` of the widely copied RFM tutorials: ``[1-2][1-2]`` Hibernating, ``[1-2][3-4]``
At Risk, ``[1-2]5`` Can't Lose Them, ``3[1-2]`` About to Sleep, ``33`` Need Attention,
``[3-4][4-5]`` Loyal, ``41`` Promising, ``51`` New, ``[4-5][2-3]`` Potential Loyalists,
``5[4-5]`` Champions), with the coldest cell R = 1, F = 1 split off as Lost, as the
eleven-group lists of Putler's RFM guide and the R package ``rfm`` (``rfm_segment``) have it.
M is reported but, as in that grid, does not move a customer between groups. The grid covers
all 25 (R, F) pairs, so every customer has exactly one group; :data:`GRID` is the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: the groups, in segment-id order when ``[segmentation] method = "rfm"``
GROUPS = (
    "Champions",
    "Loyal",
    "Potential Loyalists",
    "New",
    "Promising",
    "Need Attention",
    "About to Sleep",
    "At Risk",
    "Cannot Lose Them",
    "Hibernating",
    "Lost",
)

#: what each group means (the segment description of an RFM bundle)
DESCRIPTIONS = {
    "Champions": "bought most recently and most often (R 5, F 4-5)",
    "Loyal": "buy often and fairly recently (R 3-4, F 4-5)",
    "Potential Loyalists": "recent, a few purchases (R 4-5, F 2-3)",
    "New": "bought very recently, once or rarely (R 5, F 1)",
    "Promising": "recent, not yet frequent (R 4, F 1)",
    "Need Attention": "middle recency and frequency (R 3, F 3)",
    "About to Sleep": "fading, few purchases (R 3, F 1-2)",
    "At Risk": "bought often, not for a while (R 1-2, F 3-4)",
    "Cannot Lose Them": "among the most frequent, but not recently (R 1-2, F 5)",
    "Hibernating": "long ago and rarely (R 1-2, F 1-2 but not R 1 F 1)",
    "Lost": "the longest ago and the least often (R 1, F 1)",
}

_CELLS = {  # group -> (R, F) cells; checked below to tile the 5 x 5 grid exactly once
    "Champions": [(5, 4), (5, 5)],
    "Loyal": [(3, 4), (3, 5), (4, 4), (4, 5)],
    "Potential Loyalists": [(4, 2), (4, 3), (5, 2), (5, 3)],
    "New": [(5, 1)],
    "Promising": [(4, 1)],
    "Need Attention": [(3, 3)],
    "About to Sleep": [(3, 1), (3, 2)],
    "At Risk": [(1, 3), (1, 4), (2, 3), (2, 4)],
    "Cannot Lose Them": [(1, 5), (2, 5)],
    "Hibernating": [(1, 2), (2, 1), (2, 2)],
    "Lost": [(1, 1)],
}


def _grid() -> np.ndarray:
    grid = np.full((5, 5), -1, dtype=np.int64)
    for g, name in enumerate(GROUPS):
        for r, f in _CELLS[name]:
            if grid[r - 1, f - 1] != -1:
                raise AssertionError(f"RFM grid: cell R{r} F{f} assigned twice")
            grid[r - 1, f - 1] = g
    if (grid < 0).any():
        raise AssertionError("RFM grid: some (R, F) cell has no group")
    grid.flags.writeable = False
    return grid


#: GRID[R - 1, F - 1] is the group index of scores (R, F)
GRID = _grid()
_GRID_LISTS = GRID.tolist()
#: the quantiles whose values are the inner quintile edges
QUANTILES = (0.2, 0.4, 0.6, 0.8)
#: the three roles, in score order
ROLES = ("recency", "frequency", "monetary")


def quintile_edges(values: np.ndarray) -> list[float]:
    """The four inner quintile edges of ``values`` (the training population), ascending."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0 or not np.isfinite(values).all():
        raise ValueError("quintile edges need at least one value and no missing values")
    return [float(v) for v in np.quantile(values, QUANTILES)]


@dataclass(frozen=True)
class RFMRule:
    """Edges -> scores -> group, for the features at ``positions`` of the numeric matrix."""

    #: feature name of each role (recency, frequency, monetary)
    features: tuple[str, str, str]
    #: their positions in the numeric matrix (inputs then derived features)
    positions: tuple[int, int, int]
    #: per role, the four inner quintile edges of the training population
    edges: tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]
    #: True when the segments ARE the groups (``[segmentation] method = "rfm"``)
    segments: bool = False

    @classmethod
    def from_dict(cls, entry: dict[str, Any], numeric_names: list[str]) -> RFMRule:
        """From the manifest's ``rfm`` entry (:meth:`to_dict`) and the schema's feature order."""
        features = tuple(str(entry["features"][role]) for role in ROLES)
        edges = tuple(tuple(float(e) for e in entry["edges"][role]) for role in ROLES)
        return cls(
            features=features,  # type: ignore[arg-type]
            positions=tuple(numeric_names.index(f) for f in features),  # type: ignore[arg-type]
            edges=edges,  # type: ignore[arg-type]
            segments=bool(entry.get("segments", False)),
        )

    def to_dict(self) -> dict[str, Any]:
        """The rule part of the manifest's ``rfm`` entry."""
        return {
            "features": dict(zip(ROLES, self.features, strict=True)),
            "edges": {role: list(e) for role, e in zip(ROLES, self.edges, strict=True)},
            "segments": self.segments,
            "groups": list(GROUPS),
            "tie_rule": "score = 1 + number of edges below the value (a value on an edge "
            "takes the lower quintile; equal values share a score); R = 6 - score of recency",
        }

    # ---- vectorised (batch engine, training) ------------------------------------------------
    def scores(self, numeric: np.ndarray) -> np.ndarray:
        """(n, 3) int scores R, F, M of the rows of the numeric matrix."""
        out = np.empty((numeric.shape[0], 3), dtype=np.int64)
        for c, (pos, edges) in enumerate(zip(self.positions, self.edges, strict=True)):
            col = numeric[:, pos]
            count = np.zeros(col.shape[0], dtype=np.int64)
            for e in edges:  # comparisons, not searchsorted: identical to the one-row path
                count += col > e
            out[:, c] = 1 + count
        out[:, 0] = 6 - out[:, 0]
        return out

    @staticmethod
    def groups(scores: np.ndarray) -> np.ndarray:
        """(n,) group index of (n, 3) scores, by the R/F grid."""
        return GRID[scores[:, 0] - 1, scores[:, 1] - 1]

    # ---- one customer (plain Python) ----------------------------------------------------------
    def score_one(self, values: list[float]) -> tuple[int, int, int]:
        """(R, F, M) of one customer's numeric features (inputs then derived, imputed)."""
        r, f, m = (
            1 + sum(1 for e in edges if values[pos] > e)
            for pos, edges in zip(self.positions, self.edges, strict=True)
        )
        return 6 - r, f, m

    @staticmethod
    def group_one(scores: tuple[int, int, int]) -> int:
        """Group index of one customer's (R, F, M)."""
        return _GRID_LISTS[scores[0] - 1][scores[1] - 1]


def answer(scores: tuple[int, int, int] | list[int]) -> dict[str, Any]:
    """The ``rfm`` part of an answer: the three scores and the group name."""
    r, f, m = (int(s) for s in scores)
    return {
        "recency": r,
        "frequency": f,
        "monetary": m,
        "group": GROUPS[_GRID_LISTS[r - 1][f - 1]],
    }
