"""Typed training configuration: read from a TOML file, overridden by CLI flags."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class DerivedSpec:
    """A derived ratio feature: numerator / denominator (``fill`` when denominator <= 0)."""

    name: str
    numerator: str
    denominator: str
    fill: float = 0.0


@dataclass(frozen=True)
class TransactionsConfig:
    """Raw transactions from which RFM features are derived (instead of a customer table)."""

    path: str
    customer_column: str = "customer_id"
    date_column: str = "date"
    amount_column: str = "amount"
    date_format: str | None = None
    #: reference date for recency; default: the day after the last transaction
    as_of: str | None = None
    separator: str | None = None


@dataclass(frozen=True)
class DataConfig:
    """Where the customer table is and how to read it."""

    #: CSV or Parquet, one row per customer (or None when ``transactions`` is given)
    customers: str | None = None
    #: CSV delimiter; None detects it (comma, semicolon, tab)
    separator: str | None = None
    #: id column; None numbers the rows (a table without ids, like bank-full.csv)
    id_column: str | None = "customer_id"
    #: column holding planted segment labels (generated data only); never a feature
    truth_column: str | None = None
    transactions: TransactionsConfig | None = None


@dataclass(frozen=True)
class FeaturesConfig:
    """Which columns are features and how they are treated."""

    #: numeric input columns, in order
    numeric: tuple[str, ...] = ()
    #: column -> kind (amount, count, days, ratio, numeric); unlisted columns are "numeric"
    kinds: dict[str, str] = field(default_factory=dict)
    #: categorical input columns (response model only)
    categorical: tuple[str, ...] = ()
    derived: tuple[DerivedSpec, ...] = ()
    #: features entering the clustering; empty means all numeric inputs and derived features
    cluster: tuple[str, ...] = ()
    #: "auto" (non-negative and skew > ``skew_threshold``) or an explicit list of features
    log: str | tuple[str, ...] = "auto"
    skew_threshold: float = 1.0
    #: numeric features entering the response model; empty means all numeric and derived
    response: tuple[str, ...] = ()


@dataclass(frozen=True)
class CampaignsConfig:
    """The campaign pool: a file (CSV, JSON or TOML) or entries inline in the config."""

    pool: str | None = None
    inline: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class ResponsesConfig:
    """The campaign-response history, long or wide."""

    #: "long" (customer, campaign, responded rows) or "wide" (0/1 columns)
    format: str = "long"
    #: file with the history; None means wide columns inside the customer table
    path: str | None = None
    separator: str | None = None
    customer_column: str = "customer_id"
    campaign_column: str = "campaign_id"
    responded_column: str = "responded"
    #: wide format: column -> campaign id
    columns: dict[str, str] = field(default_factory=dict)
    #: values read as a positive response besides 1/true (e.g. "yes")
    positive_values: tuple[str, ...] = ("1", "yes", "true", "y")
    negative_values: tuple[str, ...] = ("0", "no", "false", "n")


@dataclass(frozen=True)
class SegmentationConfig:
    """PCA, k search and K-Means settings."""

    k: int | None = None
    k_min: int = 2
    k_max: int = 10
    pca_variance: float = 0.90
    pca_components: int | None = None
    silhouette_sample: int = 10_000
    #: rows used for the k search on large tables (K-Means final fit uses all rows)
    search_sample: int = 100_000
    n_init: int = 3
    seed: int = 42
    stability_bootstraps: int = 5
    outlier_quantile: float = 0.99
    #: optional TOML/JSON file mapping segment id (or generated name) -> name
    names_file: str | None = None


@dataclass(frozen=True)
class ResponseModelConfig:
    """LightGBM response model settings."""

    enabled: bool = True
    num_leaves: int = 31
    learning_rate: float = 0.05
    max_rounds: int = 500
    early_stopping_rounds: int = 30
    min_child_samples: int = 20
    #: share of customers held out for validation (whole customers, never split)
    validation_fraction: float = 0.2
    #: cap on training rows (customer x campaign) for very large tables; sampled by customer
    max_train_rows: int = 2_000_000
    seed: int = 42


@dataclass(frozen=True)
class OutputConfig:
    """Where the bundle and report go."""

    root: str = "model_artifacts"
    #: environment variable holding the HMAC key that signs the manifest (unset: unsigned)
    hmac_key_env: str = "BUNDLE_HMAC_KEY"
    report: bool = True


@dataclass(frozen=True)
class TrainConfig:
    """The whole training configuration."""

    name: str = "bundle"
    data: DataConfig = field(default_factory=DataConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    campaigns: CampaignsConfig = field(default_factory=CampaignsConfig)
    responses: ResponsesConfig | None = None
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    response_model: ResponseModelConfig = field(default_factory=ResponseModelConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    #: folder the config file lives in; relative paths in the config resolve against it
    base_dir: str = "."
