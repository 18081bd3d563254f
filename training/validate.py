"""Checks on the customer table, campaign pool and responses before anything is fitted.

Each check raises :class:`TableError` naming the column (or campaign) and the problem, with an
example value and row id where that helps. The checks only read their inputs; nothing is modified.
Also here: the choice of log-transformed features when ``features.log = "auto"``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from scoring.campaigns import Campaign
from scoring.features import KIND_DOMAINS
from training.config import TrainConfig

#: Campaign ids the bundle format accepts (see docs/architecture.md).
CAMPAIGN_ID_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"


class TableError(ValueError):
    """An input table cannot be trained on; ``column`` (or ``campaign``) and ``problem`` say why."""

    def __init__(self, problem: str, column: str | None = None, campaign: str | None = None):
        self.problem = problem
        self.column = column
        self.campaign = campaign
        if campaign is not None:
            where = f"campaign {campaign!r}: "
        elif column is not None:
            where = f"column {column!r}: "
        else:
            where = ""
        super().__init__(where + problem)


def _ids(frame: pd.DataFrame, config: TrainConfig) -> pd.Series:
    """Customer ids of the table as strings (row numbers when there is no id column)."""
    id_column = config.data.id_column
    if id_column is None:
        return pd.Series(np.arange(len(frame)).astype(str), index=frame.index)
    return frame[id_column].astype("string")


def _row_label(ids: pd.Series, position: int) -> str:
    return row_label(position, ids.iloc[position])


# ---- the problems, worded once (the single-process checks below and the Dask engine's
# ---- per-partition summaries in training/partitioned.py raise the same messages) ----------
def row_label(position: int, customer_id: object) -> str:
    """How a message names a row: its position in the table and its id."""
    return f"row {position} (id {customer_id!s})"


def missing_ids_error(column: str, count: int, first_row: int) -> TableError:
    """Some ids are missing."""
    return TableError(f"{count} missing id(s), first at row {first_row}", column=column)


def duplicate_ids_error(column: str, n_ids: int, example: object, times: int) -> TableError:
    """Some ids occur more than once."""
    return TableError(
        f"duplicate ids: {n_ids} id(s) occur more than once, e.g. {example!s} ({times} times)",
        column=column,
    )


def non_numeric_error(column: str, example: object, where: str, count: int) -> TableError:
    """A numeric feature holds text that is not a number (with a hint for local formats)."""
    hint = _number_hint(example) if isinstance(example, str) else ""
    return TableError(
        f"non-numeric value {example!r} at {where} ({count} such value(s)){hint}", column=column
    )


def dates_error(column: str, dtype: object) -> TableError:
    """A numeric feature holds dates or durations."""
    return TableError(
        f"holds dates or durations ({dtype}), not numbers; derive a number from "
        "it (such as days since) or leave it out",
        column=column,
    )


def constant_numeric_error(column: str, value: float) -> TableError:
    """A numeric feature has one value."""
    return TableError(
        f"constant column (every value is {value:g}): it cannot separate customers", column=column
    )


def constant_categorical_error(column: str, value: object) -> TableError:
    """A categorical feature has one value."""
    return TableError(
        f"constant column (every value is {value!r}): it carries no information", column=column
    )


def feature_bounds(column: str, config: TrainConfig) -> tuple[float | None, float | None]:
    """The (low, high) values a numeric feature may take: its kind's domain, and >= 0 when a
    log transform is asked for it explicitly."""
    feats = config.features
    low, high = KIND_DOMAINS[feats.kinds.get(column, "numeric")]
    if not isinstance(feats.log, str) and column in feats.log and low is None:
        low = 0.0
    return low, high


def outside_domain_error(
    column: str, value: float, where: str, count: int, below: bool, config: TrainConfig
) -> TableError:
    """A numeric feature holds ``count`` values outside its bounds (``below`` the low one)."""
    feats = config.features
    kind = feats.kinds.get(column, "numeric")
    low, high = feature_bounds(column, config)
    explicit_log = not isinstance(feats.log, str) and column in feats.log
    bound = low if below else high
    reason = (
        "a log transform is asked for it"
        if explicit_log and kind not in ("amount", "count", "days", "ratio")
        else f"kind {kind!r} allows [{low:g}, {'inf' if high is None else f'{high:g}'}]"
    )
    return TableError(
        f"value {value:g} at {where} is "
        f"{'negative' if below and bound == 0 else 'outside the allowed range'}, "
        f"but {reason} ({count} such value(s))",
        column=column,
    )


def negative_log_error(name: str, value: float, position: int, count: int) -> TableError:
    """A feature that gets log1p holds negative values."""
    return TableError(
        f"negative value {value:g} at row {position} "
        f"({count} such value(s)), but a log transform is asked for it",
        column=name,
    )


def check_columns(frame: pd.DataFrame, config: TrainConfig) -> None:
    """Every configured column is present, and feature lists only name known features."""
    if len(frame) == 0:
        raise TableError("the customer table is empty (0 rows)")
    feats = config.features
    wanted = list(feats.numeric) + list(feats.categorical)
    for extra in (config.data.id_column, config.data.truth_column):
        if extra is not None:
            wanted.append(extra)
    responses = config.responses
    if responses is not None and responses.format == "wide" and responses.path is None:
        wanted.extend(responses.columns)
    absent = [c for c in wanted if c not in frame.columns]
    if absent:
        shown = ", ".join(map(str, list(frame.columns)[:40]))
        raise TableError(
            f"configured column(s) absent from the table: {', '.join(absent)}; "
            f"the table has: {shown}",
            column=absent[0],
        )
    if not feats.numeric:
        raise TableError("no numeric feature configured (features.numeric is empty)")
    numeric = set(feats.numeric)
    for d in feats.derived:
        for part in (d.numerator, d.denominator):
            if part not in numeric:
                raise TableError(
                    f"derived feature {d.name!r} uses {part!r}, which is not a numeric input",
                    column=part,
                )
    known = numeric | {d.name for d in feats.derived}
    lists = {"features.cluster": feats.cluster, "features.response": feats.response}
    if not isinstance(feats.log, str):
        lists["features.log"] = feats.log
    for list_name, names in lists.items():
        for name in names:
            if name not in known:
                raise TableError(
                    f"{list_name} names {name!r}, which is not a numeric or derived feature",
                    column=name,
                )
    cluster = set(feats.cluster or known)
    if not isinstance(feats.log, str):
        for name in feats.log:
            if name not in cluster:
                raise TableError(
                    f"features.log names {name!r}, which is not a cluster feature", column=name
                )


def check_ids(frame: pd.DataFrame, config: TrainConfig) -> None:
    """Ids are present and unique."""
    column = config.data.id_column
    if column is None:
        return
    ids = frame[column]
    missing = ids.isna().to_numpy()
    if missing.any():
        raise missing_ids_error(column, int(missing.sum()), int(np.argmax(missing)))
    text = ids.astype("string")
    duplicated = text.duplicated(keep=False)
    if duplicated.any():
        counts = text[duplicated].value_counts()
        raise duplicate_ids_error(column, len(counts), counts.index[0], int(counts.iloc[0]))


#: text that is a number written with thousands separators (1,234.50) or a decimal comma (12,5)
THOUSANDS_PATTERN = re.compile(r"^[-+]?\d{1,3}([,.' ]\d{3})+([.,]\d+)?$")
DECIMAL_COMMA_PATTERN = re.compile(r"^[-+]?\d+,\d+$")


def _number_hint(text: str) -> str:
    """How to read ``text`` when it is a number in a local format, else ''."""
    text = text.strip()
    if THOUSANDS_PATTERN.match(text):
        return (
            "; it looks like a number with thousands separators: set data.thousands "
            '(and data.decimal = "," if the decimal mark is a comma)'
        )
    if DECIMAL_COMMA_PATTERN.match(text):
        return '; it looks like a number with a decimal comma: set data.decimal = ","'
    return ""


def numeric_values(frame: pd.DataFrame, column: str, ids: pd.Series) -> np.ndarray:
    """The column as float (NaN for missing); a non-numeric, date or infinite value raises.

    Booleans read as 0/1. Dates and durations are refused rather than read as nanoseconds:
    derive a number from them (days since, age in years) before training.
    """
    series = frame[column]
    if pd.api.types.is_bool_dtype(series):
        return series.astype("float64").to_numpy()
    if pd.api.types.is_datetime64_any_dtype(series) or pd.api.types.is_timedelta64_dtype(series):
        raise dates_error(column, series.dtype)
    values = pd.to_numeric(series, errors="coerce")
    bad = (values.isna() & series.notna()).to_numpy()
    if bad.any():
        pos = int(np.argmax(bad))
        raise non_numeric_error(column, series.iloc[pos], _row_label(ids, pos), int(bad.sum()))
    out = values.to_numpy(dtype=np.float64, na_value=np.nan)
    infinite = np.isinf(out)
    if infinite.any():
        pos = int(np.argmax(infinite))
        raise TableError(f"infinite value at {_row_label(ids, pos)}", column=column)
    return out


def check_features(frame: pd.DataFrame, config: TrainConfig) -> dict[str, np.ndarray]:
    """Numeric features are numeric, not all missing, not constant and inside their kind's domain.

    Returns the numeric inputs as float arrays (NaN for missing), keyed by column.
    """
    feats = config.features
    ids = _ids(frame, config)
    columns: dict[str, np.ndarray] = {}
    for column in feats.numeric:
        values = numeric_values(frame, column, ids)
        observed = values[~np.isnan(values)]
        if observed.size == 0:
            raise TableError("all values are missing", column=column)
        if np.all(observed == observed[0]):
            raise constant_numeric_error(column, observed[0])
        low, high = feature_bounds(column, config)
        for bound, below in ((low, True), (high, False)):
            if bound is None:
                continue
            outside = (values < bound) if below else (values > bound)
            if outside.any():
                pos = int(np.argmax(outside))
                raise outside_domain_error(
                    column, values[pos], _row_label(ids, pos), int(outside.sum()), below, config
                )
        columns[column] = values
    for column in feats.categorical:
        observed = frame[column].dropna()
        if observed.empty:
            raise TableError("all values are missing", column=column)
        if observed.astype("string").nunique() == 1:
            raise constant_categorical_error(column, observed.iloc[0])
    return columns


def check_row_count(n_rows: int, config: TrainConfig) -> None:
    """Enough customers for the segmentation: k clusters, or k_max + 1 for the k search."""
    seg = config.segmentation
    if seg.k is not None:
        # the k search still records its evidence, and K-Means needs more rows than clusters
        needed, why = seg.k + 1, f"k={seg.k} + 1"
    else:
        # The silhouette needs fewer clusters than samples, so the largest k needs one more row.
        needed, why = seg.k_max + 1, f"k_max={seg.k_max} + 1 (the silhouette needs k < n)"
    if n_rows < needed:
        raise TableError(f"n_samples={n_rows} should be >= {needed} for {why}")


def check_log_values(
    numeric: np.ndarray, names: Sequence[str], log_features: Iterable[str]
) -> None:
    """Features that get log1p hold no negative value (derived features included)."""
    for name in log_features:
        values = numeric[:, list(names).index(name)]
        negative = values < 0
        if negative.any():
            pos = int(np.argmax(negative))
            raise negative_log_error(name, values[pos], pos, int(negative.sum()))


def decide_log_features(
    columns: Mapping[str, np.ndarray], cluster: Sequence[str], config: TrainConfig
) -> tuple[str, ...]:
    """Cluster features to log1p: the explicit list, or with ``"auto"`` the non-negative ones
    whose skewness (on observed values) exceeds ``features.skew_threshold``."""
    return log_features_from_skews({name: skewness(columns[name]) for name in cluster}, config)


def skewness(values: np.ndarray) -> float | None:
    """Skewness of the observed values; None when it does not decide a log transform (fewer
    than 3 values, a negative value, or no spread)."""
    observed = values[~np.isnan(values)]
    if observed.size < 3 or observed.min() < 0:
        return None
    std = observed.std()
    if std == 0:
        return None
    return float(np.mean(((observed - observed.mean()) / std) ** 3))


def log_features_from_skews(
    skews: Mapping[str, float | None], config: TrainConfig
) -> tuple[str, ...]:
    """The rule of :func:`decide_log_features` on precomputed skewness (cluster features in
    order, None for those that cannot take a log)."""
    log = config.features.log
    if not isinstance(log, str):
        return tuple(name for name in skews if name in set(log))
    threshold = config.features.skew_threshold
    return tuple(name for name, skew in skews.items() if skew is not None and skew > threshold)


def check_campaigns(campaigns: Sequence[Campaign]) -> None:
    """Campaign ids are well formed and unique; values are non-negative numbers."""
    seen: set[str] = set()
    for campaign in campaigns:
        cid = str(campaign.id)
        if re.fullmatch(CAMPAIGN_ID_PATTERN, cid) is None:
            raise TableError(
                f"invalid campaign id; expected {CAMPAIGN_ID_PATTERN} "
                "(letters, digits, _ . -, at most 64)",
                campaign=cid,
            )
        if cid in seen:
            raise TableError("duplicate campaign id in the pool", campaign=cid)
        seen.add(cid)
        value = campaign.value
        if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
            raise TableError(f"value {value!r} is not a number", campaign=cid)
        if value < 0:
            raise TableError(f"value {value:g} is negative", campaign=cid)


def response_values(values: pd.Series, config: TrainConfig, column: str) -> np.ndarray:
    """Map response values to 0/1: numbers 0/1, booleans, or the configured words."""
    if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        # Fast path for large numeric histories: only exact 0 and 1 are accepted.
        numbers = values.to_numpy(dtype=np.float64, na_value=np.nan)
        bad = ~((numbers == 0) | (numbers == 1))
        if not bad.any():
            return (numbers == 1).astype(np.int8)
        pos = int(np.argmax(bad))
        raise TableError(
            f"response value {numbers[pos]:g} at row {pos} is not 0 or 1 "
            f"({int(bad.sum())} such value(s))",
            column=column,
        )
    responses = config.responses
    positive = {v.lower() for v in responses.positive_values} if responses else {"1"}
    negative = {v.lower() for v in responses.negative_values} if responses else {"0"}
    text = values.astype("string").str.strip().str.lower()
    # Numbers written as 1.0 / 0.0 (a float column) count as 1 / 0.
    text = text.replace({"1.0": "1", "0.0": "0"})
    is_pos = text.isin(positive).to_numpy(dtype=bool, na_value=False)
    is_neg = text.isin(negative).to_numpy(dtype=bool, na_value=False)
    bad = ~(is_pos | is_neg)
    if bad.any():
        pos = int(np.argmax(bad))
        raise TableError(
            f"response value {str(values.iloc[pos])!r} at row {pos} is not 0/1 or one of "
            f"{sorted(positive | negative)} ({int(bad.sum())} such value(s))",
            column=column,
        )
    return is_pos.astype(np.int8)


def positions(values: pd.Series, universe: Sequence[str] | pd.Index) -> np.ndarray:
    """Position of each value (as text) within ``universe``; -1 where it is absent."""
    # pyarrow's hash lookup is an order of magnitude faster than pandas reindexing on
    # millions of string ids.
    found = pc.index_in(
        pa.array(values.astype("string"), type=pa.large_string()),
        value_set=pa.array(pd.Series(universe).astype("string"), type=pa.large_string()),
    )
    return found.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)


def locate_responses(
    responses: pd.DataFrame, customer_ids: pd.Index, campaigns: Sequence[Campaign]
) -> tuple[np.ndarray, np.ndarray]:
    """Check that long-form responses name known customers and campaigns; return their
    positions (customer row, campaign pool index)."""
    if len(responses) == 0:
        raise TableError("the response history is empty (0 rows)", column="responded")
    if not campaigns:
        raise TableError(
            "there is a response history but the campaign pool is empty", column="campaign_id"
        )
    for column in ("customer_id", "campaign_id"):
        missing = responses[column].isna().to_numpy()
        if missing.any():
            raise TableError(
                f"{int(missing.sum())} response row(s) without a value, first at row "
                f"{int(np.argmax(missing))}",
                column=column,
            )
    pool = [c.id for c in campaigns]
    campaign_idx = positions(responses["campaign_id"], pool)
    unknown = campaign_idx < 0
    if unknown.any():
        counts = responses.loc[unknown, "campaign_id"].value_counts()
        raise TableError(
            f"{int(counts.iloc[0])} response(s) for a campaign that is not in the pool "
            f"(pool: {', '.join(sorted(pool))})",
            campaign=str(counts.index[0]),
        )
    customer_idx = positions(responses["customer_id"], customer_ids)
    unknown = customer_idx < 0
    if unknown.any():
        example = responses["customer_id"].iloc[int(np.argmax(unknown))]
        raise TableError(
            f"{int(unknown.sum())} response(s) for customer(s) not in the customer table, "
            f"e.g. {example!s}",
            column="customer_id",
        )
    return customer_idx, campaign_idx


def collapse_duplicate_responses(responses: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """One row per (customer_idx, campaign_idx): a customer who responded to any of several
    records of the same campaign counts as having responded (the maximum is kept).

    Repeated rows would weigh a customer several times, and the model answers "will this
    customer respond to this campaign", not "to this send". Returns the rows and how many
    duplicates were dropped; the first occurrence's position decides the order.
    """
    key = ["customer_idx", "campaign_idx"]
    duplicated = responses.duplicated(key, keep=False).to_numpy()
    if not duplicated.any():
        return responses, 0
    best = responses.groupby(key, sort=False)["responded"].transform("max")
    kept = responses.assign(responded=best.astype(np.int8)).drop_duplicates(key, keep="first")
    return kept.reset_index(drop=True), len(responses) - len(kept)


def eligibility_warnings(campaigns: Sequence[Campaign], segment_names: Sequence[str]) -> list[str]:
    """Problems of the pool's ``eligible_segments`` once the segments are known.

    An entry that names no segment (by name or id) is reported; a campaign left eligible for
    no segment at all is reported as never recommended. These are warnings, not refusals: a
    pool is often written before the segments are named and reused across retrainings.
    """
    out = []
    for campaign in campaigns:
        if campaign.eligible_segments is None:
            continue
        unknown = campaign.unknown_segments(segment_names)
        if unknown:
            out.append(
                f"campaign {campaign.id!r}: eligible_segments names no segment: "
                f"{', '.join(map(repr, unknown))} (segments: {', '.join(segment_names)})"
            )
        if len(unknown) == len(campaign.eligible_segments):
            out.append(
                f"campaign {campaign.id!r}: eligible for no segment, it will never be recommended"
            )
    return out
