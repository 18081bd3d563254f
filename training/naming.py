"""Segment names and one-line descriptions, generated from each segment's profile.

A segment is described by its mean z-scores on the cluster features (log1p where configured,
then standardised over the whole population: the space the segmentation works in), so "high"
and "low" are always relative to the population.

Recognisable features are mapped to *roles* by their column names (spend, frequency, recency,
discount, returns, mobile; see :data:`ROLE_PATTERNS`). When the table has a recency role and a
spend or frequency role (the classic RFM contract), segments get *archetype* names such as
"VIP Champions" or "Dormant" (see :data:`ARCHETYPES`). Otherwise, and for a segment that fits
no archetype, the name is built from its one or two most distinguishing features, e.g.
"High PURCHASES, Low CASH_ADVANCE".

Names are unique and deterministic: segments claim archetypes strongest match first; a segment
whose archetypes are taken falls back to its distinguishing features; any remaining clash gets
the segment id appended. A names file (TOML or JSON, segment id or generated name -> name)
overrides the result.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: role -> regular expression on the lower-cased column name; the first matching role wins
ROLE_PATTERNS: tuple[tuple[str, str], ...] = (
    ("recency", r"recen|days_since|dayssince|last_purchase|inactive"),
    ("discount", r"discount|deal|coupon|promo"),
    ("returns", r"return"),
    ("mobile", r"mobile"),
    ("frequency", r"order_count|orders|freq|_trx|transactions|visits|^num"),
    ("spend", r"spend|monetary|^mnt|amount|revenue|^purchases$|sales"),
)

#: a feature or role counts as "high"/"low" beyond this many standard deviations
NOTABLE = 0.25


@dataclass(frozen=True)
class Archetype:
    """A recognisable kind of customer: a name and a match score from role z-scores."""

    name: str
    description: str
    #: role z-scores -> score (> 0 when the segment matches, higher is a stronger match)
    score: Callable[[dict[str, float]], float]


def _when(condition: bool, value: float) -> float:
    return value if condition else 0.0


ARCHETYPES: tuple[Archetype, ...] = (
    Archetype(
        "VIP Champions",
        "high spend, frequent and recent",
        lambda r: _when(
            r["spend"] > 0.5 and r["frequency"] > 0.3 and r["recency"] < 0.0,
            r["spend"] + r["frequency"] - r["recency"],
        ),
    ),
    Archetype("Dormant", "long inactive", lambda r: _when(r["recency"] > 0.75, r["recency"])),
    Archetype(
        "Bargain Hunters",
        "buys mostly on discount",
        lambda r: _when(r["discount"] > 0.75, r["discount"]),
    ),
    Archetype(
        "Serial Returners", "returns often", lambda r: _when(r["returns"] > 1.0, r["returns"])
    ),
    Archetype(
        "Big Spenders",
        "high spend on few purchases",
        lambda r: _when(r["spend"] > 0.75 and r["frequency"] <= 0.3, r["spend"]),
    ),
    Archetype(
        "Loyal Regulars",
        "frequent, moderate spend",
        lambda r: _when(
            r["frequency"] > 0.3 and r["spend"] > -0.5 and r["recency"] <= 0.5, r["frequency"]
        ),
    ),
    Archetype(
        "At Risk",
        "valuable but lapsing",
        lambda r: _when(
            0.3 < r["recency"] <= 0.75 and max(r["spend"], r["frequency"]) > 0.0, r["recency"]
        ),
    ),
    Archetype(
        "New & Occasional",
        "few purchases, recently active",
        lambda r: _when(r["frequency"] < -0.3 and r["recency"] <= 0.25, -r["frequency"]),
    ),
    Archetype(
        "Mobile-First", "shops mostly on mobile", lambda r: _when(r["mobile"] > 1.0, r["mobile"])
    ),
    Archetype(
        "Low Engagement",
        "low spend, few purchases",
        lambda r: _when(
            r["spend"] < -0.5 and r["frequency"] < -0.5, -(r["spend"] + r["frequency"]) / 2
        ),
    ),
)

#: role -> words for a high / low value in descriptions
ROLE_WORDS: dict[str, tuple[str, str]] = {
    "spend": ("high spend", "low spend"),
    "frequency": ("frequent", "infrequent"),
    "recency": ("long inactive", "recently active"),
    "discount": ("discount-driven", "rarely uses discounts"),
    "returns": ("returns often", "rarely returns"),
    "mobile": ("mobile-heavy", "rarely on mobile"),
}


@dataclass(frozen=True)
class SegmentName:
    """A segment's name, its one-line description and the archetype it matched (if any)."""

    name: str
    description: str
    archetype: str | None = None


def feature_role(feature: str) -> str | None:
    """The role a feature plays, judged by its name, or None."""
    lowered = feature.lower()
    for role, pattern in ROLE_PATTERNS:
        if re.search(pattern, lowered):
            return role
    return None


def segment_zscores(Z: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Mean of the standardised cluster features ``Z`` per segment: (k, n_features)."""
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    sums = np.zeros((k, Z.shape[1]), dtype=np.float64)
    # bincount per column: much faster than np.add.at on millions of rows
    for j in range(Z.shape[1]):
        sums[:, j] = np.bincount(labels, weights=Z[:, j], minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / counts[:, None]
    return np.nan_to_num(means, nan=0.0)


def role_scores(features: list[str], z: np.ndarray) -> tuple[dict[str, float], set[str]]:
    """Per role, the mean z-score of the features playing it; and the set of roles present."""
    by_role: dict[str, list[float]] = {}
    for f, value in zip(features, z, strict=True):
        role = feature_role(f)
        if role:
            by_role.setdefault(role, []).append(float(value))
    scores = {role: 0.0 for role in ROLE_WORDS}
    scores.update({role: float(np.mean(v)) for role, v in by_role.items()})
    return scores, set(by_role)


def _feature_label(feature: str, value: float) -> str:
    return f"{'High' if value > 0 else 'Low'} {feature}"


def _distinguishing(features: list[str], z: np.ndarray, count: int) -> str:
    """Name from the ``count`` features with the largest absolute z-score."""
    order = np.argsort(-np.abs(z), kind="stable")[:count]
    if not len(order) or abs(z[order[0]]) < NOTABLE:
        return "Average Customers"
    return ", ".join(_feature_label(features[i], z[i]) for i in order if abs(z[i]) >= NOTABLE)


def describe(features: list[str], z: np.ndarray, top: int = 3) -> str:
    """One line naming the segment's most distinguishing traits, e.g. 'high spend, frequent'."""
    order = np.argsort(-np.abs(z), kind="stable")
    phrases: list[str] = []
    for i in order:
        if abs(z[i]) < NOTABLE or len(phrases) >= top:
            break
        role = feature_role(features[i])
        if role:
            phrase = ROLE_WORDS[role][0 if z[i] > 0 else 1]
        else:
            phrase = f"{'high' if z[i] > 0 else 'low'} {features[i]}"
        if phrase not in phrases:
            phrases.append(phrase)
    return ", ".join(phrases) if phrases else "close to the population average"


def name_segments(
    features: list[str], zscores: np.ndarray, overrides: Mapping[str, str] | None = None
) -> list[SegmentName]:
    """Readable, unique, deterministic names for segments with the given mean z-scores."""
    k = zscores.shape[0]
    roles = [role_scores(features, zscores[s]) for s in range(k)]
    present = roles[0][1] if roles else set()
    use_archetypes = "recency" in present and bool(present & {"spend", "frequency"})

    names: list[str | None] = [None] * k
    archetype_of: list[str | None] = [None] * k
    descriptions = [describe(features, zscores[s]) for s in range(k)]
    if use_archetypes:
        # every (score, segment, archetype) match, strongest first; each archetype and segment
        # is used once, so the best-fitting segment gets the name and the others move on
        matches = sorted(
            (
                (-a.score(roles[s][0]), s, i)
                for s in range(k)
                for i, a in enumerate(ARCHETYPES)
                if a.score(roles[s][0]) > 0
            ),
        )
        taken: set[int] = set()
        for _, s, i in matches:
            if names[s] is None and i not in taken:
                names[s] = ARCHETYPES[i].name
                archetype_of[s] = ARCHETYPES[i].name
                taken.add(i)

    for s in range(k):
        if names[s] is None:
            names[s] = _distinguishing(features, zscores[s], 2)
    # clashes between descriptive names: add a third feature, then the segment id
    for attempt in (3, None):
        seen: dict[str, int] = {}
        for n in names:
            seen[n] = seen.get(n, 0) + 1
        for s in range(k):
            if seen[names[s]] > 1 and archetype_of[s] is None:
                names[s] = (
                    _distinguishing(features, zscores[s], attempt)
                    if attempt
                    else f"{names[s]} ({s})"
                )
    final = [str(n) for n in names]
    if len(set(final)) < k:  # only archetype/descriptive coincidences remain
        final = [f"{n} ({s})" if final.count(n) > 1 else n for s, n in enumerate(final)]

    result = [SegmentName(final[s], descriptions[s], archetype_of[s]) for s in range(k)]
    return apply_overrides(result, overrides) if overrides else result


def apply_overrides(names: list[SegmentName], overrides: Mapping[str, str]) -> list[SegmentName]:
    """Replace names by segment id (``"0"``) or by generated name; the result must stay unique."""
    generated = {n.name: s for s, n in enumerate(names)}
    out = list(names)
    for key, new in overrides.items():
        key = str(key)
        if key.isdigit() and int(key) < len(names):
            s = int(key)
        elif key in generated:
            s = generated[key]
        else:
            raise ValueError(
                f"names file: {key!r} is neither a segment id (0..{len(names) - 1}) nor a "
                f"generated name ({', '.join(sorted(generated))})"
            )
        if not isinstance(new, str) or not new.strip():
            raise ValueError(f"names file: the name for {key!r} must be a non-empty string")
        out[s] = SegmentName(new.strip(), out[s].description, out[s].archetype)
    final = [n.name for n in out]
    dupes = sorted({n for n in final if final.count(n) > 1})
    if dupes:
        raise ValueError(f"names file: segment names must be unique, {', '.join(dupes)} repeats")
    return out


def load_names_file(path: str | Path) -> dict[str, str]:
    """Read a names file: TOML (``.toml``) or JSON, a flat mapping of id/name -> new name."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"names file {path}: cannot read ({exc.strerror})") from None
    try:
        data = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        raise ValueError(
            f"names file {path}: not valid {path.suffix[1:] or 'JSON'} ({exc})"
        ) from None
    if isinstance(data, dict) and isinstance(data.get("names"), dict):
        data = data["names"]
    if not isinstance(data, dict):
        raise ValueError(f"names file {path}: expected a mapping of segment id or name -> name")
    return {str(k): v for k, v in data.items()}
