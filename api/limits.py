"""Rate limits in Redis: requests and customers per second per API key, failed keys per address.

Each limit is a GCRA bucket (the "generic cell rate algorithm": one timestamp per bucket, the
theoretical arrival time, rather than a counter per window) kept in Redis so that every worker
of every replica shares it, and updated by one Lua script so that check-and-charge is atomic.
The script reads Redis's own clock, so workers on other machines need no synchronised time.

- ``RATE_LIMIT_REQUESTS_PER_SECOND`` and ``RATE_LIMIT_CUSTOMERS_PER_SECOND`` per scoring key
  (a batch of 1,000 costs 1,000 customers; with ``explain`` each costs
  ``RATE_LIMIT_EXPLAIN_WEIGHT``). A bucket holds ``RATE_LIMIT_BURST_SECONDS`` of its rate; a
  request costing more than the whole bucket is admitted only when the bucket is full, and the
  key then waits until the cost is paid off. Nothing is charged for a refused request.
- ``AUTH_FAILURES_PER_MINUTE`` per client address: beyond it, that address is answered 429 for
  every request (a valid key included, so throttling tells a guesser nothing) until its bucket
  drains.

A refused request is answered 429 ``too_many_requests`` with ``Retry-After`` (whole seconds,
also in the envelope as ``retry_after``). Keys are stored by a hash of the API key, never the
key: ``{prefix}:rl:{req|cust}:{sha256(key)[:16]}`` and ``{prefix}:rl:fail:{address}``.

Redis down or slow: the limiter fails open (the request is served), counts it in
``segsvc_rate_limit_fail_open_total`` and skips Redis for a growing period (the same circuit
breaker as the profile cache). All limits are off by default.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from typing import Any

import redis

from api.cache import CircuitBreaker
from api.errors import TooManyRequests
from api.metrics import Metrics

log = logging.getLogger(__name__)

# KEYS: fail bucket, requests bucket, customers bucket
# ARGV: mode ("fail" | "admit"), then (interval_ms, capacity, cost) for each bucket;
#       interval 0 switches a bucket off.
# Returns {allowed 0|1, retry_after_ms, index of the bucket that refused (1-3) or 0}.
_SCRIPT = """
local t = redis.call('TIME')
local now = t[1] * 1000 + t[2] / 1000
local function tat_of(key)
  local v = tonumber(redis.call('GET', key))
  if v == nil or v < now then return now end
  return v
end
local function wait_for(i)
  local interval = tonumber(ARGV[2 + (i - 1) * 3])
  if interval <= 0 then return 0 end
  local capacity = tonumber(ARGV[3 + (i - 1) * 3])
  local cost = math.min(tonumber(ARGV[4 + (i - 1) * 3]), capacity)
  local wait = (tat_of(KEYS[i]) - now) - (capacity - cost) * interval
  if wait > 0 then return wait end
  return 0
end
local function charge(i)
  local interval = tonumber(ARGV[2 + (i - 1) * 3])
  if interval <= 0 then return end
  local cost = tonumber(ARGV[4 + (i - 1) * 3])
  local tat = tat_of(KEYS[i]) + cost * interval
  redis.call('SET', KEYS[i], tostring(tat), 'PX', math.ceil(tat - now) + 1000)
end
if ARGV[1] == 'fail' then
  local wait = wait_for(1)
  if wait > 0 then return {0, math.ceil(wait), 1} end
  charge(1)
  return {1, 0, 0}
end
-- admit: an address that is being throttled for failed keys is refused whatever it sends
local blocked = wait_for(1)
if blocked > 0 then return {0, math.ceil(blocked), 1} end
local worst, which = 0, 0
for i = 2, 3 do
  local wait = wait_for(i)
  if wait > worst then worst, which = wait, i end
end
if worst > 0 then return {0, math.ceil(worst), which} end
charge(2)
charge(3)
return {1, 0, 0}
"""

_LIMIT_NAMES = {1: "auth_failures", 2: "requests", 3: "customers"}


@dataclass(frozen=True)
class Limits:
    """The configured limits (0 switches one off)."""

    requests_per_second: float = 0.0
    customers_per_second: float = 0.0
    burst_seconds: float = 1.0
    explain_weight: float = 1.5
    auth_failures_per_minute: float = 0.0

    @property
    def any(self) -> bool:
        """True when at least one limit is on."""
        return bool(
            self.requests_per_second or self.customers_per_second or self.auth_failures_per_minute
        )


def _bucket(rate_per_second: float, burst_seconds: float, cost: float) -> list[Any]:
    """(interval ms per unit, capacity in units, cost) of one bucket; interval 0 = off."""
    if rate_per_second <= 0:
        return [0, 0, 0]
    return [1000.0 / rate_per_second, max(1.0, rate_per_second * burst_seconds), cost]


def request_cost(body: Any, explain_weight: float) -> float:
    """Customers a parsed request body asks to score (a batch counts its items, ``explain`` more).

    Counted from the raw body, before validation: a batch of invalid items still costs.
    """
    if isinstance(body, dict) and isinstance(body.get("customers"), list):
        n = len(body["customers"])
    else:
        n = 1
    explain = isinstance(body, dict) and body.get("explain") is True
    return n * (explain_weight if explain else 1.0)


class RateLimiter:
    """Check-and-charge of the configured limits against Redis (off without limits)."""

    def __init__(
        self,
        client: Any | None,
        metrics: Metrics,
        limits: Limits,
        *,
        prefix: str = "segsvc",
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.client = client
        self.metrics = metrics
        self.limits = limits
        self.prefix = prefix
        self.breaker = breaker or CircuitBreaker()
        self.enabled = limits.any and client is not None
        self._script = client.register_script(_SCRIPT) if self.enabled else None

    def _key(self, kind: str, name: str) -> str:
        return f"{self.prefix}:rl:{kind}:{name}"

    def admit(self, api_key: str, address: str | None, body: Any) -> None:
        """Charge one request by ``api_key`` from ``address``; raise TooManyRequests if over."""
        if not self.enabled:
            return
        lim = self.limits
        digest = hashlib.sha256(api_key.encode("utf-8", "surrogateescape")).hexdigest()[:16]
        customers = request_cost(body, lim.explain_weight)
        self._run(
            "admit",
            address,
            [
                self._key("req", digest),
                self._key("cust", digest),
            ],
            _bucket(lim.requests_per_second, lim.burst_seconds, 1.0)
            + _bucket(lim.customers_per_second, lim.burst_seconds, customers),
        )

    def failed_auth(self, address: str | None) -> None:
        """Count a failed key from ``address``; raise TooManyRequests once it is over its limit."""
        if not self.enabled or not self.limits.auth_failures_per_minute:
            return
        self._run("fail", address, [], [])

    def _run(self, mode: str, address: str | None, keys: list[str], args: list[Any]) -> None:
        lim = self.limits
        fail_key = self._key("fail", address or "unknown")
        # a failed-key budget of N per minute, allowing a burst of N
        per_second = lim.auth_failures_per_minute / 60.0
        fail = _bucket(per_second, 60.0, 1.0)
        if not self.breaker.allows():
            self.metrics.rate_limit_fail_open.inc()
            return
        try:
            allowed, wait_ms, which = self._script(
                keys=[fail_key, *keys], args=[mode, *fail, *args]
            )
        except redis.RedisError:
            self.metrics.redis_errors.labels("rate_limit").inc()
            self.metrics.rate_limit_fail_open.inc()
            self.breaker.failure()
            return
        self.breaker.success()
        if allowed:
            return
        name = _LIMIT_NAMES.get(int(which), "requests")
        self.metrics.rate_limited.labels(name).inc()
        retry_after = max(1, math.ceil(int(wait_ms) / 1000))
        if name == "auth_failures":
            message = "too many requests with a wrong API key from this address"
        else:
            message = f"rate limit on {name} per second for this API key"
        raise TooManyRequests(f"{message}; retry after {retry_after} s", retry_after=retry_after)
