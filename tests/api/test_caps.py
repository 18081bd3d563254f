"""Frequency caps against a real Redis: reads, atomic commits under concurrency, failure modes."""

from __future__ import annotations

import multiprocessing as mp
from unittest import mock

import pytest
import redis
from polling import until

from api.caps import CLOSED, EXHAUSTED_SECONDS, OPEN, CapLimits, FrequencyCaps, Prefetch

DAY = 1_764_633_600.0  # 2025-12-02 00:00 UTC


def _caps(redis_url, prefix, **kwargs):
    return FrequencyCaps(redis.Redis.from_url(redis_url), prefix=prefix, **kwargs)


def test_read_only_checks_never_count(redis_url, redis_prefix):
    caps = _caps(redis_url, redis_prefix, clock=lambda: DAY)
    one = [("cashback", CapLimits(per_customer_day=1))]
    for _ in range(3):
        assert caps.check("c1", one).allowed == [True]
    assert caps.check("c1", one, commit=True).allowed == [True]
    result = caps.check("c1", one)
    assert result.allowed == [False]
    assert result.reasons == ["per_customer_day"]
    # another customer is not affected
    assert caps.check("c2", one).allowed == [True]


def test_commit_admits_in_rank_order_up_to_top_k(redis_url, redis_prefix):
    caps = _caps(redis_url, redis_prefix, clock=lambda: DAY)
    candidates = [
        ("a", CapLimits(per_customer_day=1)),
        ("b", CapLimits(per_customer_week=3)),
        ("c", CapLimits(daily_cap=100)),
    ]
    assert caps.check("c1", candidates, commit=True, top_k=2).allowed == [True, True, False]
    # "a" is now at its daily limit: the next send goes to b and c
    second = caps.check("c1", candidates, commit=True, top_k=2)
    assert second.allowed == [False, True, True]
    assert second.reasons[0] == "per_customer_day"


def test_week_and_campaign_daily_caps(redis_url, redis_prefix):
    now = [DAY]
    caps = _caps(redis_url, redis_prefix, clock=lambda: now[0])
    weekly = [("w", CapLimits(per_customer_day=1, per_customer_week=2))]
    assert caps.check("c1", weekly, commit=True).allowed == [True]
    now[0] += 86_400  # next day, same ISO week
    assert caps.check("c1", weekly, commit=True).allowed == [True]
    now[0] += 86_400
    third = caps.check("c1", weekly, commit=True)
    assert third.allowed == [False] and third.reasons == ["per_customer_week"]
    daily = [("d", CapLimits(daily_cap=2))]
    assert [caps.check(f"x{i}", daily, commit=True).allowed[0] for i in range(4)] == [
        True,
        True,
        False,
        False,
    ]
    assert caps.check("x9", daily).reasons == ["daily_cap"]
    # counters expire: the day key lives two days, the week key eight
    client = redis.Redis.from_url(redis_url)
    now[0] = DAY
    ttls = [client.ttl(k) for k in caps.keys("c1", "w")]
    assert 0 < ttls[0] <= 2 * 86_400 and 0 < ttls[1] <= 8 * 86_400


def _commit_once(url: str, prefix: str, start, results) -> None:
    caps = FrequencyCaps(redis.Redis.from_url(url), prefix=prefix, clock=lambda: DAY)
    start.wait()
    outcome = caps.check("c-race", [("promo", CapLimits(per_customer_day=1))], commit=True)
    results.put(outcome.allowed[0])


@pytest.mark.parametrize("n_clients", [16])
def test_parallel_commits_against_a_cap_of_one_admit_exactly_one(
    redis_url, redis_prefix, n_clients
):
    # separate processes, each with its own connection: real concurrent clients
    ctx = mp.get_context("fork")
    start = ctx.Barrier(n_clients)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_commit_once, args=(redis_url, redis_prefix, start, results))
        for _ in range(n_clients)
    ]
    for p in procs:
        p.start()
    admitted = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert sum(admitted) == 1, admitted
    client = redis.Redis.from_url(redis_url)
    key = FrequencyCaps(client, prefix=redis_prefix, clock=lambda: DAY).keys("c-race", "promo")[0]
    assert int(client.get(key)) == 1


def test_redis_down_fails_open_or_closed_as_configured():
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, socket_timeout=0.2)
    seen = []
    capped = [("a", CapLimits(per_customer_day=1)), ("b", CapLimits(daily_cap=5))]
    open_caps = FrequencyCaps(dead, prefix="p", fail=OPEN, on_failure=seen.append)
    result = open_caps.check("c1", capped, commit=True)
    assert result.allowed == [True, True] and result.status == "failed_open"
    closed = FrequencyCaps(dead, prefix="p", fail=CLOSED, on_failure=seen.append)
    result = closed.check("c1", capped)
    assert result.allowed == [False, False] and result.status == "failed_closed"
    assert result.reasons == ["caps_unavailable"] * 2
    assert seen == ["failed_open", "failed_closed"]
    # no limits at all: nothing to ask Redis
    assert closed.check("c1", [("z", CapLimits())], commit=True).allowed == [True]
    with pytest.raises(ValueError, match="fail='sideways'"):
        FrequencyCaps(dead, prefix="p", fail="sideways")


def test_a_prefetched_read_gives_the_same_answer_as_a_read_after_scoring(redis_url, redis_prefix):
    caps = _caps(redis_url, redis_prefix, clock=lambda: DAY)
    pool = [
        ("a", CapLimits(per_customer_day=1)),
        ("b", CapLimits(per_customer_week=2, daily_cap=50)),
        ("c", CapLimits(daily_cap=1)),
    ]
    caps.check("c1", pool[:1], commit=True)  # a: at its per-customer limit
    caps.check("other", pool[2:], commit=True)  # c: at its campaign-wide cap
    pending = caps.prefetch("c1", pool)
    assert pending is not None and len(pending.keys) == 4  # a-day, b-week, b-cap, c-cap
    plain = caps.check("c1", pool)
    # the answer ranked only b and c: the prefetch covers them and nothing else is read
    try:
        ahead = caps.check("c1", pool[1:], prefetched=pending)
    finally:
        pending.close()
    assert plain.allowed == [False, True, False]
    assert ahead.allowed == [True, False] and ahead.reasons == [None, "daily_cap"]
    # nothing was counted by the reads, and the pool's connections are all usable
    assert caps.client.get(caps.keys("c1", "b")[1]) is None
    assert caps.check("c1", pool).allowed == [False, True, False]


def test_a_prefetch_never_read_leaves_no_reply_on_a_pooled_connection(redis_url, redis_prefix):
    caps = _caps(redis_url, redis_prefix, clock=lambda: DAY)
    pool = [("a", CapLimits(per_customer_day=1))]
    for _ in range(5):  # e.g. the request failed validation after the prefetch went out
        caps.prefetch("c1", pool).close()
    caps.client.set(f"{redis_prefix}:probe", "x")
    assert caps.client.get(f"{redis_prefix}:probe") == b"x"
    assert caps.check("c1", pool, commit=True).allowed == [True]
    assert caps.check("c1", pool).allowed == [False]


def test_an_exhausted_daily_cap_is_remembered_for_a_while_then_read_again(redis_url, redis_prefix):
    now = [DAY + 3600]
    caps = _caps(redis_url, redis_prefix, clock=lambda: now[0])
    capped = [("c", CapLimits(daily_cap=1))]
    assert caps.check("c1", capped, commit=True).allowed == [True]
    assert caps.check("c2", capped).reasons == ["daily_cap"]  # read, and remembered
    # nothing is read for it now: a campaign with no other cap needs no prefetch
    assert caps.prefetch("c3", capped) is None
    # an operator lifts the cap by deleting today's counter: read-only answers follow within
    # EXHAUSTED_SECONDS; a commit re-reads at once
    caps.client.delete(caps.keys(None, "c")[2])
    assert caps.check("c3", capped).reasons == ["daily_cap"]
    now[0] += EXHAUSTED_SECONDS + 1
    assert caps.check("c3", capped).allowed == [True]
    caps.check("c4", capped, commit=True)
    assert caps.check("c5", capped).reasons == ["daily_cap"]
    # the next UTC day has its own counter: the memory of yesterday is gone
    now[0] = DAY + 86_400 + 60
    assert caps.check("c5", capped).allowed == [True]


def test_a_prefetch_against_a_dead_redis_fails_as_configured():
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, socket_timeout=0.2)
    capped = [("a", CapLimits(per_customer_day=1))]
    closed = FrequencyCaps(dead, prefix="p", fail=CLOSED)
    pending = closed.prefetch("c1", capped)
    try:
        result = closed.check("c1", capped, prefetched=pending)
    finally:
        if pending is not None:
            pending.close()
    assert result.allowed == [False] and result.status == "failed_closed"


def _live(caps):
    """Start the worker's invalidation subscriber and wait (bounded) until it is subscribed."""
    caps.tracker.ensure_started()
    until(lambda: caps.tracker.live)
    return caps


def test_a_commit_elsewhere_reaches_a_held_read_by_invalidation(redis_url, redis_prefix):
    caps = _live(_caps(redis_url, redis_prefix, clock=lambda: DAY, local_cache=True))
    other = _caps(redis_url, redis_prefix, clock=lambda: DAY)  # another worker
    try:
        pool = [("a", CapLimits(per_customer_day=1)), ("b", CapLimits(daily_cap=5))]
        assert caps.check("c1", pool).allowed == [True, True]  # read, and held
        held = caps._read_keys("c1", pool)
        assert caps.tracker.get_all(held) is not None
        assert caps.prefetch("c1", pool) is not None
        assert not isinstance(caps.prefetch("c1", pool), Prefetch)  # held: nothing sent
        assert other.check("c1", pool[:1], commit=True).allowed == [True]
        # Redis tells this worker the counter changed; then the send shows, read afresh
        until(lambda: caps.tracker.get_all(held) is None)
        pending = caps.prefetch("c1", pool)
        assert isinstance(pending, Prefetch)
        try:
            assert caps.check("c1", pool, prefetched=pending).allowed == [False, True]
        finally:
            pending.close()
        assert caps.check("c1", pool).allowed == [False, True]
        # another customer was never read: nothing stale about them
        assert caps.check("c2", pool).allowed == [True, True]
    finally:
        caps.tracker.stop()


def test_an_operator_del_lifts_a_cap_held_or_remembered(redis_url, redis_prefix):
    caps = _live(_caps(redis_url, redis_prefix, clock=lambda: DAY, local_cache=True))
    client = redis.Redis.from_url(redis_url)
    try:
        pool = [("a", CapLimits(per_customer_day=1)), ("b", CapLimits(daily_cap=1))]
        assert caps.check("c1", pool, commit=True).allowed == [True, True]
        assert caps.check("c1", pool).allowed == [False, False]  # read and held (b: remembered)
        day = caps.keys("c1", "a")[0]
        b_day = caps.keys("c1", "b")[2]
        client.delete(day, b_day)  # an operator lifts both
        until(lambda: caps.check("c1", pool).allowed == [True, True])
        assert b_day not in caps._exhausted
    finally:
        caps.tracker.stop()


def test_losing_the_subscriber_clears_held_values_and_reads_every_time(redis_url, redis_prefix):
    caps = _live(_caps(redis_url, redis_prefix, clock=lambda: DAY, local_cache=True))
    other = _caps(redis_url, redis_prefix, clock=lambda: DAY)
    try:
        pool = [("a", CapLimits(per_customer_day=1))]
        assert caps.check("c1", pool).allowed == [True]
        assert len(caps.tracker) > 0
        caps.tracker.stop()  # the subscriber is gone (as after a dropped connection)
        assert len(caps.tracker) == 0 and not caps.tracker.live
        assert isinstance(caps.prefetch("c1", pool), Prefetch)
        assert caps.check("c1", pool).allowed == [True]
        assert len(caps.tracker) == 0  # nothing is held without invalidations
        other.check("c1", pool, commit=True)
        assert caps.check("c1", pool).allowed == [False]
    finally:
        caps.tracker.stop()


def test_a_dropped_subscriber_connection_clears_and_reconnects(redis_url, redis_prefix):
    caps = _live(_caps(redis_url, redis_prefix, clock=lambda: DAY, local_cache=True))
    try:
        pool = [("a", CapLimits(per_customer_day=1))]
        caps.check("c1", pool)
        before = caps.tracker.epoch
        caps.tracker.kill_connection()
        until(lambda: caps.tracker.epoch > before and len(caps.tracker) == 0)
        until(lambda: caps.tracker.live)  # subscribed again: values are held again
        caps.check("c1", pool)
        assert caps.tracker.get_all(caps._read_keys("c1", pool)) is not None
    finally:
        caps.tracker.stop()


def test_a_read_raced_by_an_invalidation_is_not_held(redis_url, redis_prefix):
    caps = _live(_caps(redis_url, redis_prefix, clock=lambda: DAY, local_cache=True))
    try:
        mark = caps.tracker.mark()
        caps.tracker.drop([])  # an invalidation arrives between the read's send and its reply
        caps.tracker.hold(mark, {"k": 0})
        assert caps.tracker.get_all(["k"]) is None
        caps.tracker.hold(caps.tracker.mark(), {"k": 0})
        assert caps.tracker.get_all(["k"]) == {"k": 0}
    finally:
        caps.tracker.stop()


def test_held_values_are_bounded(redis_url, redis_prefix):
    caps = _live(
        _caps(redis_url, redis_prefix, clock=lambda: DAY, local_cache=True, local_entries=4)
    )
    try:
        pool = [("a", CapLimits(per_customer_day=1, per_customer_week=3))]
        for c in range(5):
            caps.check(f"c{c}", pool)
        assert len(caps.tracker) <= 4
        assert caps.tracker.get_all(caps._read_keys("c4", pool)) is not None  # newest kept
    finally:
        caps.tracker.stop()


def test_a_commit_drops_its_keys_here_at_once(redis_url, redis_prefix):
    caps = _live(_caps(redis_url, redis_prefix, clock=lambda: DAY, local_cache=True))
    try:
        pool = [("a", CapLimits(per_customer_day=1))]
        assert caps.check("c1", pool).allowed == [True]
        assert caps.check("c1", pool, commit=True).allowed == [True]
        # the same worker's own send is never hidden by a held value, prefetched or not
        pending = caps.prefetch("c1", pool)
        try:
            assert caps.check("c1", pool, prefetched=pending).allowed == [False]
        finally:
            if pending is not None:
                pending.close()
        assert caps.check("c1", pool, commit=True).allowed == [False]
    finally:
        caps.tracker.stop()


def test_without_the_local_cache_every_check_reads(redis_url, redis_prefix):
    caps = _caps(redis_url, redis_prefix, clock=lambda: DAY)
    other = _caps(redis_url, redis_prefix, clock=lambda: DAY)
    pool = [("a", CapLimits(per_customer_day=1))]
    assert caps.tracker is None
    assert caps.check("c1", pool).allowed == [True]
    other.check("c1", pool, commit=True)
    assert caps.check("c1", pool).allowed == [False]
    assert isinstance(caps.prefetch("c1", pool), Prefetch)


def test_the_prefetch_packs_mget_as_redis_py_does(redis_url):
    from api.caps import pack_mget

    connection = redis.Redis.from_url(redis_url).connection_pool.get_connection()
    for keys in (
        ["a"],
        ["p:cap:x:c:é-1:d:20251202", "p:cap:x:d:20251202"],
        [f"k{i}" for i in range(40)],
    ):
        expected = b"".join(connection._command_packer.pack("MGET", *keys))
        assert pack_mget(keys) == expected
        # the same bytes from the Python fallback (where hiredis is missing)
        with mock.patch("api.caps._pack_command", None):
            assert pack_mget(keys) == expected
