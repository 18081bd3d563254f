"""The per-worker summary of customers with cap counters this week, against a real Redis."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import redis
from polling import until

from api.cap_summary import SeenSummary, seen_bit, week_days
from api.caps import CapLimits, FrequencyCaps, Prefetch, Verdict

DAY = 1_764_633_600.0  # 2025-12-02 00:00 UTC, ISO week 2025-49
WEEK = "202549"


def _caps(redis_url, prefix, **kwargs):
    return FrequencyCaps(redis.Redis.from_url(redis_url), prefix=prefix, **kwargs)


def _worker(redis_url, prefix, clock=lambda: DAY, **kwargs):
    """A worker's caps with the summary, subscribed and its week's bitmap loaded."""
    caps = _caps(redis_url, prefix, clock=clock, local_cache=True, summary=True, **kwargs)
    caps.tracker.ensure_started()
    until(lambda: caps.tracker.live and caps.summary.week is not None)
    return caps


class Commands:
    """Counts the Redis commands a FrequencyCaps sends (each takes a pooled connection;
    the subscriber's own connection is not pooled)."""

    def __init__(self, caps: FrequencyCaps) -> None:
        self.n = 0
        pool = caps.client.connection_pool
        take = pool.get_connection

        def counted(*args, **kwargs):
            self.n += 1
            return take(*args, **kwargs)

        pool.get_connection = counted


def test_the_bit_of_a_customer_is_the_same_in_every_process():
    code = "from api.cap_summary import seen_bit; print(seen_bit('cust-é-42', 23))"
    bits = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for seed in ("1", "2", "random")
    }
    assert bits == {str(seen_bit("cust-é-42", 23))}
    assert 0 <= seen_bit("x", 10) < 1024


def test_messages_mark_the_customers_their_week_names():
    summary = SeenSummary("p", bits=16)
    summary.load(WEEK, None)
    assert not summary.may_have("a", WEEK)
    summary.note(
        [
            "p:cap:promo:c:a:d:20251203",  # a day of the week
            "p:cap:promo:c:b:w:202549",  # the week
            "p:cap:promo:c:old:d:20251130",  # last week's day (an expiry): not this week's
            "p:cap:promo:c:older:w:202548",
            "p:cap:promo:d:20251202",  # the campaign's daily counter: no customer
            "q:cap:promo:c:other:w:202549",  # another prefix
            "p:cap:x:c:y:c:z:w:202549",  # campaign "x" + customer "y:c:z", or "x:c:y" + "z"
            "p:cap:promo:c:ends:d:w:202549",  # customer "ends:d", week key
        ]
    )
    for customer in ("a", "b", "y:c:z", "z", "ends:d"):
        assert summary.may_have(customer, WEEK), customer
    for customer in ("old", "older", "other"):
        assert not summary.may_have(customer, WEEK), customer
    # another week than the loaded one: unknown, so "may have"
    assert summary.may_have("nobody", "202550")
    summary.clear()
    assert summary.may_have("nobody", WEEK)
    assert week_days(WEEK) == {f"202512{d:02d}" for d in range(1, 8)}


def test_a_never_committed_customer_makes_no_redis_command(redis_url, redis_prefix):
    caps = _worker(redis_url, redis_prefix)
    try:
        per_customer = [("a", CapLimits(per_customer_day=1, per_customer_week=3))]
        commands = Commands(caps)
        for c in range(20):
            pending = caps.prefetch(f"new-{c}", per_customer)
            assert isinstance(pending, Verdict) and pending.blocked == {}
            assert caps.check(f"new-{c}", per_customer, prefetched=pending).allowed == [True]
            assert caps.check(f"new-{c}", per_customer).allowed == [True]
        assert commands.n == 0
        # a limit of 0 still blocks: the count is 0, not unknown
        zero = [("z", CapLimits(per_customer_day=0)), *per_customer]
        assert caps.check("new-0", zero).allowed == [False, True]
        pending = caps.prefetch("new-0", zero)
        assert isinstance(pending, Verdict) and pending.blocked == {"z": "per_customer_day"}
        result = caps.check("new-0", zero, prefetched=pending)
        assert result.allowed == [False, True] and result.reasons == ["per_customer_day", None]
        # with a campaign-wide cap, only that counter is read, once, then held
        pool = [*per_customer, ("b", CapLimits(per_customer_day=1, daily_cap=50))]
        pending = caps.prefetch("new-x", pool)
        assert isinstance(pending, Prefetch) and pending.keys == [caps.keys(None, "b")[2]]
        pending.close()
        before = commands.n
        for c in range(20):
            assert caps.check(f"new-y{c}", pool).allowed == [True, True]
        assert commands.n == before
    finally:
        caps.tracker.stop()


def test_a_commit_elsewhere_is_read_once_its_message_arrives(redis_url, redis_prefix):
    caps = _worker(redis_url, redis_prefix)
    other = _caps(redis_url, redis_prefix, clock=lambda: DAY)  # another worker, no summary
    try:
        pool = [("a", CapLimits(per_customer_day=1))]
        assert caps.check("c1", pool).allowed == [True]
        assert not caps.summary.may_have("c1", WEEK)
        assert other.check("c1", pool, commit=True).allowed == [True]
        until(lambda: caps.summary.may_have("c1", WEEK))
        commands = Commands(caps)
        result = caps.check("c1", pool)
        assert result.allowed == [False] and result.reasons == ["per_customer_day"]
        assert commands.n == 1  # read, not skipped
        # a campaign-wide counter reaching its cap reaches customers decided with no read
        wide = [("d", CapLimits(daily_cap=1))]
        caps.check("x0", wide)  # read and held
        pending = caps.prefetch("x1", wide)
        assert isinstance(pending, Verdict) and pending.blocked == {}
        other.check("someone", wide, commit=True)

        def capped(customer):
            return caps.check(customer, wide, prefetched=caps.prefetch(customer, wide)).reasons

        until(lambda: capped("x2") == ["daily_cap"])
        # an operator writing a counter marks the customer too
        redis.Redis.from_url(redis_url).set(caps.keys("c2", "a")[1], 7)
        until(lambda: caps.summary.may_have("c2", WEEK))
    finally:
        caps.tracker.stop()


def test_a_worker_starting_later_loads_the_week_bitmap(redis_url, redis_prefix):
    early = _caps(redis_url, redis_prefix, clock=lambda: DAY)
    pool = [("a", CapLimits(per_customer_week=1)), ("b", CapLimits(daily_cap=10))]
    assert early.check("c1", pool, commit=True).allowed == [True, True]
    assert early.check("c2", pool[1:], commit=True).allowed == [True]  # no per-customer limit
    client = redis.Redis.from_url(redis_url)
    key = f"{redis_prefix}:capseen:23:{WEEK}"
    assert client.getbit(key, seen_bit("c1", 23)) == 1
    assert 0 < client.ttl(key) <= 8 * 86_400
    caps = _worker(redis_url, redis_prefix)
    try:
        assert caps.summary.may_have("c1", WEEK)
        assert not caps.summary.may_have("c2", WEEK)  # only a campaign-wide count
        assert caps.check("c1", pool).reasons == ["per_customer_week", None]
    finally:
        caps.tracker.stop()


def test_a_send_between_the_bitmap_read_and_its_install_arrives_as_a_message(
    redis_url, redis_prefix
):
    other = _caps(redis_url, redis_prefix, clock=lambda: DAY)
    pool = [("a", CapLimits(per_customer_day=1))]
    caps = _caps(redis_url, redis_prefix, clock=lambda: DAY, local_cache=True, summary=True)
    load = caps.summary.load

    def late_send(week, raw):
        # the GET has been answered without this send; it is counted before the install
        other.check("late", pool, commit=True)
        load(week, raw)

    caps.summary.load = late_send
    try:
        caps.tracker.ensure_started()
        until(lambda: caps.summary.week is not None)
        until(lambda: caps.summary.may_have("late", WEEK))
        assert caps.check("late", pool).allowed == [False]
    finally:
        caps.tracker.stop()


def test_losing_the_subscriber_turns_the_summary_off_until_reloaded(redis_url, redis_prefix):
    caps = _worker(redis_url, redis_prefix)
    try:
        pool = [("a", CapLimits(per_customer_day=1))]
        commands = Commands(caps)
        caps.check("c1", pool)
        assert commands.n == 0
        caps.tracker.kill_connection()
        until(lambda: caps.summary.week is None)
        # meanwhile a send elsewhere would go unseen: every check reads
        caps.check("c1", pool)
        assert commands.n >= 1
        until(lambda: caps.summary.week == WEEK)
        caps.tracker.stop()
        assert caps.summary.week is None and caps._unseen("c1") is False
    finally:
        caps.tracker.stop()


def test_a_new_week_loads_its_own_bitmap(redis_url, redis_prefix):
    now = [DAY]
    caps = _worker(redis_url, redis_prefix, clock=lambda: now[0])
    try:
        pool = [("a", CapLimits(per_customer_week=1))]
        assert caps.check("c1", pool, commit=True).allowed == [True]
        assert caps.summary.may_have("c1", WEEK)  # marked at once by this worker's own send
        now[0] += 7 * 86_400
        assert caps._unseen("fresh") is False  # not loaded yet: read
        until(lambda: caps.summary.week == "202550")
        assert caps._unseen("c1") and caps._unseen("fresh")
        assert caps.check("c1", pool).allowed == [True]
    finally:
        caps.tracker.stop()


@pytest.mark.parametrize("b_cap", [3, 50])  # 3: reached (remembered exhausted), 50: not
@pytest.mark.parametrize("summary", [True, False])
def test_the_summary_gives_the_answers_of_a_read(redis_url, redis_prefix, summary, b_cap):
    caps = _caps(redis_url, redis_prefix, clock=lambda: DAY, local_cache=True, summary=summary)
    plain = _caps(redis_url, redis_prefix, clock=lambda: DAY)
    caps.tracker.ensure_started()
    until(lambda: caps.tracker.live and (not summary or caps.summary.week is not None))
    try:
        pool = [
            ("a", CapLimits(per_customer_day=1)),
            ("b", CapLimits(per_customer_week=2, daily_cap=b_cap)),
            ("c", CapLimits(daily_cap=1)),
        ]
        for c in range(6):
            plain.check(f"c{c % 3}", pool, commit=True, top_k=1)
        customers = [f"c{c}" for c in range(6)]
        want = [plain.check(c, pool) for c in customers]
        until(lambda: [caps.check(c, pool) for c in customers] == want)
        batch = caps.read_many([(c, pool) for c in customers])
        assert [caps.check(c, pool, prefetched=batch) for c in customers] == want
        for c, wanted in zip(customers, want, strict=True):
            pending = caps.prefetch(c, pool)  # decided before scoring, or sent for
            try:
                assert caps.check(c, pool, prefetched=pending) == wanted, c
                # the answer's campaigns only (ranked), from the pool's prefetch
                assert caps.check(c, pool[1:], prefetched=pending).reasons == wanted.reasons[1:]
            finally:
                if pending is not None:
                    pending.close()
    finally:
        caps.tracker.stop()


def test_an_answer_decided_before_scoring_equals_a_plain_reads(redis_url, redis_prefix):
    import copy

    from api.caps import apply_caps, prefetch_caps

    caps = _worker(redis_url, redis_prefix)
    try:
        limits = [(1, 3, None), (None, None, None), (None, 2, None), (0, None, None)]
        index = {"a": 0, "free": 1, "b": 2, "zero": 3}
        ids = list(index)
        shared = ["segment rule"]
        answer = {
            "campaigns": [
                {"campaign_id": "b", "rules": shared},
                {"campaign_id": "free"},
                {"campaign_id": "a", "rules": shared},
            ]
        }
        for top_k in (None, 2, 1, 0):
            pending = prefetch_caps(caps, ids[:3], limits[:3], "new-1")
            assert isinstance(pending, Verdict) and pending.blocked == {}
            fast, plain = copy.deepcopy(answer), copy.deepcopy(answer)
            apply_caps(caps, limits, index, fast, "new-1", commit=False, top_k=top_k,
                       prefetched=pending)  # fmt: skip
            apply_caps(caps, limits, index, plain, "new-1", commit=False, top_k=top_k)
            assert fast == plain, top_k
            assert shared == ["segment rule"]  # the table's list is never changed
        # a blocked campaign in the verdict: the general path, same answer as a plain read
        pending = prefetch_caps(caps, ids, limits, "new-2")
        assert isinstance(pending, Verdict) and pending.blocked == {"zero": "per_customer_day"}
        blocked = {"campaigns": [{"campaign_id": "zero"}, {"campaign_id": "a"}]}
        fast, plain = copy.deepcopy(blocked), copy.deepcopy(blocked)
        apply_caps(caps, limits, index, fast, "new-2", commit=False, top_k=1, prefetched=pending)
        apply_caps(caps, limits, index, plain, "new-2", commit=False, top_k=1)
        assert fast == plain and fast["caps"]["capped"] == ["zero"]
        assert [c["campaign_id"] for c in fast["campaigns"]] == ["a"]
    finally:
        caps.tracker.stop()


def test_the_bit_of_an_id_with_a_lone_surrogate_hashes_its_surrogatepass_bytes():
    import hashlib

    for customer in ("plain", "cust-é-42", "x\udc80y"):
        raw = customer.encode("utf-8", "surrogatepass")
        digest = hashlib.blake2b(raw, digest_size=8).digest()
        assert seen_bit(customer, 23) == int.from_bytes(digest, "little") & ((1 << 23) - 1)


def test_the_pools_plan_is_kept_for_its_day_and_epoch_only(redis_url, redis_prefix):
    # prefetch decides a customer not sent to this week from the pool's plan, built once per
    # pool, tracker epoch and UTC day: a new day (or a clock set back), a change in Redis and
    # another pool each build it again, and a new week's day waits for that week's bitmap
    now = [DAY + 3_600]
    caps = _worker(redis_url, redis_prefix, clock=lambda: now[0])
    other = _caps(redis_url, redis_prefix, clock=lambda: DAY)
    try:
        pool = [("a", CapLimits(per_customer_day=1, daily_cap=5))]
        caps.check("x0", pool)  # the campaign-wide counter read and held
        pending = caps.prefetch("new-1", pool)
        assert isinstance(pending, Verdict) and pending.customer_id == "new-1"
        plan = caps._plan
        assert plan[0] is pool and plan[2:5] == (DAY, DAY + 86_400, WEEK)
        assert caps.prefetch("new-2", pool).blocked == {} and caps._plan is plan
        now[0] = DAY + 86_400 + 60  # the next day, the same ISO week: its own daily counter
        pending = caps.prefetch("new-3", pool)
        assert isinstance(pending, Prefetch)  # not held yet: read
        pending.close()
        caps.check("x2", pool)  # read and held
        assert isinstance(caps.prefetch("new-3", pool), Verdict)
        assert caps._plan is not plan and caps._plan[2:5] == (DAY + 86_400, DAY + 2 * 86_400, WEEK)
        now[0] = DAY + 60  # the clock set back a day
        assert isinstance(caps.prefetch("new-4", pool), Verdict) and caps._plan[2] == DAY
        plan = caps._plan
        other.check("someone", pool, commit=True)  # another worker's send: a message here
        until(lambda: caps.tracker.epoch != plan[1])
        caps.check("x1", pool)  # the daily counter read again and held (1 of 5)
        assert isinstance(caps.prefetch("new-5", pool), Verdict)
        assert caps._plan is not plan and caps._plan[1] == caps.tracker.epoch
        other_pool = [("b", CapLimits(per_customer_week=2))]
        assert caps.prefetch("new-6", other_pool).blocked == {} and caps._plan[0] is other_pool
        now[0] = DAY + 7 * 86_400  # a new week: its bitmap is not loaded at once
        commands = Commands(caps)
        assert not isinstance(caps.prefetch("new-7", other_pool), Verdict)
        assert commands.n >= 1
    finally:
        caps.tracker.stop()
