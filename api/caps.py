"""Frequency caps in Redis: per customer and campaign per day and week, and a campaign's daily cap.

Counters are plain Redis integers under expiring keys named by the UTC day or ISO week::

    {prefix}:cap:{campaign}:c:{customer}:d:{YYYYMMDD}   sends to this customer today
    {prefix}:cap:{campaign}:c:{customer}:w:{YYYYWW}     sends to this customer this week
    {prefix}:cap:{campaign}:d:{YYYYMMDD}                sends of the campaign today (daily_cap)

A request that sends (``commit: true``) runs one Lua script that walks the candidates in rank
order and, for each, checks all its counters and increments them only if none is at its limit,
stopping after ``top_k`` admissions. Redis runs a script atomically, so two workers can never
both pass a cap of 1: the second sees the first's count.

A request that only asks (no ``commit``) reads counters and drops the campaigns at a cap. Its
cost is one Redis round trip. Measured (bench.targeting, callgrind; bench/RESULTS.md) that cost
is mostly CPU, not waiting: redis-py's packing, pool and pure-Python reply parsing, and the
kernel's loopback socket work. So the read path does as little of it as it can:

* **No read at all** when no candidate has a cap, or every capped candidate is known to be at
  its campaign-wide ``daily_cap`` (below).
* **Prefetch** (:meth:`FrequencyCaps.prefetch`): the view sends one ``MGET`` of the counters of
  every capped campaign in the pool for this customer *before* scoring, and reads the reply
  after; Redis answers while the worker scores, so the wait for the reply overlaps the
  request's own work (the CPU cost stays). The counters are as fresh as a read after scoring
  (a few hundred microseconds apart, both advisory: only a commit counts). Pools with more than
  :data:`PREFETCH_MAX_KEYS` counters per customer are read after scoring instead, and only for
  the campaigns that survived eligibility, gain and hold-outs.
* **Counters held until they change** (:mod:`api.cap_tracking`; the service's
  ``CAPS_LOCAL_CACHE``, on by default): a worker holds every counter value it has read, per key,
  until Redis's client-side-caching invalidation (``CLIENT TRACKING ... BCAST``) says the key
  changed (a commit in any worker, an expiry, an operator's ``DEL``). A read-only check whose
  counters are all held makes no round trip. An answer may miss a change only for the moment
  the invalidation message is in flight (sub-millisecond on one host), as a read that raced the
  change would; a commit never uses held values (the Lua script reads every counter
  atomically), and drops its keys here at once. Without the subscriber (not yet connected, or
  lost) nothing is held and every check reads. At most ``CAPS_LOCAL_CACHE_ENTRIES`` keys.
* **No per-customer read for a customer not sent to this week** (:mod:`api.cap_summary`; the
  service's ``CAPS_SUMMARY``, on by default with the local cache): the commit script also sets
  the customer's bit in the ISO week's bitmap ``{prefix}:capseen:{bits}:{YYYYWW}`` (2**bits
  bits, ``CAPS_SUMMARY_BITS``), and each worker keeps a copy through the same subscriber (loaded
  once subscribed, then marked by every invalidation naming a per-customer counter). A clear
  bit means the customer's per-customer counters are all 0: only the campaign-wide ``daily_cap``
  counters are needed, and they are held, so the prefetch decides the check before scoring
  (:class:`Verdict`; the pool's plan for such customers, its verdict and the day and week it
  holds for, is kept until the next invalidation or the day's end, so a request asks only
  the customer's bit).
  A set bit (a send this week, or another customer's bit) reads as before. Without the
  subscriber, or before the week's bitmap is loaded, every customer is read. Measured
  (bench.targeting, 2026-12-06): holding a read customer's ~21 values costs ~8 µs per read
  (OrderedDict insert and evict under the lock) plus cache misses on the 65,536 entries; with
  the summary only customers sent to this week are read, so holding them all was kept.
* **Exhausted campaign caps** are remembered for :data:`EXHAUSTED_SECONDS`: a campaign-day
  counter only grows during its day (``INCR`` only; the key names the day), so once it has
  reached the ``daily_cap`` it stays there until the next UTC day. The memory is dropped at the
  day's end, after :data:`EXHAUSTED_SECONDS`, and at once when the held counters' invalidation
  names the key (an operator who deletes a counter to lift a cap mid-day). A commit never relies on
  it: the Lua script re-reads every counter atomically.

When Redis fails, caps fail *open* (every candidate passes, as if uncapped) or *closed* (none
passes) as configured; the result says which, and the caller counts it in the metrics.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
import operator
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from api.cap_summary import SEEN_BITS, SeenSummary, seen_bit, seen_key
from api.cap_tracking import CapTracker

try:  # redis-py's C reply parser's package (requirements.txt) also packs commands in C
    from hiredis import pack_command as _pack_command
except ImportError:  # pragma: no cover - exercised only where hiredis is missing
    _pack_command = None

log = logging.getLogger(__name__)

OPEN, CLOSED = "open", "closed"
#: a day key outlives its day by one day, a week key its week by one day (clock skew)
DAY_TTL = 2 * 86_400
WEEK_TTL = 8 * 86_400

#: KEYS: 3 per candidate (customer-day, customer-week, campaign-day; "" when unused), then the
#: week's seen-customers bitmap (api/cap_summary.py; "" without a customer).
#: ARGV: top_k, then per candidate: 3 limits (-1: none), then the 3 TTLs, then the customer's
#: bit in the bitmap and the bitmap's TTL. The bit is set when a per-customer counter is counted.
#: Returns one entry per candidate: 1 admitted, 0 not reached (top_k already admitted),
#: or -(1 + i) blocked by its i-th counter (0: per day, 1: per week, 2: daily cap).
_ADMIT = """
local top_k = tonumber(ARGV[1])
local n = (#KEYS - 1) / 3
local out = {}
local admitted = 0
local seen = false
for c = 0, n - 1 do
  if admitted >= top_k then
    out[c + 1] = 0
  else
    local blocked = nil
    for i = 1, 3 do
      local key = KEYS[3 * c + i]
      local limit = tonumber(ARGV[1 + 3 * c + i])
      if limit >= 0 and key ~= "" then
        local count = tonumber(redis.call("GET", key) or "0")
        if count >= limit then
          blocked = i
          break
        end
      end
    end
    if blocked then
      out[c + 1] = -blocked
    else
      for i = 1, 3 do
        local key = KEYS[3 * c + i]
        local limit = tonumber(ARGV[1 + 3 * c + i])
        if limit >= 0 and key ~= "" then
          local count = redis.call("INCR", key)
          if count == 1 then
            redis.call("EXPIRE", key, tonumber(ARGV[1 + 3 * n + i]))
          end
          if i < 3 then
            seen = true
          end
        end
      end
      admitted = admitted + 1
      out[c + 1] = 1
    end
  end
end
local seen_key = KEYS[3 * n + 1]
if seen and seen_key ~= "" then
  if redis.call("SETBIT", seen_key, tonumber(ARGV[3 * n + 5]), 1) == 0
      and redis.call("TTL", seen_key) < 0 then
    redis.call("EXPIRE", seen_key, tonumber(ARGV[3 * n + 6]))
  end
end
return out
"""

REASONS = ("per_customer_day", "per_customer_week", "daily_cap")
#: most counters one request prefetches before scoring (more: read survivors after scoring)
PREFETCH_MAX_KEYS = 96
#: how long a worker trusts that a campaign's daily cap is exhausted without reading it again
EXHAUSTED_SECONDS = 60.0
#: most counter values a worker holds by default (CAPS_LOCAL_CACHE_ENTRIES)
LOCAL_ENTRIES = 65_536


@dataclass(frozen=True)
class CapLimits:
    """Limits of one campaign; None means no limit of that kind."""

    per_customer_day: int | None = None
    per_customer_week: int | None = None
    daily_cap: int | None = None

    def __post_init__(self) -> None:
        # asked several times per campaign per request: computed once (callgrind showed the
        # generator behind a property costing more than the rest of the check)
        limits = (self.per_customer_day, self.per_customer_week, self.daily_cap)
        object.__setattr__(self, "_limits", limits)
        #: True when some limit is set
        object.__setattr__(self, "any", any(v is not None for v in limits))
        #: (counter index, limit) of the limits that are set, in counter order
        object.__setattr__(
            self, "set_limits", tuple((i, v) for i, v in enumerate(limits) if v is not None)
        )
        #: True when a per-customer limit is set (a commit then marks the customer seen)
        object.__setattr__(self, "per_customer", limits[0] is not None or limits[1] is not None)
        #: the counter indexes of those limits (the keys a read needs)
        object.__setattr__(self, "set_indexes", tuple(i for i, _ in self.set_limits))
        #: (status, commit) -> its rule text (_cap_rule): a per-offer lru_cache lookup hashed
        #: this dataclass field by field in Python
        object.__setattr__(self, "rule_texts", {})

    def as_tuple(self) -> tuple[int | None, int | None, int | None]:
        """The limits in counter order (customer-day, customer-week, campaign-day)."""
        return self._limits  # type: ignore[attr-defined]


@dataclass(frozen=True)
class CapResult:
    """Which candidates passed their caps, and how the check went."""

    #: one per candidate: True when it may be offered (and, with commit, was counted)
    allowed: list[bool]
    #: one per candidate: None, or the cap that stopped it (``REASONS``) or "caps_unavailable"
    reasons: list[str | None]
    #: "ok", "disabled" (no Redis), "failed_open" or "failed_closed"
    status: str


def pack_mget(keys: Sequence[str]) -> bytes:
    """``MGET keys...`` in Redis's wire format (RESP). redis-py's general packer encodes and
    type-checks each argument one by one: for the prefetch's ~20 keys it cost several times
    this (bench/RESULTS.md, Targeting), and the bytes are the same (tests/api/test_caps.py).
    hiredis's C packer when installed (requirements.txt): 12 keys 2.3 -> 1.3 µs, and the
    ``bytes %`` formatting below was ~30k instructions of a first-seen sent-to customer's
    read-only request (callgrind, bench/RESULTS.md)."""
    if _pack_command is not None:
        return _pack_command(("MGET", *keys))
    parts = [b"*%d\r\n$4\r\nMGET\r\n" % (len(keys) + 1)]
    for key in keys:
        raw = key.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(parts)


def _ints(keys: Sequence[str], values: Sequence[Any]) -> dict[str, int]:
    """``MGET`` reply as {key: count} (an absent counter is 0)."""
    return {k: int(v or 0) for k, v in zip(keys, values, strict=True)}


class ReadCounts:
    """Counters read already (a batch's one ``MGET``), or the error reading them raised."""

    def __init__(self, values: dict[str, int], error: redis.RedisError | None = None) -> None:
        self._values = values
        self._error = error

    def counts(self) -> dict[str, int]:
        """{key: count}; raises the Redis error when the read failed."""
        if self._error is not None:
            raise self._error
        return self._values

    def close(self) -> None:
        """Nothing is held."""


class Verdict(tuple):
    """A read-only check decided before scoring with no read: the customer has no per-customer
    counter this week (api/cap_summary.py) and the pool's campaign-wide counters are held.

    ``Verdict((customer_id, blocked))``. A tuple, built by tuple's own constructor: one is made
    per read-only request, and a Python ``__init__`` cost as much as the rest of the decision
    (callgrind, bench/RESULTS.md). It answers :meth:`counts`/:meth:`close` as :class:`ReadCounts`
    does (nothing read, nothing held).
    """

    __slots__ = ()

    #: the customer it was decided for
    customer_id = property(operator.itemgetter(0))
    #: {campaign: the cap that stops it} for the pool's capped campaigns (usually empty)
    blocked = property(operator.itemgetter(1))

    def counts(self) -> dict[str, int]:
        """No counter was read (a check of another customer reads what it needs)."""
        return {}

    def close(self) -> None:
        """Nothing is held."""


class Prefetch:
    """An ``MGET`` of cap counters sent before scoring; the reply is read after it.

    Holds one connection out of the client's pool until its reply is read or :meth:`close`,
    which every caller runs (a ``finally``): an unread reply is never left on a pooled
    connection.
    """

    def __init__(
        self,
        pool: Any,
        connection: Any,
        keys: list[str],
        on_read: Callable[[dict[str, int]], None] | None = None,
    ) -> None:
        self._pool = pool
        self._connection = connection
        self.keys = keys
        #: given the counts once the reply is read (FrequencyCaps holds them)
        self._on_read = on_read
        self._values: dict[str, int] | None = None
        self._error: Exception | None = None

    def counts(self) -> dict[str, int]:
        """Counter value of every prefetched key (0 when absent); raises the Redis error."""
        if self._values is None and self._error is None:
            try:
                reply = self._connection.read_response()
                self._values = _ints(self.keys, reply)
                if self._on_read is not None:
                    self._on_read(self._values)
            except (redis.RedisError, OSError, ValueError, TypeError) as exc:
                self._error = exc if isinstance(exc, redis.RedisError) else redis.RedisError(exc)
                self._connection.disconnect()
            self._release()
        if self._error is not None:
            raise self._error
        return self._values  # type: ignore[return-value]

    def close(self) -> None:
        """Give the connection back, reading its reply first when nobody did (the answer had
        no capped offer left): a reconnect would cost several round trips, the reply one read.
        A connection whose reply cannot be read is dropped, never pooled with it pending."""
        if self._connection is not None and self._values is None and self._error is None:
            with contextlib.suppress(redis.RedisError):  # counts() dropped the connection
                self.counts()
        self._release()

    def _release(self) -> None:
        if self._connection is not None:
            self._pool.release(self._connection)
            self._connection = None


class FrequencyCaps:
    """Reads (and with commit, atomically counts) frequency-cap counters in Redis."""

    def __init__(
        self,
        client: redis.Redis | None,
        *,
        prefix: str,
        fail: str = OPEN,
        clock: Callable[[], float] = time.time,
        on_failure: Callable[[str], None] | None = None,
        local_cache: bool = False,
        local_entries: int = LOCAL_ENTRIES,
        summary: bool = False,
        seen_bits: int = SEEN_BITS,
    ) -> None:
        if fail not in (OPEN, CLOSED):
            raise ValueError(f"fail={fail!r} should be {OPEN!r} or {CLOSED!r}")
        self.client = client
        self.prefix = prefix
        self.fail = fail
        self.clock = clock
        self.on_failure = on_failure
        #: size of the week's seen-customers bitmap a commit marks (2**seen_bits bits)
        self.seen_bits = seen_bits
        #: which customers may have counters this week (needs the local cache's subscriber):
        #: a read-only check of one who has none reads no per-customer counter
        self.summary: SeenSummary | None = None
        #: counter values held until Redis says they changed (None: read every time)
        self.tracker: CapTracker | None = None
        if client is not None and local_cache:
            if summary:
                self.summary = SeenSummary(prefix, seen_bits)
            self.tracker = CapTracker(
                client,
                prefix,
                max_entries=local_entries,
                on_invalidate=self._invalidated,
                summary=self.summary,
                week=lambda: self._period()[1],
            )
        self._script: Any = None  # registered on first use (a test double may lack scripts)
        #: (today's day number since the epoch, (day label, week label)): one attribute, so a
        #: reader never pairs one day's number with another's labels
        self._period_state: tuple[int, tuple[str, str]] = (-1, ("", ""))
        #: campaign-day key -> (count seen at or over a daily cap, when seen); today's keys only
        self._exhausted: dict[str, tuple[int, float]] = {}
        #: (the served pool's limits, its capped campaigns): rebuilt when the bundle changes
        self._pool_memo: tuple[Any, list[tuple[str, CapLimits]]] | None = None
        #: (customer, period labels, {campaign: keys}) of the last customer asked about
        self._key_memo: tuple[Any, tuple[str, str], dict[str, tuple[str, str, str]]] | None = None
        #: (period labels, {campaign: the customer-free parts of its keys}); see _keys_in
        self._key_parts: tuple[Any, dict[str, tuple[str, str, str, str]]] = (None, {})
        #: (pool candidates, tracker epoch, first and last+1 second of the day, week label,
        #: {campaign: reason}): what _unseen_plan decided for every customer not sent to this
        #: week, and while it holds (see prefetch)
        self._plan: tuple[Any, int, float, float, str, dict[str, str]] | None = None
        #: (customer, their bit in the seen-customers bitmap) of the last customer asked about
        self._bit_memo: tuple[str | None, int] = (None, 0)

    def _period(self) -> tuple[str, str]:
        """Today's day and ISO-week labels (UTC), recomputed once a day."""
        now = self.clock()
        ordinal = int(now // 86_400)
        state = self._period_state
        if ordinal != state[0]:
            moment = dt.datetime.fromtimestamp(now, dt.UTC)
            year, week, _ = moment.isocalendar()
            state = self._period_state = (ordinal, (moment.strftime("%Y%m%d"), f"{year}{week:02d}"))
            # yesterday's exhausted caps name yesterday's keys: never read again
            self._exhausted = {}
        return state[1]

    def _known_exhausted(self, day_key: str, limit: int | None) -> bool:
        """True when ``day_key`` was seen at or over ``limit`` in the last EXHAUSTED_SECONDS."""
        if limit is None:
            return False
        seen = self._exhausted.get(day_key)
        if seen is None:
            return False
        count, when = seen
        if self.clock() - when > EXHAUSTED_SECONDS:
            self._exhausted.pop(day_key, None)  # another thread may have dropped it already
            return False
        return count >= limit

    def _remember(self, day_key: str, count: int, limit: int | None) -> None:
        if limit is not None and count >= limit:
            self._exhausted[day_key] = (count, self.clock())

    def _invalidated(self, keys: list[str] | None) -> None:
        """Counters changed in Redis: an exhausted daily cap among them is read again."""
        if keys is None:
            self._exhausted = {}
            return
        for key in keys:
            self._exhausted.pop(key, None)

    def _held(self, keys: Sequence[str]) -> dict[str, int] | None:
        """The held values of all ``keys``, or None (then they are read)."""
        tracker = self.tracker
        return None if tracker is None else tracker.get_all(keys)

    def _unseen(self, customer_id: str | None) -> bool:
        """True when this worker knows the customer has no per-customer counter this week
        (api/cap_summary.py): those counts are 0 with no read."""
        summary = self.summary
        if summary is None or customer_id is None:
            return False
        return not summary.has_bit(self._bit(customer_id), self._period()[1])

    def _bit(self, customer_id: str) -> int:
        """The customer's bit in the seen-customers bitmap (needs the summary); asked twice a
        request (prefetch, check), so the last customer's is kept."""
        memo = self._bit_memo
        if memo[0] != customer_id:
            memo = self._bit_memo = (customer_id, seen_bit(customer_id, self.summary.bits))  # type: ignore[union-attr]
        return memo[1]

    def _mget(self, keys: list[str]) -> dict[str, int]:
        """Read ``keys`` and hold the reply when no change raced the read."""
        tracker = self.tracker
        mark = None if tracker is None else tracker.mark()
        counts = _ints(keys, self.client.mget(keys))  # type: ignore[union-attr]
        if tracker is not None:
            tracker.hold(mark, counts)
        return counts

    def _read_keys(
        self,
        customer_id: str | None,
        candidates: Sequence[tuple[str, CapLimits]],
        unseen: bool = False,
    ) -> list[str]:
        """The counters a read-only check of ``candidates`` needs (no known-exhausted ones;
        with ``unseen``, no per-customer ones)."""
        keys: list[str] = []
        if unseen:
            # the customer-free keys ("" per customer): one table for every such customer
            customer_id = None
        table = self._key_table(customer_id)
        # per request and campaign (callgrind/cProfile, bench/RESULTS.md): plain loops, and no
        # exhausted-cap lookup while no cap is known exhausted
        exhausted = self._exhausted
        append = keys.append
        for campaign_id, cap in candidates:
            if not cap.any:
                continue
            triple = table.get(campaign_id) or self._keys_of(table, customer_id, campaign_id)
            if exhausted and self._known_exhausted(triple[2], cap.daily_cap):
                continue
            for i in cap.set_indexes:
                key = triple[i]
                if key:
                    append(key)
        return keys

    def read_many(
        self, requests: Sequence[tuple[str | None, Sequence[tuple[str, CapLimits]]]]
    ) -> ReadCounts | None:
        """The counters read-only checks of many (customer, candidates) need, in one ``MGET``
        (a batch request: one round trip instead of one per customer); None when none needs a
        read. A failure is kept and raised by each check, which then fails open or closed."""
        if self.client is None:
            return None
        keys = list(
            dict.fromkeys(
                k for cid, cands in requests for k in self._read_keys(cid, cands, self._unseen(cid))
            )
        )
        if not keys:
            return None
        held = self._held(keys)
        if held is not None:
            return ReadCounts(held)
        try:
            return ReadCounts(self._mget(keys))
        except redis.RedisError as exc:
            return ReadCounts({}, exc)

    def pool_candidates(
        self,
        campaign_ids: Sequence[str],
        limits: Sequence[tuple[int | None, int | None, int | None]],
    ) -> list[tuple[str, CapLimits]]:
        """The pool's capped campaigns as (id, limits), built once per served pool."""
        memo = self._pool_memo
        if memo is None or memo[0] is not limits:
            candidates = [
                (cid, CapLimits(*triple))
                for cid, triple in zip(campaign_ids, limits, strict=True)
                if any(v is not None for v in triple)
            ]
            memo = self._pool_memo = (limits, candidates)
        return memo[1]

    def prefetch(
        self, customer_id: str | None, candidates: Sequence[tuple[str, CapLimits]]
    ) -> Prefetch | ReadCounts | Verdict | None:
        """Send the ``MGET`` a read-only check of ``candidates`` (the pool's capped campaigns)
        will need, without waiting for the reply (a :class:`Verdict` when no read is needed, a
        :class:`ReadCounts` when every counter is held); None when nothing needs reading, there are
        more than PREFETCH_MAX_KEYS counters, the client cannot split send from receive (a test
        double), or sending failed (the check then reads, and fails, as it would have)."""
        pool = getattr(self.client, "connection_pool", None)
        if pool is None:
            return None
        summary = self.summary
        if summary is not None and customer_id is not None and not self._exhausted:
            # the usual read-only request: a customer not sent to this week, decided from the
            # pool's plan (one per pool, tracker epoch and day: the per-campaign work and the
            # day's labels are not redone per request)
            plan = self._plan
            if (
                plan is None
                or plan[0] is not candidates
                or plan[1] != self.tracker.epoch  # type: ignore[union-attr]
                or not plan[2] <= self.clock() < plan[3]
            ):
                plan = self._unseen_plan(candidates)
            if plan is not None and not summary.has_bit(self._bit(customer_id), plan[4]):
                return Verdict((customer_id, plan[5]))
        unseen = self._unseen(customer_id)
        keys = self._read_keys(customer_id, candidates, unseen)
        if not keys:
            return None
        held = self._held(keys)
        if held is not None:
            return ReadCounts(held)
        if len(keys) > PREFETCH_MAX_KEYS:
            return None
        tracker = self.tracker
        mark = None if tracker is None else tracker.mark()
        try:
            connection = pool.get_connection()
        except (redis.RedisError, OSError):
            return None
        try:
            connection.send_packed_command([pack_mget(keys)])
        except (redis.RedisError, OSError):
            connection.disconnect()
            pool.release(connection)
            return None
        hold = None if tracker is None else functools.partial(tracker.hold, mark)
        return Prefetch(pool, connection, keys, hold)

    def _unseen_plan(
        self, candidates: Sequence[tuple[str, CapLimits]]
    ) -> tuple[Any, int, float, float, str, dict[str, str]] | None:
        """The pool's plan for any customer with no per-customer counter this week: {campaign:
        why capped} of ``candidates`` from held campaign-wide counters, with what it holds for
        (tracker epoch, the day's seconds, the week's label); None when not all are held.
        :meth:`prefetch` keeps it until an invalidation (the epoch) or the day changes, and
        uses it only while no daily cap is remembered exhausted."""
        tracker = self.tracker
        if tracker is None:
            return None
        epoch = tracker.epoch  # before reading: a change after it makes the plan stale at once
        self._period()
        ordinal, (_, week) = self._period_state
        day = ordinal * 86_400.0
        held = tracker.get_all(self._read_keys(None, candidates, True))
        if held is None:
            return None
        _, reasons, missing = self._decide(None, candidates, held, True)
        if missing:
            return None
        blocked = {cid: r for (cid, _), r in zip(candidates, reasons, strict=True) if r is not None}
        plan = self._plan = (candidates, epoch, day, day + 86_400.0, week, blocked)
        return plan

    def _key_table(self, customer_id: str | None) -> dict[str, tuple[str, str, str]]:
        """This customer's counter keys by campaign, filled as asked: kept for the last customer
        (a request asks for them when it prefetches and again when it checks). Each thread keeps
        the table it got, so another thread's customer replacing the memo is harmless."""
        period = self._period()
        memo = self._key_memo
        if memo is not None and memo[0] == customer_id and memo[1] is period:
            return memo[2]
        table: dict[str, tuple[str, str, str]] = {}
        self._key_memo = (customer_id, period, table)
        return table

    def _keys_in(
        self, customer_id: str | None, campaign_id: str, period: tuple[str, str]
    ) -> tuple[str, str, str]:
        """:meth:`keys` for the given period labels (day, week)."""
        # the customer-free parts of a campaign's keys, built once per campaign and period:
        # a request then joins two short strings per key (per request and campaign)
        parts_memo = self._key_parts
        if parts_memo[0] is not period:
            parts_memo = self._key_parts = (period, {})
        parts = parts_memo[1].get(campaign_id)
        if parts is None:
            day, week = period
            base = f"{self.prefix}:cap:{campaign_id}"
            parts = parts_memo[1][campaign_id] = (
                f"{base}:c:",
                f":d:{day}",
                f":w:{week}",
                f"{base}:d:{day}",
            )
        if customer_id is None:
            return ("", "", parts[3])
        head = parts[0] + customer_id
        return (head + parts[1], head + parts[2], parts[3])

    def _keys_of(
        self, table: dict[str, tuple[str, str, str]], customer_id: str | None, campaign_id: str
    ) -> tuple[str, str, str]:
        triple = table.get(campaign_id)
        if triple is None:
            triple = table[campaign_id] = self._keys_in(customer_id, campaign_id, self._period())
        return triple

    def keys(self, customer_id: str | None, campaign_id: str) -> tuple[str, str, str]:
        """The three counter keys of a (customer, campaign) pair now ("" without a customer)."""
        return self._keys_in(customer_id, campaign_id, self._period())

    def check(
        self,
        customer_id: str | None,
        candidates: Sequence[tuple[str, CapLimits]],
        *,
        commit: bool = False,
        top_k: int | None = None,
        prefetched: Prefetch | ReadCounts | Verdict | None = None,
    ) -> CapResult:
        """Caps of ``candidates`` ((campaign id, limits), best first) for one customer.

        Without ``commit`` only reads (using the ``prefetched`` counters where they cover the
        candidates, reading the rest); with it, admits at most ``top_k`` candidates (all when
        None) in order and counts them, atomically.
        """
        n = len(candidates)
        if not any(limits.any for _, limits in candidates):
            return CapResult([True] * n, [None] * n, "ok")
        if self.client is None:
            return CapResult([True] * n, [None] * n, "disabled")
        if commit:
            return self._commit(customer_id, candidates, n if top_k is None else top_k)
        if type(prefetched) is Verdict and prefetched.customer_id == customer_id:
            # decided before scoring (a bit set since is a message that was still in flight)
            blocked = prefetched.blocked
            if not blocked:
                return CapResult([True] * n, [None] * n, "ok")
            why = [blocked.get(cid) for cid, _ in candidates]
            return CapResult([r is None for r in why], why, "ok")
        # asked again here, not carried from the prefetch: a bit may have been set since
        # (the counters it then lacks are read below); bits are never cleared while in use
        unseen = self._unseen(customer_id)
        try:
            if prefetched is not None:
                counts = prefetched.counts()
            else:
                needed = self._read_keys(customer_id, candidates, unseen)
                held = self._held(needed) if needed else None
                counts = held if held is not None else (self._mget(needed) if needed else {})
            allowed, reasons, missing = self._decide(customer_id, candidates, counts, unseen)
            if missing:
                # the counters not read yet (an exhausted cap's memory lapsed meanwhile, or
                # campaigns beyond the prefetch's): a shared dict is never changed
                counts = {**counts, **self._mget(missing)}
                allowed, reasons, missing = self._decide(customer_id, candidates, counts, unseen)
        except redis.RedisError as exc:
            return self._failed(n, exc)
        return CapResult(allowed, reasons, "ok")

    def _decide(
        self,
        customer_id: str | None,
        candidates: Sequence[tuple[str, CapLimits]],
        counts: dict[str, int],
        unseen: bool = False,
    ) -> tuple[list[bool], list[str | None], list[str]]:
        """Which candidates pass their caps by ``counts`` (``unseen``: the per-customer ones
        are 0), why the others do not, and the counters ``counts`` lacks (their campaigns pass
        for now: read them and ask again)."""
        if unseen:
            customer_id = None  # the customer-free keys (see _read_keys)
        table = self._key_table(customer_id)
        allowed: list[bool] = []
        reasons: list[str | None] = []
        missing: list[str] = []
        exhausted = self._exhausted
        for campaign_id, cap in candidates:
            reason = None
            if cap.any:
                triple = table.get(campaign_id) or self._keys_of(table, customer_id, campaign_id)
                if exhausted and self._known_exhausted(triple[2], cap.daily_cap):
                    reason = REASONS[2]
                else:
                    for i, limit in cap.set_limits:
                        key = triple[i]
                        if unseen and i < 2:
                            count: int | None = 0  # no counter this week (a limit of 0 holds)
                        elif not key:
                            continue
                        else:
                            count = counts.get(key)
                        if count is None:
                            missing.append(key)
                        elif count >= limit:
                            if i == 2:
                                self._remember(key, count, limit)
                            reason = REASONS[i]
                            break
            allowed.append(reason is None)
            reasons.append(reason)
        return allowed, reasons, missing

    def _commit(
        self, customer_id: str | None, candidates: Sequence[tuple[str, CapLimits]], top_k: int
    ) -> CapResult:
        """Admit and count up to ``top_k`` candidates in one atomic Lua script."""
        keys: list[str] = []
        limits: list[int] = []
        for campaign_id, cap in candidates:
            keys.extend(self.keys(customer_id, campaign_id))
            limits.extend(-1 if v is None else v for v in cap.as_tuple())
        seen, bit = "", 0
        if customer_id is not None:
            seen = seen_key(self.prefix, self.seen_bits, self._period()[1])
            bit = seen_bit(customer_id, self.seen_bits)
            if self.summary is not None and any(cap.per_customer for _, cap in candidates):
                # before the send is counted: no check here may call the customer unseen after
                self.summary.mark(customer_id)
        args = [top_k, *limits, DAY_TTL, WEEK_TTL, DAY_TTL, bit, WEEK_TTL]
        try:
            if self._script is None:
                self._script = self.client.register_script(_ADMIT)
            codes = self._script(keys=[*keys, seen], args=args)
        except redis.RedisError as exc:
            return self._failed(len(candidates), exc)
        finally:
            # the counters may have changed: read them again here (the invalidation follows)
            if self.tracker is not None:
                self.tracker.drop(keys)
        codes = [int(c) for c in codes]
        for c, code in enumerate(codes):
            if code == -3:  # blocked by the campaign's daily cap: it is exhausted for today
                cap = candidates[c][1].daily_cap
                self._remember(keys[3 * c + 2], cap if cap is not None else 0, cap)
        allowed = [c == 1 for c in codes]
        reasons = [REASONS[-c - 1] if c < 0 else None for c in codes]
        return CapResult(allowed, reasons, "ok")

    def _failed(self, n: int, exc: Exception) -> CapResult:
        log.warning(
            "frequency caps unavailable (%s): failing %s", exc.__class__.__name__, self.fail
        )
        status = f"failed_{self.fail}"
        if self.on_failure is not None:
            self.on_failure(status)
        if self.fail == OPEN:
            return CapResult([True] * n, [None] * n, status)
        return CapResult([False] * n, ["caps_unavailable"] * n, status)


#: why an answer lost every offer to the caps
ALL_CAPPED = "every campaign with a positive gain is at a frequency cap"
CAPS_UNAVAILABLE = "frequency caps cannot be checked (Redis unavailable, failing closed)"


def apply_caps(
    caps: FrequencyCaps,
    limits: Sequence[tuple[int | None, int | None, int | None]],
    campaign_index: dict[str, int],
    result: dict,
    customer_id: object,
    *,
    commit: bool,
    top_k: int | None,
    prefetched: Prefetch | ReadCounts | Verdict | None = None,
) -> None:
    """Keep the answer's offers that pass their caps (counting them with ``commit``), at most
    ``top_k``, and add ``caps`` {status, capped, committed} to the answer (and a reason when
    nothing is left). ``prefetched``: counters sent for before scoring (read-only path)."""
    items = result["campaigns"]
    cid = None if customer_id is None else str(customer_id)
    if (
        type(prefetched) is Verdict
        and not prefetched.blocked
        and not commit
        and prefetched.customer_id == cid
        and caps.client is not None
    ):
        # decided before scoring, nothing capped (the usual read-only answer of a customer not
        # sent to this week): what check() would say, without its per-offer lists and objects
        # (bench.targeting --callgrind: 1.526M -> 1.498M instructions a request, rules 1.456M)
        kept = items if top_k is None else items[:top_k]
        ok_rules = _by_campaign(limits, campaign_index)[1]
        for item in kept:
            text = ok_rules[item["campaign_id"]]
            if text is not None:
                item["rules"] = [*item.get("rules", ()), text]
        result["campaigns"] = kept
        result["caps"] = {"status": "ok", "capped": [], "committed": False}
        if not kept and items and "reason" not in result:
            result["reason"] = ALL_CAPPED
        return
    candidates = _candidates(limits, campaign_index, items)
    checked = caps.check(cid, candidates, commit=commit, top_k=top_k, prefetched=prefetched)
    allowed = checked.allowed
    if all(allowed):
        # the usual answer: nobody capped, so no filtering and no reasons to collect
        kept = items if top_k is None else items[:top_k]
        kept_n = len(kept)
        capped: list[str] = []
    else:
        kept = [item for item, ok in zip(items, allowed, strict=True) if ok]
        if top_k is not None:
            kept = kept[:top_k]
        kept_n = -1
        capped = [
            item["campaign_id"]
            for item, ok, why in zip(items, allowed, checked.reasons, strict=True)
            if not ok and why is not None
        ]
    kept_ids = None if kept_n >= 0 else {id(item) for item in kept}
    status = checked.status
    for n, (item, (_, cap)) in enumerate(zip(items, candidates, strict=True)):
        if n == kept_n:
            break
        if cap.any and (kept_ids is None or id(item) in kept_ids):
            # the caps admitted it (or could not be asked): a new list, the table's is shared
            item["rules"] = [*item.get("rules", ()), _cap_rule(cap, status, commit)]
    result["campaigns"] = kept
    result["caps"] = {"status": checked.status, "capped": capped, "committed": commit}
    if not kept and items and "reason" not in result:
        result["reason"] = CAPS_UNAVAILABLE if checked.status == f"failed_{CLOSED}" else ALL_CAPPED


def _cap_rule(cap: CapLimits, status: str, commit: bool) -> str:
    """How the frequency caps admitted one offer, for its ``rules`` (built once per limits,
    status and commit)."""
    texts = cap.rule_texts  # type: ignore[attr-defined]
    text = texts.get((status, commit))
    if text is None:
        text = texts[(status, commit)] = _cap_rule_text(cap, status, commit)
    return text


def _cap_rule_text(cap: CapLimits, status: str, commit: bool) -> str:
    if status == "disabled":
        return "frequency caps not checked (no Redis configured)"
    if status.startswith("failed"):
        return "frequency caps not checked (Redis unavailable, failing open)"
    limits = ", ".join(
        f"{v} {label}"
        for v, label in zip(
            cap.as_tuple(),
            ("a day per customer", "a week per customer", "a day in all"),
            strict=True,
        )
        if v is not None
    )
    return f"under its frequency caps ({limits}){', counted' if commit else ''}"


def _candidates(
    limits: Sequence[tuple[int | None, int | None, int | None]],
    campaign_index: dict[str, int],
    items: Sequence[dict],
) -> list[tuple[str, CapLimits]]:
    by_id = _limits_by_campaign(limits, campaign_index)
    return [(cid, by_id[cid]) for cid in [item["campaign_id"] for item in items]]


#: (the served pool's limits, its campaign index, {campaign: CapLimits}, {campaign: its rule
#: text when a read-only check admits it, None when uncapped}): rebuilt when they change
_BY_CAMPAIGN: tuple[Any, Any, dict[str, CapLimits], dict[str, str | None]] = (None, None, {}, {})


def _by_campaign(
    limits: Sequence[tuple[int | None, int | None, int | None]], campaign_index: dict[str, int]
) -> tuple[dict[str, CapLimits], dict[str, str | None]]:
    """Each campaign's CapLimits and read-only "ok" rule text, built once per served pool."""
    global _BY_CAMPAIGN
    memo = _BY_CAMPAIGN
    if memo[0] is not limits or memo[1] is not campaign_index:
        by_id = {cid: _cap_limits(limits[i]) for cid, i in campaign_index.items()}
        ok_rules = {
            cid: _cap_rule(cap, "ok", False) if cap.any else None for cid, cap in by_id.items()
        }
        memo = _BY_CAMPAIGN = (limits, campaign_index, by_id, ok_rules)
    return memo[2], memo[3]


def _limits_by_campaign(
    limits: Sequence[tuple[int | None, int | None, int | None]], campaign_index: dict[str, int]
) -> dict[str, CapLimits]:
    """Each campaign's CapLimits, built once per served pool (not per offer and request)."""
    return _by_campaign(limits, campaign_index)[0]


@functools.lru_cache(maxsize=4096)
def _cap_limits(triple: tuple[int | None, int | None, int | None]) -> CapLimits:
    """One shared CapLimits per distinct set of limits (built once, not per request)."""
    return CapLimits(*triple)


def read_caps_batch(
    caps: FrequencyCaps,
    limits: Sequence[tuple[int | None, int | None, int | None]],
    campaign_index: dict[str, int],
    results: Sequence[dict],
    customer_ids: Sequence[object],
) -> ReadCounts | None:
    """One ``MGET`` for the read-only cap checks of a whole batch's answers (see read_many)."""
    return caps.read_many(
        [
            (None if cid is None else str(cid), _candidates(limits, campaign_index, r["campaigns"]))
            for cid, r in zip(customer_ids, results, strict=True)
        ]
    )


def prefetch_caps(
    caps: FrequencyCaps,
    campaign_ids: Sequence[str],
    limits: Sequence[tuple[int | None, int | None, int | None]],
    customer_id: object,
) -> Prefetch | ReadCounts | Verdict | None:
    """Send for the cap counters of every capped campaign of the pool for this customer (a
    read-only request, before it is scored); see :meth:`FrequencyCaps.prefetch`."""
    memo = caps._pool_memo  # pool_candidates' memo: asked once per request
    candidates = memo[1] if memo is not None and memo[0] is limits else None
    if candidates is None:
        candidates = caps.pool_candidates(campaign_ids, limits)
    if not candidates:
        return None
    return caps.prefetch(None if customer_id is None else str(customer_id), candidates)
