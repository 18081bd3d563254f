"""Reading a customer or transaction table from PostgreSQL (psycopg 3, server-side cursor).

A source is a URL ``postgresql://user@host:5432/db`` with a ``table`` (``name`` or
``schema.name``, quoted as identifiers) or a ``query``; the password comes from the environment
variable the config names (``password_env``), never from the config or the URL
(:func:`training.source_url.url_problem` refuses a URL holding one). Rows arrive in chunks of
``fetch_rows`` through a named (server-side) cursor in a read-only transaction, so the server
keeps the result and the client holds one chunk besides the frames already built.

psycopg 3 rather than Arrow/ADBC, by simplicity: one driver (``psycopg-binary`` ships its own
libpq), the server's errors (wrong password, missing table, bad SQL) come as typed exceptions
with a primary message, and no second client library. Measured (``python -m bench.database_read``,
bench/RESULTS.md): 1,000,000 rows of five columns in 9 s at fetch_rows 50,000 (8 s at 200,000)
on the loaded 2-core machine (load average 13), the server on the same cores; in an ad-hoc run
psycopg's binary protocol was slower than text (13-14 s against 7-9 s). ADBC would likely read
faster; it would matter for tens of millions of rows, not for a customer table.
``numeric`` columns are read as floats (not ``Decimal``), dates as datetimes; id columns become
text as for files.

Every failure (unreachable server, wrong password, missing table, failing query, missing
password variable) raises :class:`~training.validate.TableError` with one line naming the source
(URL without password, and the table or the start of the query); the password never appears in
it, even when the server or the driver would echo it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

import pandas as pd

from scoring.ids import ids_as_text
from training.source_url import table_parts
from training.validate import TableError

logger = logging.getLogger("training")

#: seconds before an unreachable server is reported
CONNECT_TIMEOUT = 10
#: characters of a query quoted when naming the source
QUERY_QUOTE = 60


@dataclass(frozen=True)
class DatabaseSource:
    """One table or query in a PostgreSQL database (see the module docstring)."""

    url: str
    table: str | None = None
    query: str | None = None
    password_env: str | None = None
    fetch_rows: int = 50_000

    def describe(self) -> str:
        """The source in messages and the manifest: URL and table, or the start of the query."""
        if self.table is not None:
            return f"{self.url} table {self.table}"
        query = " ".join(str(self.query).split())
        if len(query) > QUERY_QUOTE:
            query = query[: QUERY_QUOTE - 3] + "..."
        return f"{self.url} query {query!r}"


@dataclass(frozen=True)
class DatabaseTable:
    """A table read from a database and a digest of its content (for the bundle fingerprint)."""

    frame: pd.DataFrame
    sha256: str


def _one_line(exc: BaseException, password: str | None) -> str:
    """The server's or the driver's message on one line, without the password.

    A server error's primary message ("relation ... does not exist") without the quoted SQL
    that follows it; a connection error's whole text (it names host and port).
    """
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    text = " ".join(str(primary or exc).split()) or type(exc).__name__
    if password:
        text = text.replace(password, "***")
    return text


def _statement(source: DatabaseSource):
    """The SELECT for a table (identifiers quoted) or the configured query."""
    from psycopg import sql

    if source.table is not None:
        parts = table_parts(source.table) or [source.table]
        return sql.SQL("SELECT * FROM {}").format(sql.Identifier(*parts))
    # a cursor wraps the query in DECLARE ... CURSOR FOR: a trailing semicolon would end it early
    return sql.SQL(str(source.query).strip().rstrip(";"))


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    """Date and timestamp columns (Python objects from the driver) as datetime columns.

    ``timestamptz`` values keep their wall-clock time in the session's time zone (as the server
    sends them) without the zone: purchase days are those a person in that zone would name,
    and they compare with the config's ``as_of`` date.
    """
    for column in frame.columns:
        values = frame[column]
        if isinstance(values.dtype, pd.DatetimeTZDtype):
            frame[column] = values.dt.tz_localize(None)
            continue
        if values.dtype != object:
            continue
        sample = values.dropna()
        if not len(sample) or not isinstance(sample.iloc[0], dt.date):
            continue  # datetime.time, UUID, JSON...: left as the driver gave them
        parsed = pd.to_datetime(values, utc=False)
        if getattr(parsed.dt, "tz", None) is not None:
            parsed = parsed.dt.tz_localize(None)
        frame[column] = parsed
    return frame


def read_database(
    source: DatabaseSource,
    text_columns: tuple[str, ...] = (),
    environ: Mapping[str, str] | None = None,
) -> DatabaseTable:
    """Read a table or query in chunks into a DataFrame; raises TableError naming the source."""
    import psycopg
    from psycopg.types.numeric import FloatLoader

    environ = os.environ if environ is None else environ
    where = source.describe()
    password = None
    if source.password_env:
        password = environ.get(source.password_env)
        if not password:
            raise TableError(
                f"cannot read {where}: the environment variable {source.password_env} "
                "(password_env) is not set"
            )
    chunks: list[pd.DataFrame] = []
    digest = hashlib.sha256()
    try:
        with psycopg.connect(
            source.url,
            password=password,
            connect_timeout=CONNECT_TIMEOUT,
            application_name="segmentation-training",
        ) as conn:
            conn.read_only = True
            # floats, not Decimal: the features are float64 anyway
            conn.adapters.register_loader("numeric", FloatLoader)
            with conn.cursor(name="segmentation_training_read") as cursor:
                cursor.itersize = source.fetch_rows
                cursor.execute(_statement(source))
                columns = [column.name for column in cursor.description or ()]
                while rows := cursor.fetchmany(source.fetch_rows):
                    chunks.append(pd.DataFrame.from_records(rows, columns=columns))
    except psycopg.Error as exc:
        raise TableError(f"cannot read {where}: {_one_line(exc, password)}") from None
    frame = pd.concat(chunks, ignore_index=True) if chunks else pd.DataFrame(columns=columns)
    frame = _typed(frame)
    for column in text_columns:
        if column in frame.columns:
            frame[column] = ids_as_text(frame[column])
    digest.update("\x1f".join(map(str, frame.columns)).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    logger.info(
        "read %s: %d rows x %d columns in %d chunks", where, len(frame), frame.shape[1], len(chunks)
    )
    return DatabaseTable(frame, digest.hexdigest())
