"""Raw transactions -> one row of RFM features per customer, as of a snapshot date.

Two steps, both pure functions of a DataFrame:

1. :func:`clean_transactions` reads the configured columns into a normal form (``customer``,
   ``day``, ``amount``, ``is_return``, ``invoice``) and counts every row it drops or changes, by
   reason (no customer id, unreadable or missing date, non-numeric or missing amount, zero
   amount such as a zero price, a return under ``returns = "drop"``, a date after the snapshot).
   A column that is mostly unreadable is a configuration mistake (wrong date format, wrong
   column) and is refused with :class:`~training.validate.TableError` instead.
2. :func:`customer_features` aggregates the normal form per customer with one pandas groupby
   (the Dask engine reuses it on partitions of the same normal form).

Returns and cancellations are rows with a negative amount (or quantity), or whose invoice id
matches ``return_invoice_pattern`` (``"^C"`` for the usual cancelled invoices). They never count
as a purchase day. ``returns = "net"`` subtracts their value from spend (a customer's spend is
clipped at 0 when returns exceed the purchases in the window, and counted), ``"own"`` keeps spend
gross, and both fill the return features; ``"drop"`` removes them (return features are then 0).
A customer with returns but no purchase is dropped and counted.

The features (:data:`FEATURE_COLUMNS`), all as of ``as_of`` (default: the day after the last
kept transaction):

- ``recency_days``: days from the last purchase day to ``as_of``
- ``frequency``: distinct purchase days
- ``transaction_count``: purchases: distinct invoices with an invoice column, else rows
- ``monetary_total``: purchase value (net of returns with ``returns = "net"``)
- ``monetary_avg``: ``monetary_total`` per purchase day
- ``tenure_days``: days from the first purchase day to ``as_of``
- ``avg_days_between``: mean days between purchase days; for a one-day customer, the days since
  that purchase (the gap so far is at least that long, so it never reads as a frequent buyer)
- ``return_count``: returns (distinct return invoices, else rows)
- ``return_share``: value returned / value bought, in [0, 1]
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from scoring.ids import ids_as_text
from training.config import TRANSACTION_FEATURES, TransactionsConfig
from training.validate import TableError

logger = logging.getLogger("training")

#: the per-customer features, besides the id column, in this order (named and described with
#: their kinds in training.config, which ``--help`` reads without importing pandas)
FEATURE_COLUMNS = tuple(TRANSACTION_FEATURES)
FEATURE_KINDS = {name: kind for name, (kind, _) in TRANSACTION_FEATURES.items()}
RETURN_MODES = ("net", "drop", "own")
#: a column more unreadable than this is refused as misconfigured rather than cleaned
UNREADABLE_LIMIT = 0.5
#: features that are 0 for a customer of the customer table with no transaction (recency, tenure
#: and the purchase gap have no value then: left missing, to be imputed)
ZERO_WHEN_ABSENT = (
    "frequency",
    "transaction_count",
    "monetary_total",
    "monetary_avg",
    "return_count",
    "return_share",
)
#: the normal form :func:`clean_transactions` returns and :func:`customer_features` reads
NORMAL_COLUMNS = ("customer", "day", "amount", "is_return", "invoice")


@dataclass
class CleaningSummary:
    """What cleaning did to the transaction rows: counts by reason, with an example each."""

    rows_in: int = 0
    rows_kept: int = 0
    #: reason -> rows dropped
    dropped: dict[str, int] = field(default_factory=dict)
    #: reason -> rows (or customers) changed but kept
    changed: dict[str, int] = field(default_factory=dict)
    #: reason -> an example value (as text)
    examples: dict[str, str] = field(default_factory=dict)
    returns: int = 0
    customers: int = 0
    as_of: str | None = None

    def drop(self, reason: str, mask: pd.Series | np.ndarray, values: Any = None) -> None:
        """Count the rows of ``mask`` as dropped for ``reason`` (with an example value)."""
        count = int(np.count_nonzero(mask))
        if count:
            self.dropped[reason] = self.dropped.get(reason, 0) + count
            if values is not None and reason not in self.examples:
                pos = int(np.argmax(np.asarray(mask)))
                self.examples[reason] = repr(_item(values, pos))

    def change(self, reason: str, count: int) -> None:
        """Count ``count`` rows or customers as changed for ``reason``."""
        if count:
            self.changed[reason] = self.changed.get(reason, 0) + int(count)

    def warnings(self) -> list[str]:
        """One line per reason, for the summary and the manifest's warnings."""
        out = []
        for reason, count in self.dropped.items():
            example = self.examples.get(reason)
            out.append(
                f"transactions: {count:,} of {self.rows_in:,} rows dropped: {reason}"
                + (f" (e.g. {example})" if example else "")
            )
        for reason, count in self.changed.items():
            out.append(f"transactions: {count:,} {reason}")
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form for the manifest."""
        return {
            "rows_in": self.rows_in,
            "rows_kept": self.rows_kept,
            "dropped": dict(self.dropped),
            "changed": dict(self.changed),
            "returns": self.returns,
            "customers": self.customers,
            "as_of": self.as_of,
        }


@dataclass(frozen=True)
class CustomerFeatures:
    """Per-customer features built from transactions and what building them did."""

    #: id column then :data:`FEATURE_COLUMNS`, one row per customer, sorted by id
    features: pd.DataFrame
    summary: CleaningSummary
    as_of: pd.Timestamp


def _item(values: Any, pos: int) -> Any:
    item = values.iloc[pos] if hasattr(values, "iloc") else values[pos]
    return item.item() if hasattr(item, "item") else item


def require_column(transactions: pd.DataFrame, column: str | None) -> None:
    """Refuse a configured column the transactions do not have, listing the ones they do."""
    if column is not None and column not in transactions.columns:
        raise TableError(
            "configured transaction column absent; the transactions have: "
            + ", ".join(map(str, transactions.columns)),
            column=column,
        )


def _refuse_if_mostly_bad(bad: pd.Series, present: pd.Series, raw: pd.Series, what: str, column):
    """A column whose present values are mostly unreadable is misconfigured: refuse it."""
    n_present = int(present.sum())
    n_bad = int(bad.sum())
    if n_bad and n_bad > UNREADABLE_LIMIT * max(n_present, 1):
        pos = int(np.argmax(bad.to_numpy()))
        raise TableError(
            f"{n_bad:,} of {n_present:,} values are unreadable {what}s, e.g. "
            f"{raw.iloc[pos]!r} at row {pos}; check the column and its format",
            column=column,
        )


def parse_dates(raw: pd.Series, date_format: str | None) -> pd.Series:
    """Dates of a column: text in ``date_format`` (or any pandas reads), numbers as yyyymmdd.

    Each distinct value is parsed once: a transaction table repeats its dates (and timestamps)
    many times, and parsing text is the expensive part.
    """
    if pd.api.types.is_datetime64_any_dtype(raw):
        return raw
    codes, uniques = pd.factorize(raw, use_na_sentinel=True)
    values = pd.Series(uniques)
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        # Numbers such as 19970101 are yyyymmdd (or the configured format) read as text, never
        # nanoseconds or epochs (pandas reads numbers with a format as epochs).
        whole = values.where(values % 1 == 0)
        parsed = pd.to_datetime(
            whole.astype("Int64").astype("string"), format=date_format or "%Y%m%d", errors="coerce"
        )
    else:
        parsed = pd.to_datetime(values, format=date_format, errors="coerce")
    table = np.append(parsed.to_numpy(dtype="datetime64[ns]"), np.datetime64("NaT", "ns"))
    return pd.Series(table[codes], index=raw.index)  # code -1 (missing) takes the NaT


def _numbers(transactions: pd.DataFrame, column: str) -> tuple[np.ndarray, np.ndarray]:
    """A numeric column (NaN where missing or unreadable) and the mask of unreadable values."""
    raw = transactions[column]
    if pd.api.types.is_numeric_dtype(raw) and not pd.api.types.is_bool_dtype(raw):
        return raw.to_numpy(dtype=np.float64, na_value=np.nan), np.zeros(len(raw), dtype=bool)
    values = pd.to_numeric(raw, errors="coerce").astype(np.float64)
    bad = values.isna() & raw.notna()
    _refuse_if_mostly_bad(bad, raw.notna(), raw, "number", column)
    return values.to_numpy(), bad.to_numpy()


def customer_ids(raw: pd.Series) -> pd.Series:
    """Customer ids as stripped text; whole floats (an id column with gaps) lose their ``.0``."""
    return ids_as_text(raw).astype("string")


def clean_transactions(
    transactions: pd.DataFrame, config: TransactionsConfig, *, allow_empty: bool = False
) -> tuple[pd.DataFrame, CleaningSummary]:
    """The configured columns in normal form (:data:`NORMAL_COLUMNS`), and what was dropped.

    ``customer`` is categorical (the ids as text), ``invoice`` categorical or all missing.
    ``amount`` is the configured amount column, or quantity x price; it is positive for purchases
    and the (positive) value returned for returns. Each dropped row is counted once, under the
    first reason that applies. ``transactions`` is not modified. A table with no usable row is
    refused unless ``allow_empty`` (one partition of a larger table: the caller judges the whole).
    """
    summary = CleaningSummary(rows_in=len(transactions))
    qty_price = (config.quantity_column, config.price_column)
    for column in (config.customer_column, config.date_column, config.invoice_column):
        require_column(transactions, column)
    if any(qty_price):
        for column in qty_price:
            require_column(transactions, column)
    else:
        require_column(transactions, config.amount_column)

    alive = np.ones(len(transactions), dtype=bool)

    def drop(reason: str, mask: Any, values: Any = None) -> None:
        mask = np.asarray(mask, dtype=bool)
        hit = alive & mask
        summary.drop(reason, hit, values)
        alive[hit] = False

    ids = customer_ids(transactions[config.customer_column])
    id_codes, id_values = pd.factorize(ids, use_na_sentinel=True)
    empty = np.flatnonzero(np.asarray(id_values == "", dtype=bool))
    drop("no customer id", (id_codes < 0) | np.isin(id_codes, empty))

    raw_dates = transactions[config.date_column]
    dates = parse_dates(raw_dates, config.date_format)
    missing = raw_dates.isna().to_numpy()
    unreadable = dates.isna().to_numpy() & ~missing
    _refuse_if_mostly_bad(
        pd.Series(unreadable), pd.Series(~missing), raw_dates, "date", config.date_column
    )
    drop(f"unreadable date in {config.date_column}", unreadable, raw_dates)
    drop(f"no date in {config.date_column}", missing)

    with np.errstate(invalid="ignore"):
        if any(qty_price):
            quantity, bad_q = _numbers(transactions, config.quantity_column)
            price, bad_p = _numbers(transactions, config.price_column)
            drop(
                f"non-numeric {config.quantity_column}",
                bad_q,
                transactions[config.quantity_column],
            )
            drop(f"non-numeric {config.price_column}", bad_p, transactions[config.price_column])
            drop(f"no {config.quantity_column}", np.isnan(quantity))
            drop(f"no {config.price_column}", np.isnan(price))
            amount = quantity * price
            # a negative quantity is a return whatever the sign of the price
            negative = (quantity < 0) | (price < 0)
            zero = f"zero amount ({config.quantity_column} or {config.price_column} is 0)"
        else:
            amount, bad = _numbers(transactions, config.amount_column)
            drop(f"non-numeric {config.amount_column}", bad, transactions[config.amount_column])
            drop(f"no {config.amount_column}", np.isnan(amount))
            negative = amount < 0
            zero = f"zero amount in {config.amount_column}"
    if config.zero_amounts == "drop":
        drop(zero, amount == 0)

    is_return = negative.copy()
    invoice = None
    if config.invoice_column is not None:
        inv_codes, inv_values = pd.factorize(
            transactions[config.invoice_column].astype("string").str.strip(), use_na_sentinel=True
        )
        invoice = pd.Categorical.from_codes(inv_codes, pd.Index(inv_values, dtype="string"))
        if config.return_invoice_pattern:
            pattern = pd.Series(inv_values, dtype="string").str.contains(
                config.return_invoice_pattern, regex=True, na=False
            )
            matching = np.flatnonzero(pattern.to_numpy(dtype=bool))
            is_return |= np.isin(inv_codes, matching)
    if config.returns == "drop":
        drop("a return or cancellation (returns = drop)", is_return)
    summary.returns = int((is_return & alive).sum())

    days = dates.to_numpy(dtype="datetime64[ns]").astype("datetime64[D]")
    if config.as_of:
        as_of = pd.Timestamp(config.as_of)
        drop(
            f"dated on or after the snapshot date {as_of.date()}",
            days >= np.datetime64(as_of.date(), "D"),
            raw_dates,
        )
    keep = np.flatnonzero(alive)
    summary.rows_kept = len(keep)
    if not len(keep) and not allow_empty:
        raise nothing_usable(summary)
    customer = pd.Categorical.from_codes(
        id_codes[keep], pd.Index(np.asarray(id_values, dtype=object), dtype="string")
    )
    clean = pd.DataFrame(
        {
            "customer": customer,
            "day": days[keep].astype("datetime64[ns]"),
            "amount": np.abs(amount[keep]),
            "is_return": is_return[keep],
            "invoice": invoice[keep] if invoice is not None else None,
        }
    )
    return clean, summary


def nothing_usable(summary: CleaningSummary) -> TableError:
    """The refusal of a table whose every row was dropped, with the counts by reason."""
    return TableError(
        f"no usable transactions: all {summary.rows_in:,} rows were dropped ("
        + "; ".join(f"{reason}: {n:,}" for reason, n in summary.dropped.items())
        + ")"
    )


def _codes(column: pd.Series) -> tuple[np.ndarray, pd.Index]:
    """Integer codes and the values they stand for (categorical columns reuse theirs)."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        return column.cat.codes.to_numpy(np.int64), column.cat.categories
    codes, values = pd.factorize(column, use_na_sentinel=True)
    return codes.astype(np.int64), pd.Index(values)


def _distinct_per(group: np.ndarray, value: np.ndarray, n_groups: int) -> np.ndarray:
    """Distinct ``value`` (non-negative ints) per ``group``, for every group in 0..n_groups-1."""
    if not len(group):
        return np.zeros(n_groups, dtype=np.int64)
    span = int(value.max()) + 1
    pairs = np.sort(group * span + value)
    # sort and compare neighbours: np.unique takes many times longer on millions of integers
    first = np.empty(len(pairs), dtype=bool)
    first[0] = True
    np.not_equal(pairs[1:], pairs[:-1], out=first[1:])
    return np.bincount(pairs[first] // span, minlength=n_groups)


def customer_features(
    clean: pd.DataFrame,
    as_of: pd.Timestamp,
    returns: str = "net",
    id_column: str = "customer_id",
    summary: CleaningSummary | None = None,
) -> pd.DataFrame:
    """Per-customer features (:data:`FEATURE_COLUMNS`) of normal-form transactions as of ``as_of``.

    One row per customer with at least one purchase, sorted by id. Customers with only returns
    are left out (counted in ``summary`` when given), as are spends clipped at 0. Aggregated with
    numpy over integer codes (counts, sums, distinct pairs): a pandas groupby of ten million rows
    keyed by text, with two distinct-counts, takes several times longer.
    """
    codes, values = _codes(clean["customer"])
    n = len(values)
    day = clean["day"].to_numpy(dtype="datetime64[D]").astype(np.int64)
    amount = clean["amount"].to_numpy(np.float64)
    back = clean["is_return"].to_numpy(bool)
    buy = ~back
    cb, db = codes[buy], day[buy]
    bought = np.bincount(cb, minlength=n) > 0
    gross = np.bincount(cb, weights=amount[buy], minlength=n)
    returned = np.bincount(codes[back], weights=amount[back], minlength=n)
    never = np.iinfo(np.int64).max
    first = np.full(n, never)
    np.minimum.at(first, cb, db)
    last = np.full(n, -never)
    np.maximum.at(last, cb, db)
    base = int(day.min()) if len(day) else 0
    frequency = _distinct_per(cb, db - base, n)
    has_invoice = clean["invoice"].notna().any()
    if has_invoice:
        inv, _ = _codes(clean["invoice"])
        count = _distinct_per(cb, inv[buy], n)
        return_count = _distinct_per(codes[back], inv[back], n)
    else:
        count = np.bincount(cb, minlength=n)
        return_count = np.bincount(codes[back], minlength=n)
    if summary is not None:
        summary.change(
            "customers with returns but no purchase left out",
            int(((return_count > 0) & ~bought).sum()),
        )
    keep = np.flatnonzero(bought)
    gross, returned, first, last = gross[keep], returned[keep], first[keep], last[keep]
    freq = frequency[keep]
    total = gross
    if returns == "net":
        net = gross - returned
        if summary is not None:
            summary.change(
                "customers whose returns exceed their purchases in the window: spend set to 0",
                int((net < 0).sum()),
            )
        total = np.maximum(net, 0.0)
    snapshot = int(np.datetime64(pd.Timestamp(as_of).date(), "D").astype(np.int64))
    span = (last - first).astype(np.float64)
    tenure = snapshot - first
    with np.errstate(divide="ignore", invalid="ignore"):
        between = np.where(freq > 1, span / np.maximum(freq - 1, 1), tenure.astype(np.float64))
        share = np.where(gross > 0, returned / gross, 0.0)
    ids = pd.Index(values, dtype="string")[keep]
    order = ids.argsort()
    features = pd.DataFrame(
        {
            id_column: ids.to_numpy(dtype=object),
            "recency_days": snapshot - last,
            "frequency": freq,
            "transaction_count": count[keep],
            "monetary_total": total,
            "monetary_avg": total / freq,
            "tenure_days": tenure,
            "avg_days_between": between,
            "return_count": return_count[keep],
            "return_share": np.clip(share, 0.0, 1.0),
        }
    )
    return features.take(order).reset_index(drop=True)


def snapshot_date(clean: pd.DataFrame, as_of: str | None) -> pd.Timestamp:
    """The configured snapshot date, or the day after the last kept transaction."""
    return pd.Timestamp(as_of) if as_of else pd.Timestamp(clean["day"].max()) + pd.Timedelta(days=1)


def check_settings(config: TransactionsConfig) -> None:
    """Refuse a returns mode or return-invoice pattern that cannot be applied."""
    if config.returns not in RETURN_MODES:
        raise TableError(f"returns={config.returns!r}; expected one of {', '.join(RETURN_MODES)}")
    if config.return_invoice_pattern is not None:
        try:
            re.compile(config.return_invoice_pattern)
        except re.error as exc:
            raise TableError(
                f"return_invoice_pattern {config.return_invoice_pattern!r} is not a valid "
                f"regular expression: {exc}"
            ) from None


def no_customers_error(as_of: pd.Timestamp) -> TableError:
    """The refusal of a table in which no customer bought anything before the snapshot date."""
    return TableError(f"no customer has a purchase before the snapshot date {as_of.date()}")


def report(summary: CleaningSummary) -> None:
    """Log the cleaning summary's warnings and what was built (both engines)."""
    for warning in summary.warnings():
        logger.warning("%s", warning)
    logger.info(
        "built features for %d customers from %d of %d transactions (as of %s)",
        summary.customers,
        summary.rows_kept,
        summary.rows_in,
        summary.as_of,
    )


def features_from_transactions(
    transactions: pd.DataFrame, config: TransactionsConfig, id_column: str = "customer_id"
) -> CustomerFeatures:
    """Clean ``transactions`` and build the per-customer features, with the cleaning summary."""
    check_settings(config)
    clean, summary = clean_transactions(transactions, config)
    as_of = snapshot_date(clean, config.as_of)
    features = customer_features(clean, as_of, config.returns, id_column, summary)
    if features.empty:
        raise no_customers_error(as_of)
    summary.customers = len(features)
    summary.as_of = str(as_of.date())
    report(summary)
    return CustomerFeatures(features=features, summary=summary, as_of=as_of)
