"""The stream job's Redis writes: newer-only records, one change entry per change, dead letters."""

from __future__ import annotations

import pytest
import redis

from scoring.online import SEGMENT_ID, changes_key, counters_key, dead_letters_key
from stream.sink import RedisSink


@pytest.fixture
def sink(redis_url, redis_prefix):
    """A sink under this test's key prefix."""
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    yield RedisSink(client, redis_prefix)
    client.close()


def _update(sink, seq, segment, total):
    key = f"{sink.prefix}:features:x:c1"
    fields = {"total_spend": str(total), SEGMENT_ID: str(segment)}
    change = {"customer_id": "c1", "to": str(segment)}
    return sink.write(key, seq, fields, change)


def test_a_replayed_or_older_update_changes_nothing(sink):
    client = sink.client
    assert _update(sink, 1, 0, 10.0) == RedisSink.CHANGED  # first assignment
    assert _update(sink, 2, 0, 20.0) == RedisSink.WRITTEN
    assert _update(sink, 3, 1, 90.0) == RedisSink.CHANGED
    # a restart from a checkpoint replays seq 2 and 3, then continues with 4
    assert _update(sink, 2, 0, 20.0) == RedisSink.NOT_NEWER
    assert _update(sink, 3, 1, 90.0) == RedisSink.NOT_NEWER
    assert _update(sink, 4, 1, 95.0) == RedisSink.WRITTEN
    record = client.hgetall(f"{sink.prefix}:features:x:c1")
    assert record[b"total_spend"] == b"95.0" and record[b"@seq"] == b"4"
    changes = client.xrange(changes_key(sink.prefix))
    assert [(e[b"from"], e[b"to"]) for _, e in changes] == [(b"", b"0"), (b"0", b"1")]
    counters = client.hgetall(counters_key(sink.prefix))
    assert counters[b"updates"] == b"4" and counters[b"segment_changes"] == b"2"


def test_dead_letters_keep_the_reason_and_are_counted(sink):
    sink.dead_letter("bad_json", "not JSON", "{oops")
    sink.dead_letter("late", "3 h late", b'{"customer_id": "c"}')
    entries = sink.client.xrange(dead_letters_key(sink.prefix))
    assert [e[b"reason"] for _, e in entries] == [b"bad_json", b"late"]
    assert entries[0][1][b"event"] == b"{oops"
    counters = sink.client.hgetall(counters_key(sink.prefix))
    assert counters[b"dead_letters"] == b"2"
    assert counters[b"dead_letters:late"] == b"1"
