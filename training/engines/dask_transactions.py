"""Raw transactions -> per-customer RFM features on a Dask cluster (``train --engine dask``).

The single-process functions of :mod:`training.transactions`, run where the rows are:

1. every partition (Parquet file) is cleaned by :func:`~training.transactions.clean_transactions`
   on its worker; the per-reason counts of dropped and changed rows, the returns and the last
   kept day come back (small) and are combined on the client into one ``CleaningSummary``, so
   the manifest and the warnings say exactly what the single-process path says;
2. the snapshot date is the configured one, or the day after the last kept day of all
   partitions (a max reduced over them);
3. the clean rows are shuffled by customer id (Dask's hash shuffle: every customer's rows land
   in one partition), then :func:`~training.transactions.customer_features` aggregates each
   partition: a groupby on the cluster by the single-process aggregation itself, so each
   customer's features equal the local path's exactly (a pandas ``groupby().apply`` would call
   Python once per customer; the numpy aggregation does a partition at once).

Differences from one process, kept in the manifest's approximations: a column is judged
"mostly unreadable" (and refused) per partition rather than over the whole table, so one bad
file is refused even when the others are clean; the rows of the output are ordered by the
shuffle, not by id.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd

from training.transactions import (
    CleaningSummary,
    check_settings,
    clean_transactions,
    customer_features,
    no_customers_error,
    nothing_usable,
    report,
    require_column,
    snapshot_date,
)

if TYPE_CHECKING:
    import dask.dataframe as dd
    from distributed import Client

    from training.config import TransactionsConfig

#: the manifest's note on what differs from the single-process path
APPROXIMATION = (
    "transactions: 'mostly unreadable' columns judged per partition (file); features equal "
    "the single-process path's, rows ordered by the shuffle"
)


def _clean_partition(frame: pd.DataFrame, config: TransactionsConfig) -> tuple:
    """(clean rows with plain-text ids, cleaning summary, last kept day or None) of a partition.

    The categorical columns become text: each partition has its own categories, and the
    shuffle must compare ids, not codes.
    """
    clean, summary = clean_transactions(frame.reset_index(drop=True), config, allow_empty=True)
    clean = clean.assign(
        customer=clean["customer"].astype("string"),
        invoice=clean["invoice"].astype("string"),
    )
    last = clean["day"].max() if len(clean) else None
    return clean, summary, last


def _piece(result: tuple, i: int) -> Any:
    return result[i]


def _features_partition(
    clean: pd.DataFrame, as_of: pd.Timestamp, returns: str, id_column: str
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Features of the customers of one shuffled partition, and the customers it changed."""
    summary = CleaningSummary()
    features = customer_features(clean, as_of, returns, id_column, summary)
    return features, summary.changed


def combine_summaries(parts: list[CleaningSummary]) -> CleaningSummary:
    """One summary of the whole table from the partitions' (counts added, first example kept)."""
    total = CleaningSummary()
    for part in parts:
        total.rows_in += part.rows_in
        total.rows_kept += part.rows_kept
        total.returns += part.returns
        for reason, count in part.dropped.items():
            total.dropped[reason] = total.dropped.get(reason, 0) + count
        for reason, count in part.changed.items():
            total.change(reason, count)
        for reason, example in part.examples.items():
            total.examples.setdefault(reason, example)
    return total


def features_on_cluster(
    client: Client, frame: dd.DataFrame, config: TransactionsConfig, id_column: str
) -> tuple[dd.DataFrame, CleaningSummary]:
    """Per-customer features (id column, then ``FEATURE_COLUMNS``) of the transactions in
    ``frame``, persisted on the cluster, and the combined cleaning summary.

    Refuses what the single-process path refuses, with its messages: a configured column the
    table lacks, a bad returns setting, a table with nothing usable, no customer with a purchase.
    """
    import dask
    import dask.dataframe as dd
    from dask import delayed

    check_settings(config)
    qty_price = (config.quantity_column, config.price_column)
    wanted = [config.customer_column, config.date_column, config.invoice_column]
    wanted += list(qty_price) if any(qty_price) else [config.amount_column]
    for column in wanted:
        require_column(frame._meta, column)
    frame = frame[list(dict.fromkeys(c for c in wanted if c is not None))]
    cleaned = [delayed(_clean_partition)(p, config) for p in frame.to_delayed()]
    cleaned = list(dask.persist(*cleaned))
    stats = dask.compute(*[delayed(_piece)(c, 1) for c in cleaned])
    lasts = dask.compute(*[delayed(_piece)(c, 2) for c in cleaned])
    summary = combine_summaries(list(stats))
    if summary.rows_kept == 0:
        raise nothing_usable(summary)
    last_day = max(pd.Timestamp(d) for d in lasts if d is not None)
    as_of = snapshot_date(pd.DataFrame({"day": [last_day]}), config.as_of)
    clean_meta = pd.DataFrame(
        {
            "customer": pd.Series(dtype="string"),
            "day": pd.Series(dtype="datetime64[ns]"),
            "amount": pd.Series(dtype="float64"),
            "is_return": pd.Series(dtype=bool),
            "invoice": pd.Series(dtype="string"),
        }
    )
    clean = dd.from_delayed(
        [delayed(_piece)(c, 0) for c in cleaned], meta=clean_meta, verify_meta=False
    )
    # every customer's rows in one partition: the per-partition aggregation is then exact
    shuffled = clean.shuffle(on="customer", npartitions=max(1, clean.npartitions))
    built = [
        delayed(_features_partition)(p, as_of, config.returns, id_column)
        for p in shuffled.to_delayed()
    ]
    built = list(dask.persist(*built))
    for changed in dask.compute(*[delayed(_piece)(b, 1) for b in built]):
        for reason, count in changed.items():
            summary.change(reason, count)
    # the aggregation of no rows gives the exact columns and dtypes
    meta = _features_partition(clean_meta, as_of, config.returns, id_column)[0]
    features = dd.from_delayed([delayed(_piece)(b, 0) for b in built], meta=meta, verify_meta=False)
    features = client.persist(features)
    summary.customers = int(features.shape[0].compute())
    if summary.customers == 0:
        raise no_customers_error(as_of)
    summary.as_of = str(as_of.date())
    report(summary)
    return features, summary


def join_customers(customers: dd.DataFrame, features: dd.DataFrame, id_column: str):
    """The customer table with the transaction features joined on the id (left join, as the
    single-process path): a customer without transactions has zero counts and amounts, and no
    recency, tenure or purchase gap (missing, to be imputed)."""
    from training.transactions import ZERO_WHEN_ABSENT

    merged = customers.merge(features, on=id_column, how="left")
    return merged.assign(**{c: merged[c].fillna(0.0) for c in ZERO_WHEN_ABSENT})
