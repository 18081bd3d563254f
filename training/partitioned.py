"""Per-partition summaries of a customer table, and how summaries of consecutive partitions combine.

The Dask engine checks and measures a table it never holds whole: each partition is summarised
here (counts, first offending row, extremes, moments), the summaries are combined in row order,
and the combined summary is checked with the single-process path's own messages
(``training.validate``): a problem is reported with the same column, count, first row and id as
if the table had been read at once. Moments combine with the pairwise formulas of Chan, Golub and
LeVeque (numerically stable, unlike raw power sums), so the scaler, the PCA covariance and the
skewness equal the single-process ones to rounding. Pure pandas/numpy: testable without Dask.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from training.config import TrainConfig
from training.validate import (
    TableError,
    constant_categorical_error,
    constant_numeric_error,
    feature_bounds,
    missing_ids_error,
    negative_log_error,
    non_numeric_error,
    outside_domain_error,
    row_label,
)


@dataclass(frozen=True)
class Example:
    """The first row showing a problem: position in the table, the value and the row's id."""

    position: int
    value: Any
    customer: str

    def shifted(self, offset: int) -> Example:
        """The same row seen from a table that starts ``offset`` rows earlier."""
        return replace(self, position=self.position + offset)


def _first(a: Example | None, b: Example | None, offset: int) -> Example | None:
    """The earlier of two first examples; ``b`` comes from a part starting at ``offset``."""
    if a is not None:
        return a
    return None if b is None else b.shifted(offset)


@dataclass(frozen=True)
class NumericSummary:
    """One numeric input over some rows: what its checks need."""

    non_numeric: int = 0
    first_non_numeric: Example | None = None
    infinite: int = 0
    first_infinite: Example | None = None
    observed: int = 0
    missing: int = 0
    minimum: float = np.inf
    maximum: float = -np.inf
    below: int = 0
    first_below: Example | None = None
    above: int = 0
    first_above: Example | None = None

    def then(self, other: NumericSummary, offset: int) -> NumericSummary:
        """This summary followed by ``other``, whose rows start at ``offset``."""
        return NumericSummary(
            non_numeric=self.non_numeric + other.non_numeric,
            first_non_numeric=_first(self.first_non_numeric, other.first_non_numeric, offset),
            infinite=self.infinite + other.infinite,
            first_infinite=_first(self.first_infinite, other.first_infinite, offset),
            observed=self.observed + other.observed,
            missing=self.missing + other.missing,
            minimum=min(self.minimum, other.minimum),
            maximum=max(self.maximum, other.maximum),
            below=self.below + other.below,
            first_below=_first(self.first_below, other.first_below, offset),
            above=self.above + other.above,
            first_above=_first(self.first_above, other.first_above, offset),
        )


@dataclass(frozen=True)
class CategoricalSummary:
    """One categorical column over some rows: observed count and up to two distinct values."""

    observed: int = 0
    #: the first distinct values in row order (two are enough to know it is not constant)
    values: tuple[str, ...] = ()
    first_value: Any = None

    def then(self, other: CategoricalSummary, offset: int) -> CategoricalSummary:
        """This summary followed by ``other``."""
        values = self.values + tuple(v for v in other.values if v not in self.values)
        return CategoricalSummary(
            observed=self.observed + other.observed,
            values=values[:2],
            first_value=self.first_value if self.observed else other.first_value,
        )


@dataclass(frozen=True)
class TableSummary:
    """A customer table (or some consecutive rows of it) as its checks see it."""

    rows: int = 0
    missing_ids: int = 0
    first_missing_id: int | None = None
    numeric: dict[str, NumericSummary] = field(default_factory=dict)
    categorical: dict[str, CategoricalSummary] = field(default_factory=dict)

    def then(self, other: TableSummary) -> TableSummary:
        """This part of the table followed by the next one."""
        offset = self.rows
        first_missing = self.first_missing_id
        if first_missing is None and other.first_missing_id is not None:
            first_missing = other.first_missing_id + offset
        return TableSummary(
            rows=self.rows + other.rows,
            missing_ids=self.missing_ids + other.missing_ids,
            first_missing_id=first_missing,
            numeric={
                k: self.numeric.get(k, NumericSummary()).then(v, offset)
                for k, v in other.numeric.items()
            },
            categorical={
                k: self.categorical.get(k, CategoricalSummary()).then(v, offset)
                for k, v in other.categorical.items()
            },
        )


def combine(parts: list[TableSummary]) -> TableSummary:
    """The summary of the whole table from its partitions' summaries, in row order."""
    total = TableSummary()
    for part in parts:
        total = total.then(part)
    return total


def _ids(frame: pd.DataFrame, config: TrainConfig) -> np.ndarray:
    column = config.data.id_column
    if column is None:
        return np.arange(len(frame)).astype(str)  # shifted when reported (see Example)
    return frame[column].astype("string").to_numpy(dtype=object, na_value=None)


def _example(mask: np.ndarray, values: Any, ids: np.ndarray, numbered: bool) -> Example | None:
    if not mask.any():
        return None
    pos = int(np.argmax(mask))
    value = values.iloc[pos] if isinstance(values, pd.Series) else values[pos]
    return Example(pos, value, "" if numbered else str(ids[pos]))


def numeric_inputs(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """The numeric inputs as float64 (NaN for missing or unreadable), booleans as 0/1."""
    out = {}
    for column in columns:
        series = frame[column]
        if pd.api.types.is_bool_dtype(series):
            out[column] = series.astype("float64").to_numpy()
        else:
            out[column] = pd.to_numeric(series, errors="coerce").to_numpy(
                dtype=np.float64, na_value=np.nan
            )
    return pd.DataFrame(out, index=frame.index)


def summarize(frame: pd.DataFrame, config: TrainConfig) -> TableSummary:
    """The summary of one partition (positions relative to its first row)."""
    feats = config.features
    numbered = config.data.id_column is None
    ids = _ids(frame, config)
    missing_ids, first_missing = 0, None
    if not numbered:
        missing = frame[config.data.id_column].isna().to_numpy()
        missing_ids = int(missing.sum())
        first_missing = int(np.argmax(missing)) if missing_ids else None
    converted = numeric_inputs(frame, list(feats.numeric))
    numeric = {}
    for column in feats.numeric:
        series = frame[column]
        values = converted[column].to_numpy()
        bad = np.isnan(values) & series.notna().to_numpy()
        infinite = np.isinf(values)
        finite = values[~np.isnan(values)]
        low, high = feature_bounds(column, config)
        below = values < low if low is not None else np.zeros(len(values), dtype=bool)
        above = values > high if high is not None else np.zeros(len(values), dtype=bool)
        numeric[column] = NumericSummary(
            non_numeric=int(bad.sum()),
            first_non_numeric=_example(bad, series, ids, numbered),
            infinite=int(infinite.sum()),
            first_infinite=_example(infinite, values, ids, numbered),
            observed=int(finite.size),
            missing=int(len(values) - finite.size),
            minimum=float(finite.min()) if finite.size else np.inf,
            maximum=float(finite.max()) if finite.size else -np.inf,
            below=int(below.sum()),
            first_below=_example(below, values, ids, numbered),
            above=int(above.sum()),
            first_above=_example(above, values, ids, numbered),
        )
    categorical = {}
    for column in feats.categorical:
        observed = frame[column].dropna()
        distinct = observed.astype("string").unique()[:2]
        categorical[column] = CategoricalSummary(
            observed=int(observed.size),
            values=tuple(str(v) for v in distinct[:2]),
            first_value=observed.iloc[0] if observed.size else None,
        )
    return TableSummary(
        rows=len(frame),
        missing_ids=missing_ids,
        first_missing_id=first_missing,
        numeric=numeric,
        categorical=categorical,
    )


def _where(example: Example, numbered: bool) -> str:
    # without an id column the id is the row number itself
    return row_label(example.position, example.position if numbered else example.customer)


def check_ids(summary: TableSummary, config: TrainConfig) -> None:
    """Missing ids (duplicates need every id at once: the engine counts them on the cluster)."""
    if config.data.id_column is not None and summary.missing_ids:
        raise missing_ids_error(
            config.data.id_column, summary.missing_ids, int(summary.first_missing_id or 0)
        )


def check_features(summary: TableSummary, config: TrainConfig) -> None:
    """The checks of ``validate.check_features``, in its order, on a combined summary."""
    numbered = config.data.id_column is None
    for column in config.features.numeric:
        s = summary.numeric[column]
        if s.first_non_numeric is not None:
            raise non_numeric_error(
                column,
                s.first_non_numeric.value,
                _where(s.first_non_numeric, numbered),
                s.non_numeric,
            )
        if s.first_infinite is not None:
            raise TableError(
                f"infinite value at {_where(s.first_infinite, numbered)}", column=column
            )
        if s.observed == 0:
            raise TableError("all values are missing", column=column)
        if s.minimum == s.maximum:
            raise constant_numeric_error(column, s.minimum)
        for count, example, below in (
            (s.below, s.first_below, True),
            (s.above, s.first_above, False),
        ):
            if example is not None:
                raise outside_domain_error(
                    column, example.value, _where(example, numbered), count, below, config
                )
    for column in config.features.categorical:
        c = summary.categorical[column]
        if c.observed == 0:
            raise TableError("all values are missing", column=column)
        if len(c.values) == 1:
            raise constant_categorical_error(column, c.first_value)


# ---- moments ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Moments:
    """Count, mean and centred sums of squares and cubes of some columns (per column), with the
    centred cross-product matrix when asked for, and negative counts for the log check."""

    n: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    m3: np.ndarray
    scatter: np.ndarray | None = None
    negative: np.ndarray | None = None
    #: per column (position, value) of the first negative value, or None
    first_negative: tuple = ()

    @classmethod
    def of(cls, X: np.ndarray, cross: bool = False) -> Moments:
        """Moments of the non-missing values of each column of ``X`` (n_rows, n_columns)."""
        observed = ~np.isnan(X)
        n = observed.sum(axis=0).astype(np.float64)
        safe = np.where(observed, X, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(n > 0, safe.sum(axis=0) / np.maximum(n, 1), 0.0)
        centred = np.where(observed, X - mean, 0.0)
        negative = (X < 0) & observed
        firsts = []
        for j in range(X.shape[1]):
            col = negative[:, j]
            firsts.append((int(np.argmax(col)), float(X[np.argmax(col), j])) if col.any() else None)
        return cls(
            n=n,
            mean=mean,
            m2=(centred**2).sum(axis=0),
            m3=(centred**3).sum(axis=0),
            scatter=centred.T @ centred if cross else None,
            negative=negative.sum(axis=0).astype(np.int64),
            first_negative=tuple(firsts),
        )

    def then(self, other: Moments, offset: int) -> Moments:
        """This part's moments followed by ``other``'s (rows starting at ``offset``)."""
        na, nb = self.n, other.n
        n = na + nb
        with np.errstate(invalid="ignore", divide="ignore"):
            delta = other.mean - self.mean
            w = np.where(n > 0, na * nb / np.maximum(n, 1), 0.0)
            mean = np.where(n > 0, self.mean + delta * nb / np.maximum(n, 1), 0.0)
            m2 = self.m2 + other.m2 + delta**2 * w
            m3 = (
                self.m3
                + other.m3
                + np.where(n > 0, delta**3 * w * (na - nb) / np.maximum(n, 1), 0.0)
                + np.where(
                    n > 0, 3.0 * delta * (na * other.m2 - nb * self.m2) / np.maximum(n, 1), 0.0
                )
            )
        scatter = None
        if self.scatter is not None and other.scatter is not None:
            # every column of the cluster matrix is complete, so one count serves all
            scatter = self.scatter + other.scatter + np.outer(delta, delta) * float(w[0])
        firsts = tuple(
            a if a is not None else (None if b is None else (b[0] + offset, b[1]))
            for a, b in zip(self.first_negative, other.first_negative, strict=True)
        )
        return Moments(
            n=n,
            mean=mean,
            m2=m2,
            m3=m3,
            scatter=scatter,
            negative=self.negative + other.negative,
            first_negative=firsts,
        )

    def skewness(self, j: int, minimum_ok: bool) -> float | None:
        """Skewness of column ``j`` as ``validate.skewness`` defines it (None when undecided)."""
        if self.n[j] < 3 or not minimum_ok or self.m2[j] <= 0:
            return None
        return float(np.sqrt(self.n[j]) * self.m3[j] / self.m2[j] ** 1.5)

    def check_log_values(self, names: list[str], log_features: tuple[str, ...]) -> None:
        """``validate.check_log_values`` on the combined moments."""
        for name in log_features:
            j = names.index(name)
            if self.first_negative[j] is not None:
                pos, value = self.first_negative[j]
                raise negative_log_error(name, value, pos, int(self.negative[j]))


def combine_moments(parts: list[tuple[int, Moments]]) -> Moments:
    """The moments of the whole table from (rows, moments) of its partitions, in row order."""
    total: Moments | None = None
    offset = 0
    for rows, part in parts:
        total = part if total is None else total.then(part, offset)
        offset += rows
    if total is None:
        raise TableError("the customer table is empty (0 rows)")
    return total


def adjusted_rand_from_contingency(table: np.ndarray) -> float:
    """Adjusted Rand index from a contingency table of two labellings (sklearn's definition)."""
    table = np.asarray(table, dtype=np.float64)
    n = table.sum()
    if n < 2:
        return 1.0

    def pairs(x: np.ndarray | float) -> np.ndarray | float:
        return x * (x - 1) / 2.0

    index = pairs(table).sum()
    rows = pairs(table.sum(axis=1)).sum()
    cols = pairs(table.sum(axis=0)).sum()
    expected = rows * cols / pairs(n)
    maximum = (rows + cols) / 2.0
    if maximum == expected:
        return 1.0
    return float((index - expected) / (maximum - expected))
