"""Typed training configuration: read from a TOML file, overridden by CLI flags.

The TOML file has one table per dataclass below (``[data]``, ``[features]``, ``[campaigns]``,
``[responses]``, ``[segmentation]``, ``[comparison]``, ``[response_model]``, ``[output]``, ...) and a
top-level ``name``.
Unknown keys are refused with a :class:`ConfigError` naming the key. TOML has no null: leave a
key out for its default, and write ``id_column = ""`` for a table without an id column (rows
are then numbered).

Relative paths of *input* files (customer table, transactions, campaign pool, responses, names
file) resolve against the current working directory if the file exists there, otherwise against
the folder of the config file (``base_dir``); after loading they are absolute. So the example
configs, which name ``data/demo/...`` and ``../shared/data/...`` relative to the project root,
work when run from the project root, and a config next to its data works from anywhere. The
output root stays as written (relative to the working directory).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scoring.clv import CLV_FEATURES
from scoring.features import KIND_DOMAINS
from training.source_url import is_url, table_parts, url_problem


# ---- declaring parameters ---------------------------------------------------------------------
@dataclass(frozen=True)
class Interval:
    """Numbers between ``low`` and ``high`` (None: unbounded); ``closed`` says which ends count.

    In the manner of scikit-learn's ``_param_validation.Interval``.
    """

    low: float | None
    high: float | None
    closed: str = "both"

    def __call__(self, value: Any) -> bool:
        """True when ``value`` lies in the interval."""
        low, high = self.low, self.high
        if low is not None and (
            value < low or (value == low and self.closed in ("right", "neither"))
        ):
            return False
        return not (
            high is not None
            and (value > high or (value == high and self.closed in ("left", "neither")))
        )

    def __str__(self) -> str:
        low_in = self.closed in ("both", "left")
        high_in = self.closed in ("both", "right")
        low, high = _number(self.low), _number(self.high)
        if self.high is None:
            return f"{'>=' if low_in else '>'} {low}"
        if self.low is None:
            return f"{'<=' if high_in else '<'} {high}"
        return f"{'[' if low_in else '('}{low}, {high}{']' if high_in else ')'}"


def _number(x: float | None) -> str:
    return str(int(x)) if x is not None and float(x).is_integer() else str(x)


@dataclass(frozen=True)
class Options:
    """One of a fixed set of strings (each item, for a list or table)."""

    values: tuple[str, ...]

    def __call__(self, value: Any) -> bool:
        """True when ``value`` is one of the options."""
        return value in self.values

    def __str__(self) -> str:
        return "one of " + ", ".join(f'"{v}"' for v in self.values)


@dataclass(frozen=True)
class Check:
    """A value passing ``test``, described by ``text`` (dates, patterns, single characters)."""

    test: Any
    text: str

    def __call__(self, value: Any) -> bool:
        """True when ``test`` accepts ``value``."""
        return bool(self.test(value))

    def __str__(self) -> str:
        return self.text


def _is_date(value: str) -> bool:
    try:
        dt.date.fromisoformat(value)
    except ValueError:
        return False
    return True


def _is_pattern(value: str) -> bool:
    try:
        re.compile(value)
    except re.error:
        return False
    return True


ISO_DATE = Check(_is_date, "a date yyyy-mm-dd")
PATTERN = Check(_is_pattern, "a regular expression")
ONE_CHARACTER = Check(lambda v: len(v) == 1, "one character")
#: seeds numpy, scikit-learn and LightGBM all accept
SEED = Interval(0, 2**31 - 1)


def param(default: Any = dataclasses.MISSING, doc: str = "", allowed: Any = None, **kwargs: Any):
    """A config field with its meaning and the values allowed: the ONE declaration of a key.

    ``allowed`` (an :class:`Interval`, :class:`Options` or :class:`Check`) is enforced when the
    config is loaded, before anything is read or fitted, with a message naming the key, the value
    and what is allowed; for a list or table it applies to every item. ``doc`` and ``allowed``
    also write the README's config reference (:func:`config_reference`). A mutable default
    goes in ``default_factory=``.
    """
    metadata = {"doc": doc, "allowed": allowed}
    if "default_factory" in kwargs:
        return field(metadata=metadata, **kwargs)
    return field(default=default, metadata=metadata, **kwargs)


@dataclass(frozen=True)
class DerivedSpec:
    """A derived ratio feature: numerator / denominator (``fill`` when denominator <= 0)."""

    name: str = param(doc="name of the derived feature")
    numerator: str = param(doc="numeric input divided")
    denominator: str = param(doc="numeric input dividing")
    fill: float = param(0.0, "value when the denominator is <= 0")


ENV_NAME = Check(
    lambda v: re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v) is not None,
    "an environment variable name",
)
TABLE_NAME = Check(lambda v: table_parts(v) is not None, "a table name, or schema.table")


def _table_param():
    return param(
        None,
        "PostgreSQL source: the table read (`name` or `schema.name`; quoted, so case and spaces "
        "are kept); or `query`",
        TABLE_NAME,
    )


def _query_param():
    return param(None, "PostgreSQL source: a SELECT whose result is the table (instead of `table`)")


def _password_env_param():
    return param(
        None,
        "PostgreSQL source: environment variable holding the password (never in the config or "
        "the URL); unset: no password (trust, peer or ~/.pgpass)",
        ENV_NAME,
    )


def _fetch_rows_param():
    return param(
        50_000,
        "PostgreSQL source: rows fetched per round trip of the server-side cursor",
        Interval(1, None),
    )


#: the per-customer features built from ``[data.transactions]``: name -> (kind, meaning)
TRANSACTION_FEATURES = {
    "recency_days": ("days", "days from the last purchase day to the snapshot date"),
    "frequency": ("count", "distinct purchase days"),
    "transaction_count": (
        "count",
        "purchases (distinct invoices when an invoice column is set, else rows)",
    ),
    "monetary_total": ("amount", "value bought (net of returns when returns = net)"),
    "monetary_avg": ("amount", "monetary_total per purchase day"),
    "tenure_days": ("days", "days from the first purchase day to the snapshot date"),
    "avg_days_between": (
        "days",
        "mean days between purchase days (one-day customers: days since that day)",
    ),
    "return_count": ("count", "returns and cancellations (distinct invoices, else rows)"),
    "return_share": ("ratio", "value returned / value bought, in [0, 1]"),
}


@dataclass(frozen=True)
class TransactionsConfig:
    """Raw transactions from which RFM features are derived (instead of a customer table)."""

    path: str = param(
        doc="CSV or Parquet file of transactions, one row per line item, or a PostgreSQL URL "
        "`postgresql://user@host:5432/db` with `table` or `query`"
    )
    table: str | None = _table_param()
    query: str | None = _query_param()
    password_env: str | None = _password_env_param()
    fetch_rows: int = _fetch_rows_param()
    customer_column: str = param("customer_id", "customer id column")
    date_column: str = param("date", "transaction date column")
    amount_column: str = param(
        "amount", "amount of each row; ignored when quantity_column and price_column are set"
    )
    quantity_column: str | None = param(
        None, "with price_column: amount = quantity x price (a line-item invoice table)"
    )
    price_column: str | None = param(None, "unit price column (with quantity_column)")
    invoice_column: str | None = param(
        None, "invoice id: purchases and returns are counted as distinct invoices"
    )
    return_invoice_pattern: str | None = param(
        None,
        "regular expression on the invoice id marking a return or cancellation (e.g. `^C`); "
        "rows with a negative amount or quantity are returns in any case",
        PATTERN,
    )
    returns: str = param(
        "net",
        "net: subtract returns from spend; drop: remove them; own: spend stays gross "
        "(returns never count as purchase days)",
        Options(("net", "drop", "own")),
    )
    zero_amounts: str = param(
        "drop",
        "rows whose amount is 0 (a zero price, a free item): drop them (counted) or keep them "
        "(a purchase day with no value, as CDNOW's free CDs)",
        Options(("drop", "keep")),
    )
    date_format: str | None = param(
        None, "strftime format of the dates (e.g. `%Y%m%d`); default: inferred"
    )
    as_of: str | None = param(
        None, "snapshot date for recency; default: the day after the last transaction", ISO_DATE
    )
    separator: str | None = param(None, "CSV delimiter; default: detected")
    decimal: str = param(".", 'decimal mark of the amounts in a CSV ("," for 12,50)', ONE_CHARACTER)
    thousands: str | None = param(
        None, 'thousands separator of the amounts in a CSV ("," for 1,234.50)', ONE_CHARACTER
    )


@dataclass(frozen=True)
class DataConfig:
    """Where the customer table is and how to read it."""

    customers: str | None = param(
        None,
        "CSV or Parquet, one row per customer (or none when `transactions` is given), or a "
        "PostgreSQL URL `postgresql://user@host:5432/db` with `table` or `query`",
    )
    table: str | None = _table_param()
    query: str | None = _query_param()
    password_env: str | None = _password_env_param()
    fetch_rows: int = _fetch_rows_param()
    separator: str | None = param(
        None,
        'CSV delimiter; default: detected (comma, semicolon, tab, else runs of whitespace; " " '
        "means aligned columns)",
    )
    decimal: str = param(".", 'decimal mark of numbers in a CSV ("," for 12,50)', ONE_CHARACTER)
    thousands: str | None = param(
        None,
        'thousands separator of numbers in a CSV ("," for 1,234.50, "." for 1.234,50)',
        ONE_CHARACTER,
    )
    id_column: str | None = param(
        "customer_id", 'id column; "" numbers the rows (a table without ids, like bank-full.csv)'
    )
    truth_column: str | None = param(
        None, "column holding planted segment labels (generated data only); never a feature"
    )
    transactions: TransactionsConfig | None = param(
        None, "raw transactions -> per-customer RFM features (table `[data.transactions]`)"
    )


@dataclass(frozen=True)
class FeaturesConfig:
    """Which columns are features and how they are treated."""

    numeric: tuple[str, ...] = param((), "numeric input columns, in order")
    kinds: dict[str, str] = param(
        doc="column -> kind; unlisted columns are numeric. amount, count, days: >= 0; ratio: "
        "[0, 1]; numeric: free. The service enforces each kind's domain on requests",
        allowed=Options(tuple(KIND_DOMAINS)),
        default_factory=dict,
    )
    categorical: tuple[str, ...] = param(
        (), "categorical input columns (response model only; unseen values read as missing)"
    )
    derived: tuple[DerivedSpec, ...] = param(
        (), "ratio features `[[features.derived]]` (name, numerator, denominator, fill)"
    )
    cluster: tuple[str, ...] = param(
        (), "features entering the clustering; empty: all numeric inputs and derived features"
    )
    log: str | tuple[str, ...] = param(
        "auto",
        '"auto" (non-negative features with skew > skew_threshold) or a list of features that '
        "get log1p before scaling",
    )
    skew_threshold: float = param(
        1.0, 'skewness above which "auto" logs a feature', Interval(0, None)
    )
    response: tuple[str, ...] = param(
        (), "numeric features entering the response model; empty: all numeric and derived"
    )


@dataclass(frozen=True)
class CampaignsConfig:
    """The campaign pool: a file (CSV, JSON or TOML) or entries inline in the config."""

    pool: str | None = param(
        None,
        "CSV, JSON or TOML file: id, name, description, channel, value, eligible_segments "
        "(segment names or ids; absent: every segment)",
    )
    inline: tuple[dict[str, Any], ...] = param(
        (), "the pool written in the config instead, `[[campaigns.inline]]` entries"
    )


@dataclass(frozen=True)
class ResponsesConfig:
    """The campaign-response history, long or wide."""

    format: str = param(
        "long",
        "long: (customer, campaign, responded) rows; wide: 0/1 columns, one per campaign",
        Options(("long", "wide")),
    )
    path: str | None = param(
        None, "file with the history; none: the columns are inside the customer table"
    )
    separator: str | None = param(None, "CSV delimiter; default: detected")
    customer_column: str = param("customer_id", "long: customer id column")
    campaign_column: str = param("campaign_id", "long: campaign id column")
    responded_column: str = param("responded", "long: response column")
    columns: dict[str, str] = param(
        doc="wide: column -> campaign id (`[responses.columns]`)", default_factory=dict
    )
    positive_values: tuple[str, ...] = param(
        ("1", "yes", "true", "y"), "values read as a positive response (any case)"
    )
    negative_values: tuple[str, ...] = param(
        ("0", "no", "false", "n"), "values read as a negative response (any case)"
    )
    treated_column: str | None = param(
        None,
        "long: column saying whether the campaign was sent (1) or the customer was in the "
        "control arm for it (0), read like responses; none: every row was sent",
    )
    control_values: tuple[str, ...] = param(
        (),
        "long: campaign-column values that mark a control row with no campaign (a randomized "
        'experiment\'s no-contact arm, e.g. "No E-Mail"): the control for every campaign',
    )
    campaign_map: dict[str, str] = param(
        doc="long: campaign-column value -> campaign id, for arm labels that are not pool ids "
        '(e.g. "Mens E-Mail" = "mens_email")',
        default_factory=dict,
    )


@dataclass(frozen=True)
class SegmentationConfig:
    """PCA, k search and K-Means settings."""

    k: int | None = param(
        None,
        "number of segments; none: chosen by the k search (`--k` on the command line)",
        Interval(2, None),
    )
    k_min: int = param(2, "smallest k searched", Interval(2, None))
    k_max: int = param(10, "largest k searched (>= k_min)", Interval(2, None))
    pca_variance: float = param(
        0.90,
        "PCA keeps components for at least this share of the variance",
        Interval(0, 1, "right"),
    )
    pca_components: int | None = param(
        None, "a fixed number of PCA components instead of pca_variance", Interval(1, None)
    )
    silhouette_sample: int = param(
        10_000, "rows on which the silhouette of each k is computed", Interval(2, None)
    )
    search_sample: int = param(
        100_000,
        "rows used for the k search on large tables (the final K-Means fit uses all rows)",
        Interval(2, None),
    )
    n_init: int = param(3, "K-Means restarts per k (the best is kept)", Interval(1, None))
    seed: int = param(42, "random seed of sampling, PCA and K-Means (`--seed`)", SEED)
    stability_bootstraps: int = param(
        5,
        "bootstrap refits whose agreement (ARI) with the final model is reported; 0: none",
        Interval(0, None),
    )
    outlier_quantile: float = param(
        0.99,
        "quantile of the distances to their centroid above which a customer is atypical",
        Interval(0, 1, "right"),
    )
    min_segment_share: float = param(
        0.01,
        "a k whose smallest segment holds under this share of the customers is not chosen "
        "automatically (the evidence table marks it too_small)",
        Interval(0, 0.5, "left"),
    )
    previous: str | None = param(
        None,
        "previous bundle (a version under output.root, `current`, or a folder): the new segments "
        "are matched to its segments so ids and names stay (`retrain --previous`)",
    )
    match_distance: float = param(
        1.0,
        "a new and a previous centroid farther apart than this (RMS over the cluster features of "
        "differences in standard deviations) are not the same segment",
        Interval(0, None, "neither"),
    )
    gate_max_psi: float = param(
        0.5,
        "promotion gate: `current` does not move when a feature's PSI exceeds this",
        Interval(0, None, "neither"),
    )
    gate_max_share_shift: float = param(
        0.2,
        "promotion gate: ... or a matched segment's share moves by more than this",
        Interval(0, 1, "right"),
    )
    gate_min_retention: float = param(
        0.5,
        "promotion gate: ... or fewer of the customers in both snapshots stay in their segment",
        Interval(0, 1),
    )
    gate_ignore: tuple[str, ...] = param(
        doc="features whose PSI is reported but not gated (tenure in a closed cohort ages every "
        "month)",
        default_factory=tuple,
    )
    keep_assignments: bool = param(
        True,
        "write the customers' segment ids to the bundle (assignments.npz) for the next "
        "re-segmentation's migration matrix",
    )
    names_file: str | None = param(
        None, "TOML/JSON file mapping segment id (or generated name) -> name"
    )
    model: str = param(
        "kmeans",
        "the served clustering: kmeans (nearest centre) or gaussian_mixture (most probable "
        "component; answers then carry every segment's membership probability)",
        Options(("kmeans", "gaussian_mixture")),
    )
    method: str = param(
        "kmeans",
        "how segments are made: kmeans (clustering, k searched; `model` says what serves it) or "
        "rfm (the segments ARE the 11 named RFM groups of the `[rfm]` features' quintile scores; "
        "no k search, every group is a segment even when no training customer falls in it)",
        Options(("kmeans", "rfm")),
    )


@dataclass(frozen=True)
class ComparisonConfig:
    """The algorithm comparison (K-Means against other clustering methods) in the report."""

    enabled: bool = param(
        True, "compare K-Means with other clustering methods (report and manifest)"
    )
    sample: int = param(
        2_000,
        "customers (a seeded sample) every method is fitted and measured on",
        Interval(50, None),
    )
    seeds: int = param(
        2,
        "refits on 80% sub-samples with other seeds, for each method's stability (ARI)",
        Interval(0, None),
    )
    categorical: tuple[str, ...] = param(
        doc="categorical features that enter k-prototypes (kmodes); empty: no k-prototypes",
        default_factory=tuple,
    )


@dataclass(frozen=True)
class ResponseModelConfig:
    """LightGBM response model settings."""

    enabled: bool = param(True, "fit the response model when there is a response history")
    num_leaves: int = param(31, "LightGBM leaves per tree", Interval(2, 131_072))
    learning_rate: float = param(0.05, "LightGBM learning rate", Interval(0, 1, "right"))
    max_rounds: int = param(500, "most boosting rounds", Interval(1, None))
    early_stopping_rounds: int = param(
        30, "stop after this many rounds without held-out progress", Interval(1, None)
    )
    min_child_samples: int = param(20, "LightGBM's fewest rows in a leaf", Interval(1, None))
    validation_fraction: float = param(
        0.2,
        "held-out share of customers (whole customers, never rows of one customer on both sides)",
        Interval(0, 1, "neither"),
    )
    max_train_rows: int = param(
        2_000_000,
        "cap on training rows (customer x campaign), sampled by customer; 0: no cap",
        Interval(0, None),
    )
    seed: int = param(42, "random seed of the split and LightGBM (`--seed`)", SEED)
    compile: bool = param(
        True,
        "compile the trees to native code for serving (lleaves, in .venv-compile); false: "
        "LightGBM serves",
    )
    select_smallest: bool = param(
        True,
        "keep the smallest model (rounds x leaves; num_leaves, half and a quarter of it tried) "
        "whose held-out AUC is within auc_tolerance of the best; false: num_leaves and the "
        "early-stopping round",
    )
    auc_tolerance: float = param(
        0.002, "AUC points the size selection may give up", Interval(0, 0.5, "left")
    )


@dataclass(frozen=True)
class RfmConfig:
    """Which features RFM scores are computed from (scoring/rfm.py holds the rule)."""

    recency: str = param(
        "recency_days",
        "numeric feature of days since the last purchase (fewest days: R = 5); with the other "
        "two present, every bundle scores R, F, M and the RFM group into profiles and answers",
    )
    frequency: str = param("frequency", "numeric feature counting purchases (most: F = 5)")
    monetary: str = param("monetary_total", "numeric feature of money spent (most: M = 5)")


@dataclass(frozen=True)
class ClvConfig:
    """Customer lifetime value: BG/NBD + Gamma-Gamma on transaction features."""

    enabled: bool = param(
        False,
        "fit the CLV models (needs the transaction features frequency, recency_days, "
        "tenure_days, monetary_avg)",
    )
    period_days: float = param(
        7.0,
        "the models' time unit in days (7: weeks, as the published CDNOW figures)",
        Interval(0, None, "neither"),
    )
    horizon_months: int = param(12, "CLV horizon in months", Interval(1, 1200))
    discount_rate: float = param(
        0.01, "monthly discount rate of future value", Interval(0, 1, "left")
    )
    weight_gains: bool = param(
        False,
        "`/recommend` (and `training score`, the stream job) weights each offer's value by the "
        "customer's CLV relative to the training mean (gain = uplift x value x CLV/mean CLV - "
        "cost); a bundle setting, so every path answers alike. Needs the four CLV features "
        "among features.numeric",
    )


@dataclass(frozen=True)
class UpliftConfig:
    """The uplift stage: a control model fitted when the response history has a control arm."""

    enabled: bool = param(True, "fit the control model when the history has a control arm")
    min_control_rows: int = param(
        200,
        "fewer control rows than this: no uplift model (ranking stays by response)",
        Interval(1, None),
    )


@dataclass(frozen=True)
class OutputConfig:
    """Where the bundle and report go."""

    root: str = param(
        "model_artifacts", "bundle root; `current` points at the newest good bundle (`--output`)"
    )
    hmac_key_env: str = param(
        "BUNDLE_HMAC_KEY",
        "environment variable holding the HMAC key that signs the manifest (unset: unsigned)",
    )
    report: bool = param(
        True,
        "write the reports: Markdown and HTML (charts) to `<root>/reports/<version>.md|.html`",
    )


@dataclass(frozen=True)
class TrainConfig:
    """The whole training configuration."""

    name: str = param("bundle", "label in the manifest and the report (`--name`)")
    data: DataConfig = param(doc="the customer table", default_factory=DataConfig)
    features: FeaturesConfig = param(doc="the features", default_factory=FeaturesConfig)
    campaigns: CampaignsConfig = param(doc="the campaign pool", default_factory=CampaignsConfig)
    responses: ResponsesConfig | None = param(None, "the response history (none: no history)")
    segmentation: SegmentationConfig = param(doc="segmentation", default_factory=SegmentationConfig)
    comparison: ComparisonConfig = param(
        doc="algorithm comparison", default_factory=ComparisonConfig
    )
    response_model: ResponseModelConfig = param(
        doc="response model", default_factory=ResponseModelConfig
    )
    rfm: RfmConfig = param(doc="RFM scores", default_factory=RfmConfig)
    clv: ClvConfig = param(doc="lifetime value", default_factory=ClvConfig)
    uplift: UpliftConfig = param(doc="uplift", default_factory=UpliftConfig)
    output: OutputConfig = param(doc="where the bundle goes", default_factory=OutputConfig)
    #: folder the config file lives in; relative paths in the config resolve against it (set by
    #: the loader, not a key of the file)
    base_dir: str = "."


class ConfigError(ValueError):
    """The training configuration is unreadable or invalid; the message names the key."""


#: override keys accepted by :func:`load_config` (the CLI flags) and what each sets
OVERRIDE_KEYS = (
    "data_dir",
    "output",
    "k",
    "k_min",
    "k_max",
    "seed",
    "customers",
    "name",
    "previous",
    "as_of",
)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check and convert one TOML value to the annotated type ``tp`` (``key`` for messages)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[-1] if errors else f"{key}: invalid value {value!r}")
    if _is_dataclass_type(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table, got {value!r}")
        return _build(tp, value, key)
    if origin is tuple:
        item_type = typing.get_args(tp)[0]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return tuple(_convert(v, item_type, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        value_type = typing.get_args(tp)[1]
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table, got {value!r}")
        if value_type is Any:
            return dict(value)
        return {str(k): _convert(v, value_type, f"{key}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, {_got(key, value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, {_got(key, value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, {_got(key, value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, {_got(key, value)}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp!r}")  # pragma: no cover - programming error


def _got(key: str, value: Any) -> str:
    """``got <value>``, with a hint when TOML made a table of a dotted column name."""
    if not isinstance(value, dict):
        return f"got {value!r}"
    parts, leaf = [key.rsplit(".", 1)[-1]], value
    while isinstance(leaf, dict) and leaf:
        first = next(iter(leaf))
        parts.append(str(first))
        leaf = leaf[first]
    name = ".".join(parts)
    return (
        f"got a table {value!r}; TOML reads a bare key with dots as nested tables: if "
        f'"{name}" is one column name, quote it: "{name}" = {leaf!r}'
    )


def _enforce(value: Any, allowed: Any, key: str) -> None:
    """Refuse ``value`` (each item of a list or table) that ``allowed`` does not accept."""
    if allowed is None or value is None:
        return
    if isinstance(value, dict):
        for k, v in value.items():
            _enforce(v, allowed, f"{key}.{k}")
    elif isinstance(value, tuple):
        for i, v in enumerate(value):
            _enforce(v, allowed, f"{key}[{i}]")
    elif not allowed(value):
        raise ConfigError(f"{key}: {value!r} is not allowed; expected {allowed}")


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    """Build dataclass ``cls`` from a TOML table, refusing unknown keys and values outside
    what each field's declaration (:func:`param`) allows."""
    hints = typing.get_type_hints(cls)
    declared = {f.name: f for f in dataclasses.fields(cls) if f.name != "base_dir"}
    names = list(declared)
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            hint = f" ({_got(path, value)})" if isinstance(value, dict) else ""
            raise ConfigError(f"unknown key {path!r}; known keys here: {', '.join(names)}{hint}")
        kwargs[key] = _convert(value, hints[key], path)
        _enforce(kwargs[key], declared[key].metadata.get("allowed"), path)
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        raise ConfigError(f"{where or 'config'}: {exc}") from None


def _resolve_input(path: str | None, base_dir: Path) -> str | None:
    """Absolute path of an input file: the working directory first, then the config folder."""
    if path is None or is_url(path):
        return path  # a database (or an unsupported URL, refused by _check_source)
    p = Path(path).expanduser()
    if p.is_absolute():
        return str(p)
    if p.exists():
        return str(p.resolve())
    in_base = base_dir / p
    if in_base.exists():
        return str(in_base.resolve())
    # Neither exists: keep the working-directory reading so the load error names that path.
    return str(p.resolve())


def _move(path: str | None, folder: str) -> str | None:
    """``path`` with its folder replaced by ``folder`` (the ``data_dir`` override)."""
    if path is None or is_url(path):
        return path  # a database is not a file in the data folder
    return str(Path(folder) / Path(path).name)


def _apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Apply CLI overrides to the raw TOML mapping (before type conversion)."""
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for key, value in overrides.items():
        if value is None:
            continue
        if key not in OVERRIDE_KEYS:
            raise ConfigError(f"unknown override {key!r}; known: {', '.join(OVERRIDE_KEYS)}")
        if key == "data_dir":
            data = raw.setdefault("data", {})
            data["customers"] = _move(data.get("customers"), value)
            if isinstance(data.get("transactions"), dict):
                tx = dict(data["transactions"])
                tx["path"] = _move(tx.get("path"), value)
                data["transactions"] = tx
            campaigns = raw.setdefault("campaigns", {})
            campaigns["pool"] = _move(campaigns.get("pool"), value)
            if isinstance(raw.get("responses"), dict):
                raw["responses"]["path"] = _move(raw["responses"].get("path"), value)
            for section in ("data", "campaigns"):
                raw[section] = {k: v for k, v in raw[section].items() if v is not None}
            if isinstance(raw.get("responses"), dict):
                raw["responses"] = {k: v for k, v in raw["responses"].items() if v is not None}
        elif key == "output":
            raw.setdefault("output", {})["root"] = str(value)
        elif key in ("k", "k_min", "k_max"):
            raw.setdefault("segmentation", {})[key] = value
        elif key == "seed":
            raw.setdefault("segmentation", {})["seed"] = value
            raw.setdefault("response_model", {})["seed"] = value
        elif key == "customers":
            raw.setdefault("data", {})["customers"] = str(value)
        elif key == "name":
            raw["name"] = value
        elif key == "previous":
            raw.setdefault("segmentation", {})["previous"] = str(value)
        elif key == "as_of":
            data = raw.setdefault("data", {})
            if not isinstance(data.get("transactions"), dict):
                raise ConfigError("as_of: the config has no [data.transactions] to take it")
            data["transactions"] = {**data["transactions"], "as_of": str(value)}
    return raw


def _check_source(where: str, key: str, section: Any) -> None:
    """A PostgreSQL source needs a table or a query (not both) and no password in its URL; a
    file source takes none of the database keys."""
    location = getattr(section, key)
    if is_url(location):
        problem = url_problem(location)
        if problem:
            # the URL is not repeated: it may hold the password
            raise ConfigError(f"{where}.{key}: {problem}")
        if (section.table is None) == (section.query is None):
            raise ConfigError(
                f"{where}.table / {where}.query: a PostgreSQL source needs a table or a query "
                f"(one of them), got {'both' if section.table else 'neither'}"
            )
        if section.query is not None and not section.query.strip():
            raise ConfigError(f"{where}.query: the query is empty")
        return
    for name in ("table", "query", "password_env"):
        if getattr(section, name) is not None:
            raise ConfigError(
                f"{where}.{name}: only for a PostgreSQL source ({where}.{key} = "
                f'"postgresql://user@host:5432/db"); {where}.{key} is a file'
            )


def _check(config: TrainConfig) -> None:
    """Checks across fields, which one field's declaration cannot express."""
    data, feats, seg = config.data, config.features, config.segmentation
    if data.customers is None and data.transactions is None:
        raise ConfigError("data.customers: a customer table (or data.transactions) is required")
    for where, marks in (("data", data), ("data.transactions", data.transactions)):
        if marks is not None and marks.thousands is not None and marks.thousands == marks.decimal:
            raise ConfigError(
                f"{where}.thousands: expected one character other than the decimal mark "
                f"{marks.decimal!r}, got {marks.thousands!r}"
            )
    _check_source("data", "customers", data)
    if data.transactions is not None:
        _check_source("data.transactions", "path", data.transactions)
    tx = data.transactions
    if tx is not None:
        if (tx.quantity_column is None) != (tx.price_column is None):
            raise ConfigError(
                "data.transactions.quantity_column and price_column: set both (amount = "
                "quantity x price) or neither (amount_column)"
            )
        if tx.return_invoice_pattern is not None and tx.invoice_column is None:
            raise ConfigError("data.transactions.return_invoice_pattern: needs invoice_column")
    if isinstance(feats.log, str) and feats.log != "auto":
        raise ConfigError(f'features.log: expected "auto" or a list, got {feats.log!r}')
    if seg.k_max < seg.k_min:
        raise ConfigError(f"segmentation.k_max: k_max={seg.k_max} should be >= k_min={seg.k_min}")
    for column in config.comparison.categorical:
        if column not in feats.categorical:
            raise ConfigError(
                f"comparison.categorical: {column!r} is not a categorical feature; "
                f"features.categorical has {', '.join(feats.categorical) or 'none'}"
            )
    _check_rfm(config)
    _check_clv_weighting(config)
    responses = config.responses
    if responses is not None and responses.format == "wide" and not responses.columns:
        raise ConfigError("responses.columns: wide responses need a column -> campaign table")


def rfm_available(config: TrainConfig) -> bool:
    """True when the three ``[rfm]`` features are numeric features (inputs or derived)."""
    names = set(config.features.numeric) | {d.name for d in config.features.derived}
    rfm = config.rfm
    return all(f in names for f in (rfm.recency, rfm.frequency, rfm.monetary))


def _check_rfm(config: TrainConfig) -> None:
    """``method = "rfm"`` needs its three features, and serves the groups (not a mixture)."""
    seg = config.segmentation
    if seg.method != "rfm":
        return
    if seg.model != "kmeans":
        raise ConfigError(
            f'segmentation.model: {seg.model!r} cannot serve method = "rfm" (the RFM groups are '
            'the segments); leave model at "kmeans"'
        )
    if seg.k is not None:
        raise ConfigError(
            f'segmentation.k: k={seg.k} with method = "rfm"; the 11 RFM groups are the segments'
        )
    names = list(config.features.numeric) + [d.name for d in config.features.derived]
    for role in ("recency", "frequency", "monetary"):
        column = getattr(config.rfm, role)
        if column not in names:
            raise ConfigError(
                f'rfm.{role}: {column!r} is not a numeric feature, and segmentation.method = "rfm" '
                f"needs it; expected one of {', '.join(names) or 'none'} (name the column in "
                f"[rfm] {role} = ..., and list it in features.numeric)"
            )


def _check_clv_weighting(config: TrainConfig) -> None:
    """Gains weighted by CLV need the CLV models and their inputs at serving."""
    if not config.clv.weight_gains:
        return
    if not config.clv.enabled:
        raise ConfigError("clv.weight_gains: needs clv.enabled = true (the CLV models)")
    missing = [f for f in CLV_FEATURES if f not in config.features.numeric]
    if missing:
        raise ConfigError(
            f"clv.weight_gains: the service computes each customer's CLV from "
            f"{', '.join(CLV_FEATURES)}; {', '.join(missing)} not in features.numeric"
        )


def config_from_dict(
    raw: dict[str, Any], base_dir: str | Path = ".", overrides: dict[str, Any] | None = None
) -> TrainConfig:
    """Build a checked :class:`TrainConfig` from a TOML-like mapping (paths against ``base_dir``)."""
    raw = _apply_overrides(raw, overrides or {})
    data = raw.get("data")
    # TOML has no null: an empty id column means "number the rows".
    if isinstance(data, dict) and data.get("id_column") == "":
        raw["data"] = {**data, "id_column": None}
    config = _build(TrainConfig, raw, "")
    base = Path(base_dir).resolve()

    def resolve(p: str | None) -> str | None:
        return _resolve_input(p, base)

    tx = config.data.transactions
    config = dataclasses.replace(
        config,
        base_dir=str(base),
        data=dataclasses.replace(
            config.data,
            customers=resolve(config.data.customers),
            transactions=None if tx is None else dataclasses.replace(tx, path=resolve(tx.path)),
        ),
        campaigns=dataclasses.replace(config.campaigns, pool=resolve(config.campaigns.pool)),
        responses=None
        if config.responses is None
        else dataclasses.replace(config.responses, path=resolve(config.responses.path)),
        segmentation=dataclasses.replace(
            config.segmentation, names_file=resolve(config.segmentation.names_file)
        ),
    )
    _check(config)
    return config


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a TOML config file, apply ``overrides`` (CLI flags) and check it.

    Override keys: ``data_dir`` (folder of the customer table, transactions, campaign pool and
    responses, file names kept), ``output`` (output.root), ``k``, ``k_min``, ``k_max``
    (segmentation), ``seed`` (segmentation and response model), ``customers`` (data.customers),
    ``name``. ``None`` values are ignored, so unset CLI flags can be passed as they are.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from None
    return config_from_dict(raw, base_dir=path.resolve().parent, overrides=overrides)


# ---- the README's reference, generated from the declarations -----------------------------------
def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        names = [_type_name(t) for t in typing.get_args(tp) if t is not type(None)]
        return " or ".join(names)
    if origin is tuple:
        item = typing.get_args(tp)[0]
        return "list of tables" if item is not str else "list of strings"
    if origin is dict:
        return "table of strings" if typing.get_args(tp)[1] is str else "table"
    return {str: "string", int: "integer", float: "number", bool: "boolean"}.get(tp, str(tp))


def _toml_value(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{}"
            if not value
            else "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
        )
    return repr(value)


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _section(tp: Any) -> type | None:
    """The dataclass a field of type ``tp`` holds (itself, optional, or a list of them)."""
    for t in (tp, *typing.get_args(tp)):
        if _is_dataclass_type(t):
            return t
    return None


def config_rows(cls: type = TrainConfig, prefix: str = "") -> list[tuple[str, ...]]:
    """(key, type, default, allowed, meaning) of every key, from the field declarations.

    Raises ValueError naming a field declared without a meaning (``param(doc=...)``).
    """
    hints = typing.get_type_hints(cls)
    rows: list[tuple[str, ...]] = []
    for f in dataclasses.fields(cls):
        if f.name == "base_dir":
            continue
        key = f"{prefix}{f.name}"
        doc = f.metadata.get("doc", "")
        if not doc:
            raise ValueError(f"config key {key!r} is declared without param(doc=...)")
        tp = hints[f.name]
        section = _section(tp)
        if section is not None:
            many = typing.get_origin(tp) is tuple
            rows.extend(config_rows(section, f"{key}[]." if many else f"{key}."))
            continue
        default = _default(f)
        allowed = f.metadata.get("allowed")
        rows.append(
            (
                f"`{key}`",
                _type_name(tp),
                "required" if default is dataclasses.MISSING else f"`{_toml_value(default)}`",
                "" if allowed is None else str(allowed),
                doc,
            )
        )
    return rows


def config_reference() -> str:
    """The README's config reference: a Markdown table of every key (see ``config_rows``)."""
    lines = ["| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    for row in config_rows():
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    return "\n".join(lines) + "\n"


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """Plain-JSON form of a config (tuples as lists), for the manifest."""
    return dataclasses.asdict(config)
