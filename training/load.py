"""Reading the inputs: customer table (or transactions -> RFM), campaign pool, response history.

Tables are CSV (comma, semicolon, tab or whitespace separated; detected when not configured) or
Parquet, chosen by extension; the customer table and the transactions may also come from
PostgreSQL (:mod:`training.database`), then checked exactly as files are. Id columns are read as text so that ``00042`` stays ``00042``.
Response histories come out in long form (customer_id, campaign_id, responded) whatever their
shape on disk; wide 0/1 columns may sit in the customer table itself, and a missing value in a
wide column means the campaign was not offered to that customer. Reading raises
:class:`~training.validate.TableError` for a missing or unreadable file; the content is checked
by :mod:`training.validate`.
"""

from __future__ import annotations

import csv
import json
import logging
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scoring.campaigns import Campaign, PoolSettings
from scoring.ids import ids_as_text
from training.config import DataConfig, TrainConfig, TransactionsConfig
from training.database import DatabaseSource, read_database
from training.source_url import is_database_url
from training.transactions import FEATURE_COLUMNS, ZERO_WHEN_ABSENT, features_from_transactions
from training.validate import TableError

logger = logging.getLogger("training")

PARQUET_SUFFIXES = (".parquet", ".pq")
#: the columns :func:`rfm_from_transactions` produces, besides the id
RFM_COLUMNS = FEATURE_COLUMNS
WHITESPACE = r"\s+"


@dataclass(frozen=True)
class LoadedData:
    """The inputs as read, before validation."""

    #: the customer table as read (plus RFM columns when built from transactions)
    customers: pd.DataFrame
    campaigns: list[Campaign]
    #: long form: customer_id (str), campaign_id (str; NA on a control row with no campaign),
    #: responded (raw values), source_column, treated (raw values, or absent); or None
    responses: pd.DataFrame | None
    #: absolute paths of every file read
    sources: list[str]
    #: problems that did not stop loading (rows dropped from transactions), for the manifest
    warnings: tuple[str, ...] = ()
    #: what building features from transactions did (``CleaningSummary.to_dict``), or None
    transactions: dict[str, Any] | None = None
    #: the pool file's own settings (control-group salt, global holdout share)
    pool: PoolSettings = field(default_factory=PoolSettings)
    #: source -> SHA-256 of the rows read, for sources that are not files (databases)
    digests: dict[str, str] = field(default_factory=dict)


def detect_separator(path: str | Path) -> str:
    """The CSV separator of a text table: comma, semicolon or tab, else runs of whitespace."""
    with open(path, encoding="utf-8", errors="replace", newline="") as handle:
        head = handle.read(64_000)
    lines = [line for line in head.splitlines() if line.strip()][:20]
    if not lines:
        return ","
    try:
        return csv.Sniffer().sniff("\n".join(lines), delimiters=",;\t").delimiter
    except csv.Error:
        first = lines[0]
        counts = {sep: first.count(sep) for sep in (",", ";", "\t")}
        best = max(counts, key=counts.get)
        if counts[best] > 0:
            return best
        # No delimiter at all but several fields: a whitespace-aligned file (like CDNOW).
        return WHITESPACE if len(first.split()) > 1 else ","


PARQUET_MAGIC = b"PAR1"


def _looks_like_parquet(path: Path) -> bool:
    """True when the file starts with Parquet's magic bytes, whatever its name says."""
    with open(path, "rb") as handle:
        return handle.read(4) == PARQUET_MAGIC


def read_table(
    path: str | Path,
    separator: str | None = None,
    text_columns: tuple[str, ...] = (),
    decimal: str = ".",
    thousands: str | None = None,
) -> pd.DataFrame:
    """Read a CSV or Parquet table; ``text_columns`` (ids) are read as stripped strings.

    Parquet is recognised by its magic bytes, so a misnamed file still reads (and a ``.parquet``
    file that holds text is reported as such). ``decimal`` and ``thousands`` are the number
    marks of a CSV (``1.234,50`` reads with ``decimal=","``, ``thousands="."``).
    """
    path = Path(path)
    if not path.is_file():
        raise TableError(f"file not found: {path}")
    is_parquet = _looks_like_parquet(path)
    if path.suffix.lower() in PARQUET_SUFFIXES and not is_parquet:
        raise TableError(
            f"cannot read {path}: it is not a Parquet file (no Parquet magic bytes; "
            "a CSV file should be named .csv)"
        )
    try:
        if is_parquet:
            frame = pd.read_parquet(path)
        else:
            sep = separator or detect_separator(path)
            if sep.strip() == "" and sep != "\t":
                sep = WHITESPACE  # " " means aligned columns: runs of blanks, leading ones too
            frame = pd.read_csv(
                path,
                sep=sep,
                dtype=dict.fromkeys(text_columns, str),
                engine="python" if sep == WHITESPACE else "c",
                skipinitialspace=sep == WHITESPACE,
                decimal=decimal,
                thousands=thousands,
                encoding="utf-8-sig",
            )
            # A whitespace file whose lines start with a blank gets an unnamed first column.
            frame.columns = [str(c).strip() for c in frame.columns]
    except TableError:
        raise
    except UnicodeDecodeError as exc:
        raise TableError(
            f"cannot read {path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
            f"{exc.start}); save it as UTF-8"
        ) from None
    except pd.errors.EmptyDataError:
        raise TableError(f"cannot read {path}: the file is empty") from None
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        message = " ".join(str(exc).split())  # one line, whatever the reader said
        raise TableError(f"cannot read {path}: {message}") from None
    for column in text_columns:
        if column in frame.columns:
            frame[column] = ids_as_text(frame[column])
    logger.info("read %s: %d rows x %d columns", path, len(frame), frame.shape[1])
    return frame


def database_source(section: DataConfig | TransactionsConfig) -> DatabaseSource | None:
    """The PostgreSQL source a ``[data]`` or ``[data.transactions]`` section names, or None."""
    location = section.customers if isinstance(section, DataConfig) else section.path
    if not is_database_url(location):
        return None
    return DatabaseSource(
        url=str(location),
        table=section.table,
        query=section.query,
        password_env=section.password_env,
        fetch_rows=section.fetch_rows,
    )


def read_source(
    section: DataConfig | TransactionsConfig, text_columns: tuple[str, ...]
) -> tuple[pd.DataFrame, str, str | None]:
    """The table a section names, from its file or its database: (frame, source, digest).

    ``source`` names it for messages and the manifest (never with a password); ``digest`` is
    the SHA-256 of the rows when they came from a database (a file is hashed from its bytes).
    """
    db = database_source(section)
    if db is not None:
        table = read_database(db, text_columns)
        return table.frame, db.describe(), table.sha256
    path = section.customers if isinstance(section, DataConfig) else section.path
    frame = read_table(
        path,
        section.separator,
        text_columns=text_columns,
        decimal=section.decimal,
        thousands=section.thousands,
    )
    return frame, str(path), None


def read_transactions(tx_config: TransactionsConfig) -> tuple[pd.DataFrame, str, str | None]:
    """The raw transactions a ``[data.transactions]`` section names (see :func:`read_source`)."""
    return read_source(tx_config, (tx_config.customer_column,))


def rfm_from_transactions(
    transactions: pd.DataFrame, config: TransactionsConfig, id_column: str = "customer_id"
) -> pd.DataFrame:
    """Per-customer features (:data:`RFM_COLUMNS`) from raw transactions, one row per customer.

    See :mod:`training.transactions` for the cleaning, the returns and each feature; this keeps
    only the features (:func:`~training.transactions.features_from_transactions` also returns
    what was dropped).
    """
    return features_from_transactions(transactions, config, id_column).features


def _campaign_from_entry(entry: Any, where: str) -> Campaign:
    """One pool entry (a mapping) -> Campaign, refusing unknown fields."""
    if not isinstance(entry, dict):
        raise TableError(f"{where}: a campaign entry must be a table, got {entry!r}")
    known = {f.name for f in fields(Campaign)}
    cid = str(entry.get("id", "")) or None
    unknown = sorted(set(entry) - known)
    if unknown:
        raise TableError(
            f"unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}",
            campaign=cid or where,
        )
    missing = [k for k in ("id", "name", "value") if entry.get(k) in (None, "")]
    if missing:
        raise TableError(f"missing field(s): {', '.join(missing)}", campaign=cid or where)
    data = dict(entry)
    data["id"] = str(data["id"])
    try:
        data["value"] = float(data["value"])
    except (TypeError, ValueError):
        raise TableError(f"value {entry['value']!r} is not a number", campaign=cid) from None
    eligible = data.get("eligible_segments")
    if isinstance(eligible, str):
        # CSV cells list segment names separated by "|" (or ";"); an empty cell means all.
        eligible = [s.strip() for s in eligible.replace(";", "|").split("|") if s.strip()]
        data["eligible_segments"] = eligible or None
    elif eligible is not None:
        data["eligible_segments"] = [str(s) for s in eligible]
    for key in ("channel", "description"):
        if key in data and (data[key] is None or pd.isna(data[key])):
            del data[key]
    for key in ("conditions", "channels"):
        # CSV cells list several entries separated by "|"
        if isinstance(data.get(key), str):
            data[key] = [v.strip() for v in data[key].split("|") if v.strip()] or None
    try:
        return Campaign(**data)
    except (TypeError, ValueError) as exc:
        raise TableError(str(exc), campaign=cid or where) from None


def read_pool_settings(path: str | Path | None) -> PoolSettings:
    """The pool file's top-level ``salt`` and ``holdout_share`` (JSON object or TOML keys)."""
    if path is None:
        return PoolSettings()
    path = Path(path)
    suffix = path.suffix.lower()
    data: Any = None
    try:
        if suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
        elif suffix == ".toml":
            data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return PoolSettings()  # read_campaign_pool reports the problem
    if not isinstance(data, dict):
        return PoolSettings()
    try:
        return PoolSettings(salt=data.get("salt", ""), holdout_share=data.get("holdout_share", 0.0))
    except ValueError as exc:
        raise TableError(f"campaign pool {path.name}: {exc}") from None


def read_campaign_pool(path: str | Path) -> list[Campaign]:
    """A campaign pool file: JSON (a list, or {"campaigns": [...]}), TOML (``[[campaign]]`` or
    ``[[campaigns]]`` tables) or CSV (columns id, name, value, channel, description,
    eligible_segments with names separated by ``|``)."""
    path = Path(path)
    if not path.is_file():
        raise TableError(f"campaign pool file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            entries = data.get("campaigns") if isinstance(data, dict) else data
        elif suffix == ".toml":
            data = tomllib.loads(path.read_text(encoding="utf-8"))
            entries = data.get("campaign", data.get("campaigns"))
        else:
            frame = read_table(path, text_columns=("id",))
            entries = [
                {
                    k: v
                    for k, v in row.items()
                    if not (v is None or (isinstance(v, float) and np.isnan(v)))
                }
                for row in frame.to_dict(orient="records")
            ]
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise TableError(f"cannot read campaign pool {path}: {exc}") from None
    if not isinstance(entries, list):
        raise TableError(f"campaign pool {path}: expected a list of campaigns")
    return [_campaign_from_entry(e, f"{path.name}[{i}]") for i, e in enumerate(entries)]


def load_campaigns(config: TrainConfig) -> list[Campaign]:
    """The campaign pool: the pool file's campaigns followed by the inline ones."""
    campaigns = read_campaign_pool(config.campaigns.pool) if config.campaigns.pool else []
    campaigns += [
        _campaign_from_entry(dict(e), f"campaigns.inline[{i}]")
        for i, e in enumerate(config.campaigns.inline)
    ]
    return campaigns


def _wide_to_long(frame: pd.DataFrame, ids: pd.Series, columns: dict[str, str]) -> pd.DataFrame:
    """Wide response columns (column -> campaign id) to long rows; missing = not offered."""
    parts = []
    for column, campaign_id in columns.items():
        if column not in frame.columns:
            raise TableError(
                "configured response column absent; the table has: "
                + ", ".join(map(str, frame.columns[:40])),
                column=column,
            )
        values = frame[column]
        offered = values.notna().to_numpy()
        parts.append(
            pd.DataFrame(
                {
                    "customer_id": ids.to_numpy()[offered],
                    "campaign_id": campaign_id,
                    "responded": values.to_numpy()[offered],
                    "source_column": column,
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def customer_ids(frame: pd.DataFrame, config: TrainConfig) -> pd.Series:
    """Customer ids as strings: the id column, or row numbers when there is none."""
    if config.data.id_column is None:
        return pd.Series(np.arange(len(frame)).astype(str), index=frame.index, dtype=object)
    return frame[config.data.id_column].astype(str)


def _require_columns(frame: pd.DataFrame, columns: Sequence[str], where: str) -> None:
    for column in columns:
        if column not in frame.columns:
            raise TableError(
                f"configured response column absent; {where} has: "
                + ", ".join(map(str, frame.columns[:40])),
                column=column,
            )


def _long_responses(frame: pd.DataFrame, ids: pd.Series, config: TrainConfig) -> pd.DataFrame:
    """Long rows from a response table (or the customer table itself), arms mapped to ids.

    Campaign values listed in ``control_values`` become control rows with no campaign (NA).
    """
    responses = config.responses
    columns = [responses.campaign_column, responses.responded_column]
    if responses.treated_column is not None:
        columns.append(responses.treated_column)
    _require_columns(frame, columns, "the response table")
    campaign = frame[responses.campaign_column].astype("string").str.strip()
    if responses.campaign_map:
        campaign = campaign.replace(dict(responses.campaign_map))
    if responses.control_values:
        campaign = campaign.mask(campaign.isin(list(responses.control_values)))
    long = pd.DataFrame(
        {
            "customer_id": ids.to_numpy(),
            "campaign_id": campaign.to_numpy(),
            "responded": frame[responses.responded_column].to_numpy(),
            "source_column": responses.responded_column,
        }
    )
    if responses.treated_column is not None:
        long["treated"] = frame[responses.treated_column].to_numpy()
    return long


def load_responses(
    config: TrainConfig, customers: pd.DataFrame
) -> tuple[pd.DataFrame | None, list[str]]:
    """The response history in long form (customer_id, campaign_id, responded) and its sources.

    A long history without ``path`` lives in the customer table itself, one row per customer
    (a randomized experiment: its arm and outcome columns).
    """
    responses = config.responses
    if responses is None:
        return None, []
    if responses.path is None:
        if config.data.id_column is not None and config.data.id_column not in customers.columns:
            return None, []  # reported as an absent column by validation
        ids = customer_ids(customers, config)
        if responses.format == "wide":
            return _wide_to_long(customers, ids, responses.columns), []
        return _long_responses(customers, ids, config), []
    frame = read_table(
        responses.path,
        responses.separator,
        text_columns=(responses.customer_column, responses.campaign_column),
    )
    _require_columns(frame, [responses.customer_column], "the response file")
    ids = frame[responses.customer_column].astype("string")
    if responses.format == "wide":
        return _wide_to_long(frame, ids, responses.columns), [str(responses.path)]
    return _long_responses(frame, ids, config), [str(responses.path)]


def load_tables(config: TrainConfig) -> LoadedData:
    """Read every input the config names."""
    data = config.data
    sources: list[str] = []
    id_column = data.id_column or "customer_id"
    customers = None
    warnings: tuple[str, ...] = ()
    summary = None
    digests: dict[str, str] = {}
    if data.customers is not None:
        text = (data.id_column,) if data.id_column else ()
        customers, source, digest = read_source(data, text)
        sources.append(source)
        if digest:
            digests[source] = digest
    if data.transactions is not None:
        tx_config = data.transactions
        transactions, source, digest = read_transactions(tx_config)
        sources.append(source)
        if digest:
            digests[source] = digest
        built = features_from_transactions(transactions, tx_config, id_column)
        rfm = built.features
        warnings = tuple(built.summary.warnings())
        summary = built.summary.to_dict()
        if customers is None:
            customers = rfm
        else:
            if id_column not in customers.columns:
                raise TableError(
                    "the customer table needs its id column to join the transactions",
                    column=id_column,
                )
            # Customers without transactions have bought nothing: zero counts and amounts,
            # and no recency, tenure or purchase gap (left missing, to be imputed).
            left = customers.assign(_key=customers[id_column].astype(str))
            merged = left.merge(
                rfm.rename(columns={id_column: "_key"}), on="_key", how="left"
            ).drop(columns="_key")
            for column in ZERO_WHEN_ABSENT:
                merged[column] = merged[column].fillna(0.0)
            customers = merged
    campaigns = load_campaigns(config)
    pool = read_pool_settings(config.campaigns.pool)
    if config.campaigns.pool:
        sources.append(str(config.campaigns.pool))
    responses, response_sources = load_responses(config, customers)
    sources += response_sources
    return LoadedData(
        customers=customers,
        campaigns=campaigns,
        responses=responses,
        sources=sources,
        warnings=warnings,
        transactions=summary,
        pool=pool,
        digests=digests,
    )
