"""Customer tables and transactions read from PostgreSQL (training.database), against the real
server at 127.0.0.1:5432 (``.ci/run`` starts one where none answers; ``PG_TEST_URL`` points
elsewhere). Each test module run creates its own schema and drops it afterwards.

The shared server trusts every local connection, so a wrong password cannot be told from a
right one there: the password tests start a private PostgreSQL (initdb with scram-sha-256 and a
password-protected role, on its own port and folder), stopped and removed afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from training.cli import main
from training.config import ConfigError, config_from_dict
from training.database import DatabaseSource, read_database
from training.load import load_tables
from training.validate import TableError

psycopg = pytest.importorskip("psycopg")

PG_URL = os.environ.get("PG_TEST_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
PG_BIN = Path("/usr/lib/postgresql")


@pytest.fixture(scope="module")
def schema():
    """A schema of our own on the shared server, with a customer and a transaction table."""
    try:
        conn = psycopg.connect(PG_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"PostgreSQL does not answer at {PG_URL} ({exc}); .ci/run starts one")
    name = f"segtest_{uuid.uuid4().hex[:10]}"
    rng = np.random.default_rng(7)
    n = 600
    customers = pd.DataFrame(
        {
            "customer_id": [f"{i:05d}" for i in range(n)],
            "spend": np.round(rng.gamma(2.0, 300.0, n), 2),
            "orders": rng.integers(1, 40, n),
            "days_since": rng.integers(0, 365, n),
        }
    )
    days = pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 300, 5000), "D")
    transactions = pd.DataFrame(
        {
            "cust": rng.integers(0, 400, 5000).astype(str),
            "day": days.date,
            "amount": np.round(
                rng.gamma(2.0, 20.0, 5000) * np.where(rng.random(5000) < 0.05, -1, 1), 2
            ),
        }
    )
    transactions.loc[:9, "cust"] = None  # ten rows without a customer: dropped and counted
    with conn.cursor() as cur:
        cur.execute(f"CREATE SCHEMA {name}")
        cur.execute(
            f"CREATE TABLE {name}.customers (customer_id text, spend numeric(12, 2), "
            "orders integer, days_since integer)"
        )
        with cur.copy(f"COPY {name}.customers FROM STDIN") as copy:
            for row in customers.itertuples(index=False):
                copy.write_row(tuple(row))
        cur.execute(f"CREATE TABLE {name}.sales (cust text, day date, amount numeric(10, 2))")
        with cur.copy(f"COPY {name}.sales FROM STDIN") as copy:
            for row in transactions.itertuples(index=False):
                copy.write_row(tuple(None if pd.isna(v) else v for v in row))  # NULL, not 'NaN'

    try:
        yield name, customers, transactions
    finally:
        with conn.cursor() as cur:
            cur.execute(f"DROP SCHEMA {name} CASCADE")
        conn.close()


def _config(tmp_path, data: dict, **extra) -> dict:
    return {
        "data": data,
        "features": {"numeric": ["spend", "orders", "days_since"]},
        "segmentation": {"k": 3, "stability_bootstraps": 0},
        "response_model": {"enabled": False},
        "output": {"root": str(tmp_path / "artifacts"), "report": False},
        **extra,
    }


def test_a_table_reads_like_the_same_rows_from_a_file(schema, tmp_path):
    name, customers, _ = schema
    customers.to_csv(tmp_path / "customers.csv", index=False)
    from_file = load_tables(
        config_from_dict(_config(tmp_path, {"customers": "customers.csv"}), tmp_path)
    )
    source = DatabaseSource(PG_URL, table=f"{name}.customers", fetch_rows=97)
    read = read_database(source, text_columns=("customer_id",))
    # 600 rows in chunks of 97: seven round trips of the server-side cursor
    pd.testing.assert_frame_equal(read.frame, from_file.customers, check_dtype=False)
    assert read.frame["customer_id"].iloc[0] == "00000"  # ids stay text
    assert read.frame["spend"].dtype == np.float64  # numeric columns as floats, not Decimal
    again = read_database(DatabaseSource(PG_URL, table=f"{name}.customers"), ("customer_id",))
    assert again.sha256 == read.sha256


def test_a_query_is_a_source_too_and_its_trailing_semicolon_is_harmless(schema):
    name, customers, _ = schema
    query = f"SELECT customer_id, spend FROM {name}.customers WHERE orders > 20 ORDER BY 1;"
    read = read_database(DatabaseSource(PG_URL, query=query), ("customer_id",))
    assert list(read.frame.columns) == ["customer_id", "spend"]
    assert len(read.frame) == int((customers["orders"] > 20).sum())


def test_training_from_a_table_records_the_source_without_secrets(schema, tmp_path, capsys):
    name, _, _ = schema
    config = tmp_path / "db.toml"
    config.write_text(
        f'[data]\ncustomers = "{PG_URL}"\ntable = "{name}.customers"\n'
        '[features]\nnumeric = ["spend", "orders", "days_since"]\n'
        "[segmentation]\nk = 3\nstability_bootstraps = 0\n"
        "[response_model]\nenabled = false\n[output]\nreport = false\n"
    )
    out = tmp_path / "artifacts"
    assert main(["-q", "train", "--config", str(config), "--output", str(out)]) == 0
    manifest = json.loads(next(out.glob("*/manifest.json")).read_text())
    assert manifest["data_fingerprint"]["rows"] == 600
    assert manifest["data_fingerprint"]["sources"] == [f"{PG_URL} table {name}.customers"]


def test_transactions_from_a_table_give_the_features_of_the_same_file(schema, tmp_path):
    name, _, transactions = schema
    transactions.to_csv(tmp_path / "sales.csv", index=False)
    tx = {"customer_column": "cust", "date_column": "day", "as_of": "2024-11-01"}
    features = {"features": {"numeric": ["recency_days", "frequency", "monetary_total"]}}
    from_file = load_tables(
        config_from_dict(
            {"data": {"transactions": {"path": "sales.csv", **tx}}, **features}, tmp_path
        )
    )
    from_db = load_tables(
        config_from_dict(
            {
                "data": {
                    "transactions": {
                        "path": PG_URL,
                        "table": f"{name}.sales",
                        "fetch_rows": 1000,
                        **tx,
                    }
                },
                **features,
            },
            tmp_path,
        )
    )
    order = ["customer_id"]
    pd.testing.assert_frame_equal(
        from_db.customers.sort_values(order).reset_index(drop=True),
        from_file.customers.sort_values(order).reset_index(drop=True),
    )
    # the rows without a customer are counted and named as for a file
    assert from_db.transactions["dropped"] == from_file.transactions["dropped"]
    assert any("customer" in w for w in from_db.warnings)
    assert from_db.sources == [f"{PG_URL} table {name}.sales"]


def test_timestamps_with_a_time_zone_give_the_same_purchase_days(schema, tmp_path):
    name, _, _ = schema
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE {name}.sales_ts AS SELECT cust, "
            "(day + time '13:30') AT TIME ZONE 'UTC' AS at, amount FROM " + f"{name}.sales"
        )
    features = {"features": {"numeric": ["recency_days", "frequency", "monetary_total"]}}

    def load(table, date_column):
        tx = {"path": PG_URL, "table": f"{name}.{table}", "customer_column": "cust"}
        tx |= {"date_column": date_column, "as_of": "2024-11-01"}
        config = config_from_dict({"data": {"transactions": tx}, **features}, tmp_path)
        return load_tables(config).customers.sort_values("customer_id").reset_index(drop=True)

    pd.testing.assert_frame_equal(load("sales_ts", "at"), load("sales", "day"))


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"customers": "postgresql://127.0.0.1:1/postgres", "table": "t"},
            "127.0.0.1:1/postgres table t",
        ),
        ({"customers": PG_URL, "table": "segtest_absent.customers"}, "does not exist"),
        ({"customers": PG_URL, "query": "SELEC 1"}, "syntax error"),
        ({"customers": PG_URL, "query": "SELECT 1/0 AS spend"}, "division by zero"),
        (
            {"customers": PG_URL, "table": "t", "password_env": "SEGTEST_UNSET_PASSWORD"},
            "SEGTEST_UNSET_PASSWORD",
        ),
    ],
    ids=["unreachable", "missing-table", "bad-sql", "failing-query", "password-variable-unset"],
)
def test_a_failing_source_stops_training_with_one_line_and_writes_nothing(
    schema, tmp_path, capsys, monkeypatch, data, expected
):
    monkeypatch.delenv("SEGTEST_UNSET_PASSWORD", raising=False)
    config = tmp_path / "bad.toml"
    lines = [f'{k} = "{v}"' for k, v in data.items()]
    config.write_text("[data]\n" + "\n".join(lines) + '\n[features]\nnumeric = ["spend"]\n')
    out = tmp_path / "artifacts"
    assert main(["-q", "train", "--config", str(config), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot read postgresql://") and expected in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"customers": "postgresql://u:hunter2@h/db", "table": "t"}, "holds a password"),
        ({"customers": "postgresql://u@h/db?password=hunter2", "table": "t"}, "holds a password"),
        ({"customers": "postgresql://u@h/db"}, "needs a table or a query"),
        ({"customers": "postgresql://u@h/db", "table": "t", "query": "SELECT 1"}, "got both"),
        ({"customers": "mysql://u@h/db", "table": "t"}, "mysql:// is not a source"),
        ({"customers": "postgresql://u@h:5432", "table": "t"}, "names no database"),
        ({"customers": "c.csv", "table": "t"}, "data.table: only for a PostgreSQL source"),
        ({"customers": "postgresql://u@h/db", "table": "a.b.c"}, "schema.table"),
        (
            {"customers": "postgresql://u@h/db", "table": "t", "password_env": "NOT A NAME"},
            "environment variable",
        ),
    ],
)
def test_bad_database_settings_are_refused_when_the_config_loads(data, expected):
    with pytest.raises(ConfigError) as err:
        config_from_dict({"data": data, "features": {"numeric": ["spend"]}})
    assert expected in str(err.value)
    assert "hunter2" not in str(err.value)


# ---- a password-protected role on a private server ---------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def scram_server():
    """A private PostgreSQL whose role ``owner`` needs its password (scram-sha-256)."""
    binaries = sorted(PG_BIN.glob("*/bin/initdb"))
    if not binaries or shutil.which("runuser") is None or os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("initdb (postgresql) and root are needed for the password tests")
        pytest.skip("no initdb, or not root: the private password-protected server cannot start")
    bindir = binaries[-1].parent
    # not under pytest's temporary root: it is private to root, and the server runs as postgres
    folder = Path(tempfile.mkdtemp(prefix="segtest-pg-"))
    folder.chmod(0o755)
    password = f"pw-{uuid.uuid4().hex[:16]}"
    (folder / "pw").write_text(password + "\n")
    port = _free_port()
    as_postgres = ["runuser", "-u", "postgres", "--"]
    shutil.chown(folder, "postgres")
    shutil.chown(folder / "pw", "postgres")
    run = {"check": True, "capture_output": True}
    subprocess.run(
        [*as_postgres, str(bindir / "initdb"), "-D", str(folder / "data"), "-U", "owner",
         f"--pwfile={folder / 'pw'}", "--auth=scram-sha-256", "-E", "UTF8"],
        **run,
    )  # fmt: skip
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1"
    subprocess.run(
        [*as_postgres, str(bindir / "pg_ctl"), "-D", str(folder / "data"), "-o", options,
         "-l", str(folder / "log"), "-w", "start"],
        **run,
    )  # fmt: skip
    url = f"postgresql://owner@127.0.0.1:{port}/postgres"
    try:
        with psycopg.connect(url, password=password, autocommit=True) as conn:
            conn.execute("CREATE TABLE customers (customer_id text, spend float8)")
            conn.execute("INSERT INTO customers VALUES ('a', 1.5), ('b', 2.5), ('c', 4.0)")
        yield url, password
    finally:
        subprocess.run(
            [*as_postgres, str(bindir / "pg_ctl"), "-D", str(folder / "data"), "-m", "immediate",
             "stop"],
            capture_output=True,
        )  # fmt: skip
        shutil.rmtree(folder, ignore_errors=True)


def test_the_password_comes_from_the_named_environment_variable(scram_server):
    url, password = scram_server
    source = DatabaseSource(url, table="customers", password_env="SEGTEST_DB_PASSWORD")
    read = read_database(source, ("customer_id",), environ={"SEGTEST_DB_PASSWORD": password})
    assert list(read.frame["customer_id"]) == ["a", "b", "c"]
    with pytest.raises(TableError) as err:  # no password given at all
        read_database(DatabaseSource(url, table="customers"), environ={})
    assert "password" in str(err.value)


def test_a_wrong_password_is_one_clear_line_that_never_shows_it(
    scram_server, tmp_path, capsys, monkeypatch
):
    url, password = scram_server
    wrong = password[::-1]
    monkeypatch.setenv("SEGTEST_DB_PASSWORD", wrong)
    config = tmp_path / "db.toml"
    config.write_text(
        f'[data]\ncustomers = "{url}"\ntable = "customers"\npassword_env = "SEGTEST_DB_PASSWORD"\n'
        '[features]\nnumeric = ["spend"]\n'
    )
    out = tmp_path / "artifacts"
    assert main(["-q", "train", "--config", str(config), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot read {url} table customers: ")
    assert "password authentication failed" in err
    assert wrong not in err and password not in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize(
    "data",
    [
        {"customers": PG_URL, "table": "t"},
        {"transactions": {"path": PG_URL, "table": "t"}},
    ],
)
def test_the_dask_engine_refuses_a_database_source_before_touching_a_cluster(data):
    pytest.importorskip("dask")
    from training.engines.dask import train as train_on_dask

    config = config_from_dict({"data": data, "features": {"numeric": ["spend"]}})
    with pytest.raises(TableError, match="--engine local"):
        train_on_dask(config, None, None)  # no cluster: the refusal comes first


def test_snapshot_dates_come_from_a_database_history(schema):
    """`python -m training snapshots` replays a history kept in PostgreSQL as it does a file."""
    from training.snapshots import snapshot_dates

    name, _, transactions = schema
    tx = {"path": PG_URL, "table": f"{name}.sales", "customer_column": "cust", "date_column": "day"}
    config = config_from_dict(
        {"data": {"transactions": tx}, "features": {"numeric": ["recency_days", "frequency"]}}
    )
    dates = snapshot_dates(config, "month")
    last = pd.Timestamp(max(transactions["day"])) + pd.Timedelta(days=1)
    assert dates[0] == pd.Timestamp("2024-03-01")  # two months after the first purchase
    assert dates[-1] <= last and all(d.day == 1 for d in dates)
