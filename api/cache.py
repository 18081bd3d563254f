"""Segment-profile cache: an in-process memo in front of Redis (cache-aside, TTL), bundle behind.

A look-up tries, in order: this worker's memo (short-lived), Redis under
``{prefix}:profile:{model_version}:{segment_id}``, then the loaded bundle, writing the profile
back to Redis with the TTL. Redis failures never fail a request: a failed or slow call (short
socket timeouts) opens a circuit breaker, and while it is open Redis is skipped entirely, so a
dead Redis costs at most one timeout per back-off period (1 s doubling to 30 s); the first call
after the period probes Redis again, which is how the service reconnects by itself. With no
Redis configured, the memo alone is the cache and keeps profiles for the TTL.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from api.metrics import Metrics

log = logging.getLogger(__name__)

OK, DOWN, DISABLED = "ok", "down", "disabled"


def redis_client(url: str, timeout_ms: int) -> redis.Redis:
    """A Redis client with short timeouts and no retries (the breaker decides when to retry).

    The connection pool connects lazily, so building the client never blocks start-up.
    """
    seconds = timeout_ms / 1000.0
    return redis.Redis.from_url(
        url,
        socket_timeout=seconds,
        socket_connect_timeout=seconds,
        retry=Retry(NoBackoff(), 0),
        retry_on_timeout=False,
        health_check_interval=0,
    )


class CircuitBreaker:
    """Skips a dependency for a growing period after each failure; one success resets it."""

    def __init__(
        self,
        *,
        initial: float = 1.0,
        maximum: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        consequence: str = "serving profiles from memory",
    ) -> None:
        self.initial = initial
        self.consequence = consequence
        self.maximum = maximum
        self.clock = clock
        self._open_until = 0.0
        self._backoff = initial
        self._failed = False

    def allows(self) -> bool:
        """True when a call may be tried (closed, or the back-off period is over)."""
        return not self._failed or self.clock() >= self._open_until

    @property
    def is_open(self) -> bool:
        """True while calls are being skipped."""
        return self._failed and self.clock() < self._open_until

    def retry_after(self) -> int:
        """Whole seconds until the next call will be tried (at least 1): a ``Retry-After``."""
        return max(1, math.ceil(self._open_until - self.clock()))

    def failure(self) -> None:
        """Record a failed call: skip the dependency for the current back-off, then double it."""
        if not self._failed:
            log.warning("redis unavailable: %s, retrying in %.0fs", self.consequence, self._backoff)
        self._failed = True
        self._open_until = self.clock() + self._backoff
        self._backoff = min(self._backoff * 2, self.maximum)

    def success(self) -> None:
        """Record a successful call: back to normal."""
        if self._failed:
            log.info("redis reachable again")
            self._failed = False
            self._backoff = self.initial


class ProfileCache:
    """Cache-aside look-up of segment profiles by (model version, segment id)."""

    def __init__(
        self,
        client: Any | None,
        metrics: Metrics,
        *,
        prefix: str = "segsvc",
        ttl_seconds: int = 300,
        memo_seconds: float = 10.0,
        breaker: CircuitBreaker | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.metrics = metrics
        self.prefix = prefix
        self.ttl_seconds = ttl_seconds
        # Without Redis the memo is the cache, so it keeps entries for the full TTL.
        self.memo_seconds = memo_seconds if client is not None else float(ttl_seconds)
        self.breaker = breaker or CircuitBreaker(clock=clock)
        self.clock = clock
        self._memo: dict[tuple[str, int], tuple[float, dict[str, Any]]] = {}
        self._lock = threading.Lock()
        c = metrics
        self._hit = {"memory": c.cache_hits.labels("memory"), "redis": c.cache_hits.labels("redis")}
        self._miss = {
            "memory": c.cache_misses.labels("memory"),
            "redis": c.cache_misses.labels("redis"),
        }

    def key(self, version: str, segment_id: int) -> str:
        """The Redis key of one profile."""
        return f"{self.prefix}:profile:{version}:{segment_id}"

    def get(self, version: str, segment_id: int, load: Callable[[], dict[str, Any]]) -> dict:
        """The profile, from the memo, Redis or ``load()`` (the bundle), filling the caches."""
        now = self.clock()
        entry = self._memo.get((version, segment_id))
        if entry is not None and entry[0] > now:
            self.metrics.add(self._hit["memory"])
            return entry[1]
        self.metrics.add(self._miss["memory"])
        profile = self._from_redis(version, segment_id)
        if profile is None:
            profile = load()
            self._to_redis(version, segment_id, profile)
        if self.memo_seconds > 0:
            with self._lock:
                if len(self._memo) > 4096:
                    # Old model versions leave entries behind; drop everything rather than scan.
                    self._memo.clear()
                self._memo[(version, segment_id)] = (now + self.memo_seconds, profile)
        return profile

    def _from_redis(self, version: str, segment_id: int) -> dict[str, Any] | None:
        if self.client is None or not self.breaker.allows():
            return None
        try:
            raw = self.client.get(self.key(version, segment_id))
        except redis.RedisError:
            self._failed("get")
            return None
        self.breaker.success()
        if raw is not None:
            try:
                profile = orjson.loads(raw)
            except orjson.JSONDecodeError:
                profile = None
            # A foreign or corrupt value is a miss; the write-back replaces it.
            if isinstance(profile, dict) and profile.get("segment_id") == segment_id:
                self.metrics.add(self._hit["redis"])
                return profile
        self.metrics.add(self._miss["redis"])
        return None

    def _to_redis(self, version: str, segment_id: int, profile: dict[str, Any]) -> None:
        if self.client is None or not self.breaker.allows():
            return
        try:
            self.client.set(
                self.key(version, segment_id), orjson.dumps(profile), ex=self.ttl_seconds
            )
        except redis.RedisError:
            self._failed("set")

    def _failed(self, operation: str) -> None:
        self.metrics.redis_errors.labels(operation).inc()
        self.breaker.failure()

    def redis_state(self) -> str:
        """``disabled`` without Redis, ``down`` while the breaker is open or a ping fails."""
        if self.client is None:
            return DISABLED
        if not self.breaker.allows():
            return DOWN
        try:
            self.client.ping()
        except redis.RedisError:
            self._failed("ping")
            return DOWN
        self.breaker.success()
        return OK

    def clear_memo(self) -> None:
        """Forget the in-process entries (Redis keeps its own, keyed by version)."""
        with self._lock:
            self._memo.clear()
