"""Typed training configuration: read from a TOML file, overridden by CLI flags.

The TOML file has one table per dataclass below (``[data]``, ``[features]``, ``[campaigns]``,
``[responses]``, ``[segmentation]``, ``[response_model]``, ``[output]``) and a top-level ``name``.
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

from scoring.features import KIND_DOMAINS


@dataclass(frozen=True)
class DerivedSpec:
    """A derived ratio feature: numerator / denominator (``fill`` when denominator <= 0)."""

    name: str
    numerator: str
    denominator: str
    fill: float = 0.0


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

    path: str
    customer_column: str = "customer_id"
    date_column: str = "date"
    #: the amount of each row; ignored when quantity_column and price_column are set
    amount_column: str = "amount"
    #: amount = quantity x price when both are set (a line-item invoice table)
    quantity_column: str | None = None
    price_column: str | None = None
    #: invoice id: purchases and returns are counted as distinct invoices
    invoice_column: str | None = None
    #: regular expression on the invoice id marking a return or cancellation (e.g. "^C");
    #: rows with a negative amount or quantity are returns in any case
    return_invoice_pattern: str | None = None
    #: "net" (subtract returns from spend), "drop" (remove them) or "own" (spend stays gross);
    #: returns never count as purchase days
    returns: str = "net"
    #: rows whose amount is 0 (a zero price, a free item): "drop" (counted) or "keep" (a purchase
    #: day with no value, as CDNOW's free CDs)
    zero_amounts: str = "drop"
    date_format: str | None = None
    #: reference date for recency; default: the day after the last transaction
    as_of: str | None = None
    separator: str | None = None
    #: decimal mark of the amounts in a CSV ("," for 12,50)
    decimal: str = "."
    #: thousands separator of the amounts in a CSV ("," for 1,234.50); None: none
    thousands: str | None = None


@dataclass(frozen=True)
class DataConfig:
    """Where the customer table is and how to read it."""

    #: CSV or Parquet, one row per customer (or None when ``transactions`` is given)
    customers: str | None = None
    #: CSV delimiter; None detects it (comma, semicolon, tab, else runs of whitespace)
    separator: str | None = None
    #: decimal mark of numbers in a CSV ("," for 12,50)
    decimal: str = "."
    #: thousands separator of numbers in a CSV ("," for 1,234.50, "." for 1.234,50); None: none
    thousands: str | None = None
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
    #: long format: column saying whether the campaign was sent (1) or the customer was in the
    #: control arm for it (0); read like responses. None: every row was sent
    treated_column: str | None = None
    #: long format: campaign-column values that mark a control row with no campaign (a
    #: randomized experiment's no-contact arm, e.g. "No E-Mail"): the control for every campaign
    control_values: tuple[str, ...] = ()
    #: long format: campaign-column value -> campaign id, for tables whose arms have labels
    #: that are not pool ids (e.g. "Mens E-Mail" = "mens_email")
    campaign_map: dict[str, str] = field(default_factory=dict)


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
    #: a k whose smallest segment holds under this share of the customers is not chosen
    #: automatically (the evidence table marks it too_small)
    min_segment_share: float = 0.01
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
class ClvConfig:
    """Customer lifetime value: BG/NBD + Gamma-Gamma on transaction features."""

    #: needs the features frequency, recency_days, tenure_days, monetary_avg (transactions)
    enabled: bool = False
    #: the models' time unit in days (7: weeks, as the published CDNOW figures)
    period_days: float = 7.0
    horizon_months: int = 12
    #: monthly discount rate of future value
    discount_rate: float = 0.01


@dataclass(frozen=True)
class UpliftConfig:
    """The uplift stage: a control model fitted when the response history has a control arm."""

    enabled: bool = True
    #: fewer control rows than this: no uplift model (ranking stays by response)
    min_control_rows: int = 200


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
    clv: ClvConfig = field(default_factory=ClvConfig)
    uplift: UpliftConfig = field(default_factory=UpliftConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    #: folder the config file lives in; relative paths in the config resolve against it
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
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp!r}")  # pragma: no cover - programming error


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    """Build dataclass ``cls`` from a TOML table, refusing unknown keys."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name != "base_dir"]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            raise ConfigError(f"unknown key {path!r}; known keys here: {', '.join(names)}")
        kwargs[key] = _convert(value, hints[key], path)
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        raise ConfigError(f"{where or 'config'}: {exc}") from None


def _resolve_input(path: str | None, base_dir: Path) -> str | None:
    """Absolute path of an input file: the working directory first, then the config folder."""
    if path is None:
        return None
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
    return None if path is None else str(Path(folder) / Path(path).name)


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
    return raw


def _check(config: TrainConfig) -> None:
    """Cross-field checks the types alone cannot express."""
    data, feats, seg = config.data, config.features, config.segmentation
    if data.customers is None and data.transactions is None:
        raise ConfigError("data.customers: a customer table (or data.transactions) is required")
    for column, kind in feats.kinds.items():
        if kind not in KIND_DOMAINS:
            raise ConfigError(
                f"features.kinds.{column}: unknown kind {kind!r}; "
                f"expected one of {', '.join(KIND_DOMAINS)}"
            )
    for where, marks in (("data", data), ("data.transactions", data.transactions)):
        if marks is None:
            continue
        if len(marks.decimal) != 1:
            raise ConfigError(f"{where}.decimal: expected one character, got {marks.decimal!r}")
        if marks.thousands is not None and (
            len(marks.thousands) != 1 or marks.thousands == marks.decimal
        ):
            raise ConfigError(
                f"{where}.thousands: expected one character other than the decimal mark "
                f"{marks.decimal!r}, got {marks.thousands!r}"
            )
    tx = data.transactions
    if tx is not None:
        if tx.returns not in ("net", "drop", "own"):
            raise ConfigError(
                f'data.transactions.returns: expected "net", "drop" or "own", got {tx.returns!r}'
            )
        if tx.zero_amounts not in ("drop", "keep"):
            raise ConfigError(
                f'data.transactions.zero_amounts: expected "drop" or "keep", got {tx.zero_amounts!r}'
            )
        if (tx.quantity_column is None) != (tx.price_column is None):
            raise ConfigError(
                "data.transactions.quantity_column and price_column: set both (amount = "
                "quantity x price) or neither (amount_column)"
            )
        if tx.return_invoice_pattern is not None:
            if tx.invoice_column is None:
                raise ConfigError("data.transactions.return_invoice_pattern: needs invoice_column")
            try:
                re.compile(tx.return_invoice_pattern)
            except re.error as exc:
                raise ConfigError(
                    f"data.transactions.return_invoice_pattern: {tx.return_invoice_pattern!r} "
                    f"is not a regular expression ({exc})"
                ) from None
        if tx.as_of is not None:
            try:
                dt.date.fromisoformat(tx.as_of)
            except ValueError:
                raise ConfigError(
                    f"data.transactions.as_of: {tx.as_of!r} is not a date (yyyy-mm-dd)"
                ) from None
    if isinstance(feats.log, str) and feats.log != "auto":
        raise ConfigError(f'features.log: expected "auto" or a list, got {feats.log!r}')
    if seg.k is not None and seg.k < 2:
        raise ConfigError(f"segmentation.k: k={seg.k} should be >= 2")
    if seg.k_min < 2:
        raise ConfigError(f"segmentation.k_min: k_min={seg.k_min} should be >= 2")
    if seg.k_max < seg.k_min:
        raise ConfigError(f"segmentation.k_max: k_max={seg.k_max} should be >= k_min={seg.k_min}")
    if config.clv.period_days <= 0:
        raise ConfigError(f"clv.period_days: {config.clv.period_days} should be > 0")
    if not 1 <= config.clv.horizon_months <= 1200:
        raise ConfigError(f"clv.horizon_months: {config.clv.horizon_months} should be in [1, 1200]")
    if not 0.0 <= config.clv.discount_rate < 1.0:
        raise ConfigError(f"clv.discount_rate: {config.clv.discount_rate} should be in [0, 1)")
    if not 0.0 <= seg.min_segment_share < 0.5:
        raise ConfigError(
            f"segmentation.min_segment_share: {seg.min_segment_share} should be in [0, 0.5)"
        )
    if not 0.0 < seg.pca_variance <= 1.0:
        raise ConfigError(f"segmentation.pca_variance: {seg.pca_variance} should be in (0, 1]")
    if not 0.0 < config.response_model.validation_fraction < 1.0:
        raise ConfigError(
            "response_model.validation_fraction: "
            f"{config.response_model.validation_fraction} should be in (0, 1)"
        )
    if config.responses is not None:
        if config.responses.format not in ("long", "wide"):
            raise ConfigError(
                f'responses.format: expected "long" or "wide", got {config.responses.format!r}'
            )
        if config.responses.format == "wide" and not config.responses.columns:
            raise ConfigError("responses.columns: wide responses need a column -> campaign table")


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


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """Plain-JSON form of a config (tuples as lists), for the manifest."""
    return dataclasses.asdict(config)
