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

from dataclasses import asdict, dataclass, field
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
    """One categorical input column; unseen or missing values map to code -1 (LightGBM: missing)."""

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
        # Values are validated non-negative upstream; clip guards against -0.0 and tiny
        # negative noise so log1p never yields NaN.
        c[:, mask] = np.log1p(np.clip(c[:, mask], 0.0, None))
    return c


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


def frame_to_raw(frame, schema: FeatureSchema) -> tuple[np.ndarray, np.ndarray]:
    """Pandas frame -> (raw numeric inputs with NaN, categorical codes), columns in schema order."""
    raw = frame[schema.input_names].to_numpy(dtype=np.float64, na_value=np.nan)
    codes = np.full((len(frame), len(schema.categoricals)), np.nan, dtype=np.float64)
    for j, cat in enumerate(schema.categoricals):
        lookup = {v: i for i, v in enumerate(cat.categories)}
        col = frame[cat.name].astype("string")
        codes[:, j] = col.map(lookup).astype("float64").to_numpy(na_value=np.nan)
    return raw, codes


@dataclass
class Campaign:
    """One campaign of the pool. ``eligible_segments`` None means every segment."""

    id: str
    name: str
    value: float
    channel: str = "any"
    description: str = ""
    eligible_segments: list[str] | None = field(default=None)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form, stored as campaigns.json."""
        return asdict(self)
