"""Feature schema of a bundle and the derivations both training and serving apply.

A customer enters as raw *inputs* (numeric, maybe missing) and optional *categoricals*.
The pipeline, identical offline and online, is:

    inputs --impute(medians)--> --derive(ratios)--> numeric features
    numeric features[cluster] --log1p(selected)--> --scale--> --PCA--> --K-Means--> segment
    numeric features[response] + categorical codes + segment + campaign --> LightGBM

This module holds the schema (what the columns are, their kinds and domains) and the pure
functions for imputation and derivation, written once for pandas frames and numpy arrays.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

#: Kinds of numeric input and the domain the service enforces for each.
#: ``amount``/``count``/``days`` are non-negative, ``ratio`` lies in [0, 1], ``numeric`` is free.
KIND_DOMAINS: dict[str, tuple[float | None, float | None]] = {
    "amount": (0.0, None),
    "count": (0.0, None),
    "days": (0.0, None),
    "ratio": (0.0, 1.0),
    "numeric": (None, None),
}


@dataclass(frozen=True)
class NumericInput:
    """One numeric input column: its kind, domain and what training observed."""

    name: str
    kind: str = "numeric"
    #: optional inputs may be omitted or null and are then imputed with ``median``
    required: bool = True
    median: float = 0.0
    observed_min: float | None = None
    observed_max: float | None = None
    description: str = ""

    @property
    def minimum(self) -> float | None:
        """Smallest accepted value (from the kind), or None."""
        return KIND_DOMAINS[self.kind][0]

    @property
    def maximum(self) -> float | None:
        """Largest accepted value (from the kind), or None."""
        return KIND_DOMAINS[self.kind][1]


@dataclass(frozen=True)
class CategoricalInput:
    """One categorical input column; unseen or missing values map to code NaN (LightGBM: missing)."""

    name: str
    categories: tuple[str, ...]
    required: bool = False
    description: str = ""


@dataclass(frozen=True)
class DerivedFeature:
    """A feature computed from inputs: ``numerator / denominator`` (``fill`` when denominator <= 0)."""

    name: str
    numerator: str
    denominator: str
    fill: float = 0.0
    description: str = ""


@dataclass(frozen=True)
class FeatureSchema:
    """Everything needed to turn a customer record into model inputs, in a fixed order."""

    inputs: tuple[NumericInput, ...]
    derived: tuple[DerivedFeature, ...] = ()
    categoricals: tuple[CategoricalInput, ...] = ()
    #: numeric feature names (inputs or derived) that enter the clustering, in order
    cluster_features: tuple[str, ...] = ()
    #: subset of ``cluster_features`` that gets log1p before scaling
    log_features: tuple[str, ...] = ()
    #: numeric feature names (inputs or derived) that enter the response model, in order
    response_features: tuple[str, ...] = ()
    id_column: str = "customer_id"

    # ---- names and positions -------------------------------------------------------------
    @property
    def input_names(self) -> list[str]:
        """Names of the numeric inputs, in order."""
        return [f.name for f in self.inputs]

    @property
    def numeric_names(self) -> list[str]:
        """Inputs followed by derived features: the columns of :func:`numeric_matrix`."""
        return self.input_names + [d.name for d in self.derived]

    @property
    def categorical_names(self) -> list[str]:
        """Names of the categorical inputs, in order."""
        return [c.name for c in self.categoricals]

    def cluster_index(self) -> np.ndarray:
        """Positions of the cluster features within the numeric matrix."""
        names = self.numeric_names
        return np.array([names.index(n) for n in self.cluster_features], dtype=np.intp)

    def log_mask(self) -> np.ndarray:
        """Boolean mask over cluster features: True where log1p is applied."""
        logs = set(self.log_features)
        return np.array([n in logs for n in self.cluster_features], dtype=bool)

    def response_index(self) -> np.ndarray:
        """Positions of the response-model numeric features within the numeric matrix."""
        names = self.numeric_names
        return np.array([names.index(n) for n in self.response_features], dtype=np.intp)

    def medians(self) -> np.ndarray:
        """Imputation values of the numeric inputs, learned at training time."""
        return np.array([f.median for f in self.inputs], dtype=np.float64)

    @property
    def response_model_columns(self) -> list[str]:
        """Column order of the LightGBM model: numeric, categorical codes, segment, campaign.

        The last two are the model's own columns; a table may have a feature of the same name
        (bank telemarketing has ``campaign``), so ours get underscores appended until unique.
        """
        columns = list(self.response_features) + self.categorical_names
        for base in ("segment", "campaign"):
            name = base
            while name in columns:
                name += "_"
            columns.append(name)
        return columns

    def response_layout(self) -> ResponseLayout:
        """Where each part of a response-model row goes, read from the model's column list."""
        return ResponseLayout.of(self)

    # ---- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form, stored in the manifest."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSchema:
        """Inverse of :meth:`to_dict`."""
        return cls(
            inputs=tuple(NumericInput(**f) for f in data["inputs"]),
            derived=tuple(DerivedFeature(**d) for d in data.get("derived", ())),
            categoricals=tuple(
                CategoricalInput(**{**c, "categories": tuple(c["categories"])})
                for c in data.get("categoricals", ())
            ),
            cluster_features=tuple(data.get("cluster_features", ())),
            log_features=tuple(data.get("log_features", ())),
            response_features=tuple(data.get("response_features", ())),
            id_column=data.get("id_column", "customer_id"),
        )


# ---- pure transformations, shared by training and serving ---------------------------------
def impute(raw: np.ndarray, medians: np.ndarray) -> np.ndarray:
    """Return ``raw`` (n, n_inputs) with NaN replaced by the per-column medians (a new array)."""
    out = np.array(raw, dtype=np.float64, copy=True)
    mask = np.isnan(out)
    if mask.any():
        out[mask] = np.broadcast_to(medians, out.shape)[mask]
    return out


def derive(inputs: np.ndarray, schema: FeatureSchema) -> np.ndarray:
    """Append the derived features to imputed inputs: (n, n_inputs) -> (n, n_numeric)."""
    if not schema.derived:
        return inputs
    names = schema.input_names
    extra = np.empty((inputs.shape[0], len(schema.derived)), dtype=np.float64)
    for j, d in enumerate(schema.derived):
        num = inputs[:, names.index(d.numerator)]
        den = inputs[:, names.index(d.denominator)]
        # Division only where the denominator is positive: a customer with no orders has no
        # average order value, which we define as ``fill`` rather than inf or NaN.
        ok = den > 0
        col = np.full(inputs.shape[0], d.fill, dtype=np.float64)
        np.divide(num, den, out=col, where=ok)
        extra[:, j] = col
    return np.hstack([inputs, extra])


def numeric_matrix(raw: np.ndarray, schema: FeatureSchema) -> np.ndarray:
    """Raw numeric inputs (NaN for missing) -> imputed inputs plus derived features."""
    return derive(impute(raw, schema.medians()), schema)


def cluster_matrix(numeric: np.ndarray, schema: FeatureSchema) -> np.ndarray:
    """Select the cluster features and apply log1p where configured (before scaling)."""
    c = numeric[:, schema.cluster_index()].astype(np.float64, copy=True)
    mask = schema.log_mask()
    if mask.any():
        c[:, mask] = log1p_clipped(c[:, mask])
    return c


def log1p_clipped(values: np.ndarray) -> np.ndarray:
    """``log1p`` of values clipped at 0: the one log transform of every scorer.

    Values are validated non-negative upstream; the clip guards against -0.0 and tiny negative
    noise so log1p never yields NaN. The single-customer path calls this same numpy function
    (not ``math.log1p``, which may differ in the last bit where numpy uses SIMD code).
    """
    return np.log1p(np.maximum(values, 0.0))


def encode_categoricals(values: list[list[Any]] | np.ndarray, schema: FeatureSchema) -> np.ndarray:
    """Map categorical values (n, n_categoricals) to integer codes as float; unknown -> NaN."""
    n = len(values)
    out = np.full((n, len(schema.categoricals)), np.nan, dtype=np.float64)
    for j, cat in enumerate(schema.categoricals):
        lookup = {v: float(i) for i, v in enumerate(cat.categories)}
        for i in range(n):
            v = values[i][j]
            if v is not None:
                out[i, j] = lookup.get(str(v), np.nan)
    return out


def encode_columns(columns: list[list[Any]] | Any, schema: FeatureSchema, n: int) -> np.ndarray:
    """:func:`encode_categoricals` for values given column by column (one list per categorical,
    ``n`` values each): the same codes."""
    out = np.full((n, len(schema.categoricals)), np.nan, dtype=np.float64)
    for j, cat in enumerate(schema.categoricals):
        lookup = {v: float(i) for i, v in enumerate(cat.categories)}
        nan = np.nan
        out[:, j] = [nan if v is None else lookup.get(str(v), nan) for v in columns[j]]
    return out


def frame_to_raw(frame, schema: FeatureSchema) -> tuple[np.ndarray, np.ndarray]:
    """Pandas frame -> (raw numeric inputs with NaN, categorical codes), columns in schema order."""
    raw = frame[schema.input_names].to_numpy(dtype=np.float64, na_value=np.nan)
    codes = np.full((len(frame), len(schema.categoricals)), np.nan, dtype=np.float64)
    for j, cat in enumerate(schema.categoricals):
        lookup = {v: i for i, v in enumerate(cat.categories)}
        col = frame[cat.name].astype("string")
        codes[:, j] = col.map(lookup).astype("float64").to_numpy(na_value=np.nan)
    return raw, codes


@dataclass(frozen=True)
class ResponseLayout:
    """The layout of a response-model row, driven by ``FeatureSchema.response_model_columns``.

    A row is the response features, the categorical codes, the segment id and the campaign's
    pool position, in the column order the model was trained with. Every place that builds such
    rows (the engine, the single-customer path, training, the reference path) asks this object
    where each part goes, so a table with its own ``segment`` or ``campaign`` feature cannot
    shift a column.
    """

    #: the model's columns, in order
    columns: tuple[str, ...]
    #: positions of the response features within the numeric matrix, in column order
    numeric_index: tuple[int, ...]
    #: model columns of the response features (a slice: they come first)
    numeric_slots: slice
    #: model columns of the categorical codes
    code_slots: slice
    #: model column of the segment id, and its name
    segment_slot: int
    segment_column: str
    #: model column of the campaign's pool position, and its name
    campaign_slot: int
    campaign_column: str

    @classmethod
    def of(cls, schema: FeatureSchema) -> ResponseLayout:
        """The layout of ``schema``'s response model."""
        columns = tuple(schema.response_model_columns)
        numeric = schema.numeric_names
        nr, nc = len(schema.response_features), len(schema.categoricals)
        return cls(
            columns=columns,
            numeric_index=tuple(numeric.index(n) for n in schema.response_features),
            numeric_slots=slice(0, nr),
            code_slots=slice(nr, nr + nc),
            segment_slot=nr + nc,
            segment_column=columns[nr + nc],
            campaign_slot=nr + nc + 1,
            campaign_column=columns[nr + nc + 1],
        )

    @property
    def width(self) -> int:
        """Number of model columns."""
        return len(self.columns)

    def rows(
        self,
        numeric: np.ndarray,
        codes: np.ndarray,
        segment: np.ndarray,
        customer: np.ndarray,
        campaign: np.ndarray,
    ) -> np.ndarray:
        """Model rows for (customer, campaign) pairs: ``numeric`` (n, n_numeric), ``codes``
        (n, n_categoricals) and ``segment`` (n,) per customer; ``customer`` and ``campaign``
        (r,) per row. Returns (r, width) float64."""
        rows = np.empty((customer.shape[0], self.width), dtype=np.float64)
        rows[:, self.numeric_slots] = numeric[customer][:, list(self.numeric_index)]
        if codes.shape[1]:
            rows[:, self.code_slots] = codes[customer]
        rows[:, self.segment_slot] = segment[customer]
        rows[:, self.campaign_slot] = campaign
        return rows

    def dense_rows(
        self,
        numeric: np.ndarray,
        codes: np.ndarray,
        segment: np.ndarray,
        m: int,
        *,
        campaign_major: bool = False,
    ) -> np.ndarray:
        """:meth:`rows` for every (customer, campaign) pair of ``m`` campaigns, built by
        broadcasting (no index arrays): customer-major (row ``i * m + j`` is customer i with
        campaign j) or ``campaign_major`` (row ``j * n + i``). Each row is the same either way;
        the order only changes how fast compiled trees walk them
        (:attr:`scoring.propensity.PropensityModel.campaign_major`)."""
        n = numeric.shape[0]
        values = numeric[:, list(self.numeric_index)]
        if campaign_major:
            rows = np.empty((m, n, self.width), dtype=np.float64)
            rows[:, :, self.numeric_slots] = values[None, :, :]
            if codes.shape[1]:
                rows[:, :, self.code_slots] = codes[None, :, :]
            rows[:, :, self.segment_slot] = segment[None, :]
            rows[:, :, self.campaign_slot] = np.arange(m, dtype=np.float64)[:, None]
        else:
            rows = np.empty((n, m, self.width), dtype=np.float64)
            rows[:, :, self.numeric_slots] = values[:, None, :]
            if codes.shape[1]:
                rows[:, :, self.code_slots] = codes[:, None, :]
            rows[:, :, self.segment_slot] = segment[:, None]
            rows[:, :, self.campaign_slot] = np.arange(m, dtype=np.float64)
        return rows.reshape(n * m, self.width)

    def row(self, numeric: list[float], codes: list[float], segment: int, campaign: int) -> list:
        """One model row in plain Python (the single-customer path): ``numeric`` is the full
        numeric feature list of the customer, ``codes`` its categorical codes."""
        out = [0.0] * self.width
        for slot, i in enumerate(self.numeric_index):
            out[slot] = numeric[i]
        out[self.code_slots] = codes
        out[self.segment_slot] = float(segment)
        out[self.campaign_slot] = float(campaign)
        return out
