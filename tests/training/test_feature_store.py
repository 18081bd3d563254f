"""`python -m training features load`: a customer table into the online feature store (real Redis)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import redis

from scoring.online import SEGMENT_ID, UPDATED_AT, decode_record, record_key
from training.cli import main
from training.feature_store import RedisReplyError, RespPipe, command, load_features
from training.validate import TableError


@pytest.fixture
def client(redis_url):
    """A client of the test Redis (the test command starts one)."""
    c = redis.Redis.from_url(redis_url, socket_timeout=5)
    c.ping()
    yield c
    c.close()


@pytest.fixture
def customers(demo_customers):
    """The demo-contract customers, one optional value missing."""
    frame = demo_customers[0].copy()
    frame.loc[3, "mobile_usage"] = np.nan
    return frame


def _stored(client, prefix, schema, cid):
    return client.hgetall(record_key(prefix, schema, cid))


def test_every_customer_reads_back_as_loaded(
    client, redis_url, redis_prefix, tiny_bundle, customers
):
    schema = tiny_bundle.schema
    seen = []
    result = load_features(
        customers, schema, redis_url=redis_url, prefix=redis_prefix, chunk=64, progress=seen.append
    )
    assert result.customers == len(customers) == sum(seen)
    for _, row in customers.iterrows():
        record = decode_record(_stored(client, redis_prefix, schema, row["customer_id"]), schema)
        assert not record.problems
        for name in schema.input_names:
            if math.isnan(row[name]):
                assert name not in record.features
            else:
                assert record.features[name] == row[name]
        assert float(record.meta[UPDATED_AT]) > 0


def test_reload_replaces_features_and_keeps_the_stream_fields(
    client, redis_url, redis_prefix, tiny_bundle, customers
):
    schema = tiny_bundle.schema
    load_features(customers, schema, redis_url=redis_url, prefix=redis_prefix)
    key = record_key(redis_prefix, schema, customers["customer_id"][0])
    client.hset(key, SEGMENT_ID, "2")
    changed = customers.copy()
    changed.loc[0, "mobile_usage"] = np.nan
    changed.loc[0, "total_spend"] = 1.5
    load_features(changed, schema, redis_url=redis_url, prefix=redis_prefix)
    stored = client.hgetall(key)
    assert b"mobile_usage" not in stored
    assert stored[b"total_spend"] == b"1.5"
    assert stored[SEGMENT_ID.encode()] == b"2"


@pytest.mark.parametrize(
    ("change", "column", "fragment"),
    [
        (lambda f: f.drop(columns=["order_count"]), "order_count", "absent"),
        (lambda f: f.assign(total_spend=f["total_spend"] * -1), "total_spend", "must be >= 0"),
        (lambda f: f.assign(return_rate=1.5), "return_rate", "in [0, 1]"),
        (lambda f: f.assign(order_count="many"), "order_count", "non-numeric"),
        (lambda f: f.assign(customer_id="same"), "customer_id", "duplicate id"),
        (lambda f: f.assign(order_count=np.nan), "order_count", "required"),
    ],
)
def test_a_bad_table_is_refused_before_anything_is_written(
    client, redis_url, redis_prefix, tiny_bundle, customers, change, column, fragment
):
    with pytest.raises(TableError) as info:
        load_features(
            change(customers), tiny_bundle.schema, redis_url=redis_url, prefix=redis_prefix
        )
    assert info.value.column == column
    assert fragment in str(info.value)
    assert not list(client.scan_iter(match=f"{redis_prefix}:*"))


def test_an_error_reply_stops_the_load(redis_url, redis_prefix, client):
    client.set(f"{redis_prefix}:plain", "x")
    pipe = RespPipe(redis_url)
    try:
        with pytest.raises(RedisReplyError, match="WRONGTYPE"):
            pipe.send(command(b"HSET", f"{redis_prefix}:plain".encode(), b"a", b"1"), 1)
    finally:
        pipe.close()


def test_cli_loads_a_parquet_file(
    tmp_path, redis_url, redis_prefix, client, tiny_bundle_root, tiny_bundle, customers, capsys
):
    path = tmp_path / "customers.parquet"
    customers.to_parquet(path)
    argv = ["features", "load", "--input", str(path), "--bundle", str(tiny_bundle_root)]
    code = main([*argv, "--redis-url", redis_url, "--prefix", redis_prefix, "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    assert f"loaded {len(customers)} customers" in out
    cid = customers["customer_id"][10]
    assert _stored(client, redis_prefix, tiny_bundle.schema, cid)


def test_cli_refuses_a_bad_table_with_exit_2(
    tmp_path, redis_url, redis_prefix, tiny_bundle_root, customers, capsys
):
    path = tmp_path / "customers.csv"
    customers.assign(discount_usage=-0.5).to_csv(path, index=False)
    argv = ["features", "load", "--input", str(path), "--bundle", str(tiny_bundle_root)]
    code = main([*argv, "--redis-url", redis_url, "--prefix", redis_prefix, "--no-progress"])
    assert code == 2
    assert "discount_usage" in capsys.readouterr().err


def test_cli_says_when_redis_is_unreachable(tmp_path, tiny_bundle_root, customers, capsys):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = tmp_path / "customers.parquet"
    customers.to_parquet(path)
    argv = ["features", "load", "--input", str(path), "--bundle", str(tiny_bundle_root)]
    code = main([*argv, "--redis-url", f"redis://127.0.0.1:{port}/0", "--no-progress"])
    assert code == 2
    assert "Redis at" in capsys.readouterr().err


def test_ids_are_text_and_trimmed(client, redis_url, redis_prefix, tiny_bundle, customers):
    frame = customers.head(3).copy()
    frame["customer_id"] = pd.Series([7, " 8 ", "zürich-9"], dtype=object)
    load_features(frame, tiny_bundle.schema, redis_url=redis_url, prefix=redis_prefix)
    for cid in ("7", "8", "zürich-9"):
        assert _stored(client, redis_prefix, tiny_bundle.schema, cid)
