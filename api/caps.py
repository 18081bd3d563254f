"""Frequency caps in Redis: per customer and campaign per day and week, and a campaign's daily cap.

Counters are plain Redis integers under expiring keys named by the UTC day or ISO week::

    {prefix}:cap:{campaign}:c:{customer}:d:{YYYYMMDD}   sends to this customer today
    {prefix}:cap:{campaign}:c:{customer}:w:{YYYYWW}     sends to this customer this week
    {prefix}:cap:{campaign}:d:{YYYYMMDD}                sends of the campaign today (daily_cap)

A request that only asks (no ``commit``) reads the counters of every candidate in one ``MGET``
and drops the campaigns at a cap. A request that sends (``commit: true``) runs one Lua script
that walks the candidates in rank order and, for each, checks all its counters and increments
them only if none is at its limit, stopping after ``top_k`` admissions. Redis runs a script
atomically, so two workers can never both pass a cap of 1: the second sees the first's count.

When Redis fails, caps fail *open* (every candidate passes, as if uncapped) or *closed* (none
passes) as configured; the result says which, and the caller counts it in the metrics.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

log = logging.getLogger(__name__)

OPEN, CLOSED = "open", "closed"
#: a day key outlives its day by one day, a week key its week by one day (clock skew)
DAY_TTL = 2 * 86_400
WEEK_TTL = 8 * 86_400

#: KEYS: 3 per candidate (customer-day, customer-week, campaign-day; "" when unused).
#: ARGV: top_k, then per candidate: 3 limits (-1: none), then the 3 TTLs.
#: Returns one entry per candidate: 1 admitted, 0 not reached (top_k already admitted),
#: or -(1 + i) blocked by its i-th counter (0: per day, 1: per week, 2: daily cap).
_ADMIT = """
local top_k = tonumber(ARGV[1])
local n = #KEYS / 3
local out = {}
local admitted = 0
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
        end
      end
      admitted = admitted + 1
      out[c + 1] = 1
    end
  end
end
return out
"""

REASONS = ("per_customer_day", "per_customer_week", "daily_cap")


@dataclass(frozen=True)
class CapLimits:
    """Limits of one campaign; None means no limit of that kind."""

    per_customer_day: int | None = None
    per_customer_week: int | None = None
    daily_cap: int | None = None

    @property
    def any(self) -> bool:
        """True when some limit is set."""
        return any(v is not None for v in self.as_tuple())

    def as_tuple(self) -> tuple[int | None, int | None, int | None]:
        """The limits in counter order (customer-day, customer-week, campaign-day)."""
        return (self.per_customer_day, self.per_customer_week, self.daily_cap)


@dataclass(frozen=True)
class CapResult:
    """Which candidates passed their caps, and how the check went."""

    #: one per candidate: True when it may be offered (and, with commit, was counted)
    allowed: list[bool]
    #: one per candidate: None, or the cap that stopped it (``REASONS``) or "caps_unavailable"
    reasons: list[str | None]
    #: "ok", "disabled" (no Redis), "failed_open" or "failed_closed"
    status: str


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
    ) -> None:
        if fail not in (OPEN, CLOSED):
            raise ValueError(f"fail={fail!r} should be {OPEN!r} or {CLOSED!r}")
        self.client = client
        self.prefix = prefix
        self.fail = fail
        self.clock = clock
        self.on_failure = on_failure
        self._script: Any = None  # registered on first use (a test double may lack scripts)
        self._period_ordinal = -1
        self._period_labels = ("", "")

    def _period(self) -> tuple[str, str]:
        """Today's day and ISO-week labels (UTC), recomputed once a day."""
        now = self.clock()
        ordinal = int(now // 86_400)
        if ordinal != self._period_ordinal:
            moment = dt.datetime.fromtimestamp(now, dt.UTC)
            year, week, _ = moment.isocalendar()
            self._period_labels = (moment.strftime("%Y%m%d"), f"{year}{week:02d}")
            self._period_ordinal = ordinal
        return self._period_labels

    def keys(self, customer_id: str | None, campaign_id: str) -> tuple[str, str, str]:
        """The three counter keys of a (customer, campaign) pair now ("" without a customer)."""
        day, week = self._period()
        base = f"{self.prefix}:cap:{campaign_id}"
        if customer_id is None:
            return ("", "", f"{base}:d:{day}")
        return (
            f"{base}:c:{customer_id}:d:{day}",
            f"{base}:c:{customer_id}:w:{week}",
            f"{base}:d:{day}",
        )

    def check(
        self,
        customer_id: str | None,
        candidates: Sequence[tuple[str, CapLimits]],
        *,
        commit: bool = False,
        top_k: int | None = None,
    ) -> CapResult:
        """Caps of ``candidates`` ((campaign id, limits), best first) for one customer.

        Without ``commit`` only reads; with it, admits at most ``top_k`` candidates (all when
        None) in order and counts them, atomically.
        """
        n = len(candidates)
        capped = [i for i, (_, limits) in enumerate(candidates) if limits.any]
        if not capped:
            return CapResult([True] * n, [None] * n, "ok")
        if self.client is None:
            return CapResult([True] * n, [None] * n, "disabled")
        keys: list[str] = []
        limits: list[int] = []
        for campaign_id, cap in candidates:
            keys.extend(self.keys(customer_id, campaign_id))
            limits.extend(-1 if v is None else v for v in cap.as_tuple())
        try:
            if commit:
                k = n if top_k is None else top_k
                if self._script is None:
                    self._script = self.client.register_script(_ADMIT)
                codes = self._script(keys=keys, args=[k, *limits, DAY_TTL, WEEK_TTL, DAY_TTL])
                return self._from_codes([int(c) for c in codes])
            used = [i for i, key in enumerate(keys) if key and limits[i] >= 0]
            values = self.client.mget([keys[i] for i in used]) if used else []
        except redis.RedisError as exc:
            return self._failed(n, exc)
        counts = dict(zip(used, values, strict=True))
        allowed, reasons = [], []
        for c in range(n):
            reason = None
            for i in range(3):
                slot = 3 * c + i
                if slot in counts and int(counts[slot] or 0) >= limits[slot]:
                    reason = REASONS[i]
                    break
            allowed.append(reason is None)
            reasons.append(reason)
        return CapResult(allowed, reasons, "ok")

    def _from_codes(self, codes: list[int]) -> CapResult:
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
) -> None:
    """Keep the answer's offers that pass their caps (counting them with ``commit``), at most
    ``top_k``, and add ``caps`` {status, capped, committed} to the answer (and a reason when
    nothing is left)."""
    items = result["campaigns"]
    candidates = [
        (item["campaign_id"], CapLimits(*limits[campaign_index[item["campaign_id"]]]))
        for item in items
    ]
    cid = None if customer_id is None else str(customer_id)
    checked = caps.check(cid, candidates, commit=commit, top_k=top_k)
    kept = [item for item, ok in zip(items, checked.allowed, strict=True) if ok]
    if top_k is not None:
        kept = kept[:top_k]
    capped = [
        item["campaign_id"]
        for item, ok, why in zip(items, checked.allowed, checked.reasons, strict=True)
        if not ok and why is not None
    ]
    result["campaigns"] = kept
    result["caps"] = {"status": checked.status, "capped": capped, "committed": commit}
    if not kept and items and "reason" not in result:
        result["reason"] = CAPS_UNAVAILABLE if checked.status == f"failed_{CLOSED}" else ALL_CAPPED
