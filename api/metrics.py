"""Prometheus metrics of the service, correct across gunicorn workers (multiprocess mode).

When ``PROMETHEUS_MULTIPROC_DIR`` is set (gunicorn.conf.py requires it with several workers),
prometheus_client keeps every value in per-process files there and ``/metrics`` aggregates them;
gunicorn's ``child_exit`` hook marks a dead worker's files (see gunicorn.conf.py).

The per-request counts (requests and their latency, customers scored, segment assignments,
profile cache hits) are added up in the process and written to those files in batches
(:meth:`Metrics.flush`): each write-through update took a lock, a ``getpid`` system call and an
mmap write, several per request, which made the metrics one of the largest parts of the
service's own cost per request (bench/RESULTS.md). A batch is written when the worker has no
request waiting (``api/worker.py`` calls :func:`flush_pending` before it sleeps), at least once a
second while requests keep coming, before this process answers ``/metrics`` and when the worker
exits. So ``/metrics`` on any worker shows every request answered before the scrape whenever the
workers were idle for an instant, and at most one second's worth less under continuous load.
Rare events (Redis errors, rate limits, reloads) are written through as before.
"""

from __future__ import annotations

import threading
import time
import weakref
from bisect import bisect_left
from collections import Counter as Tally
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

#: request latency buckets, seconds: fine-grained below 10 ms where the service should live
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.02,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)


#: longest a per-request count waits in the process before it is written, seconds
FLUSH_SECONDS = 1.0
#: every Metrics of this process (flush_pending writes them all)
_LIVE: weakref.WeakSet[Metrics] = weakref.WeakSet()


def flush_pending() -> None:
    """Write every pending per-request count of this process (the worker calls this when idle)."""
    for metrics in list(_LIVE):
        if metrics.pending:
            metrics.flush()


def any_pending() -> bool:
    """True when some Metrics of this process holds counts not yet written."""
    return any(m.pending for m in list(_LIVE))


class Metrics:
    """The service's metrics in one registry per app (tests build many apps in one process)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, multiprocess_dir: Path | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "segsvc_http_requests_total",
            "HTTP requests answered, by endpoint, method and status",
            ["endpoint", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "segsvc_http_request_duration_seconds",
            "Time to answer a request inside the app, by endpoint and status",
            ["endpoint", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.customers = Counter(
            "segsvc_customers_scored_total",
            "Customers scored (a batch counts each of its valid items), by endpoint",
            ["endpoint"],
            registry=r,
        )
        self.segments = Counter(
            "segsvc_segment_assignments_total",
            "Customers assigned to each segment, by model version",
            ["model_version", "segment"],
            registry=r,
        )
        self.cache_hits = Counter(
            "segsvc_profile_cache_hits_total",
            "Profile look-ups answered from a cache layer (memory or redis)",
            ["layer"],
            registry=r,
        )
        self.cache_misses = Counter(
            "segsvc_profile_cache_misses_total",
            "Profile look-ups a cache layer could not answer (memory or redis)",
            ["layer"],
            registry=r,
        )
        self.redis_errors = Counter(
            "segsvc_redis_errors_total",
            "Redis calls that failed or timed out, by operation",
            ["operation"],
            registry=r,
        )
        self.feature_lookups = Counter(
            "segsvc_feature_lookups_total",
            "Customers looked up by id in the feature store, by result "
            "(found, not_found, stale, unavailable)",
            ["result"],
            registry=r,
        )
        self.rate_limited = Counter(
            "segsvc_rate_limited_total",
            "Requests refused with 429, by limit (requests, customers, auth_failures)",
            ["limit"],
            registry=r,
        )
        self.rate_limit_fail_open = Counter(
            "segsvc_rate_limit_fail_open_total",
            "Requests served without a rate-limit check because Redis was down or slow",
            registry=r,
        )
        self.reloads = Counter(
            "segsvc_bundle_reloads_total",
            "Bundle loads after start-up, by result (loaded or rejected)",
            ["result"],
            registry=r,
        )
        self.bundle = Gauge(
            "segsvc_bundle_loaded",
            "1 for the model version a worker serves (one series per live worker)",
            ["model_version"],
            registry=r,
            multiprocess_mode="liveall",
        )
        self.caps_failures = Counter(
            "segsvc_frequency_caps_unavailable_total",
            "Requests whose frequency caps could not be checked, by how they failed "
            "(failed_open: offers let through; failed_closed: none)",
            ["status"],
            registry=r,
        )
        self.feedback_events = Counter(
            "segsvc_feedback_events_total",
            "Feedback events appended to the stream, by type",
            ["type"],
            registry=r,
        )
        self._request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self._customer_children: dict[str, Counter] = {}
        self._segment_children: dict[tuple[str, int], tuple[Counter, str]] = {}
        # Per-request counts not yet written: counter child -> amount; histogram child ->
        # [sum, count per bucket] (the last bucket is +Inf).
        self._lock = threading.Lock()
        self._counts: dict[Any, float] = {}
        self._observed: dict[Any, list] = {}
        self._bounds = LATENCY_BUCKETS
        self._next_flush = time.monotonic() + FLUSH_SECONDS
        #: True while counts wait to be written
        self.pending = False
        _LIVE.add(self)

    # ---- batched per-request counts ---------------------------------------------------------
    def add(self, child: Counter, amount: float = 1.0) -> None:
        """Add ``amount`` to a counter child (written with the next batch)."""
        with self._lock:
            counts = self._counts
            counts[child] = counts.get(child, 0.0) + amount
            self.pending = True
        if time.monotonic() >= self._next_flush:
            self.flush()

    def flush(self) -> None:
        """Write the pending counts to the registry (the multiprocess files)."""
        with self._lock:
            counts, observed = self._counts, self._observed
            self._counts, self._observed = {}, {}
            self.pending = False
            self._next_flush = time.monotonic() + FLUSH_SECONDS
            for child, amount in counts.items():
                child.inc(amount)
            for child, (total, buckets) in observed.items():
                # what Histogram.observe does per observation, once per batch
                child._sum.inc(total)  # prometheus_client 0.26 Histogram internals
                for i, n in enumerate(buckets):
                    if n:
                        child._buckets[i].inc(n)

    def count_caps_failure(self, status: str) -> None:
        """A request whose caps Redis could not check (failed_open or failed_closed)."""
        self.caps_failures.labels(status).inc()

    def count_feedback(self, types: list[str]) -> None:
        """Events appended to the feedback stream."""
        for t in types:
            self.feedback_events.labels(t).inc()

    def observe_request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request and its latency."""
        key = (endpoint, method, status)
        children = self._request_children.get(key)
        if children is None:
            # Label look-ups cost more than the increments: keep the children per label set.
            children = (
                self.requests.labels(endpoint, method, str(status)),
                self.latency.labels(endpoint, str(status)),
            )
            self._request_children[key] = children
        counter, histogram = children
        # Histogram buckets are "less than or equal": bisect_left finds the first bound >= it.
        bucket = bisect_left(self._bounds, seconds)
        with self._lock:
            counts = self._counts
            counts[counter] = counts.get(counter, 0.0) + 1.0
            entry = self._observed.get(histogram)
            if entry is None:
                entry = self._observed[histogram] = [0.0, [0] * (len(self._bounds) + 1)]
            entry[0] += seconds
            entry[1][bucket] += 1
            self.pending = True
        if time.monotonic() >= self._next_flush:
            self.flush()

    def count_customers(self, endpoint: str, n: int) -> None:
        """Add ``n`` scored customers for ``endpoint``."""
        child = self._customer_children.get(endpoint)
        if child is None:
            child = self._customer_children[endpoint] = self.customers.labels(endpoint)
        self.add(child, n)

    def count_segments(self, version: str, names: list[str], segment_ids: list[int]) -> None:
        """Add the segment assignments of one answer (one or many customers)."""
        if len(segment_ids) == 1:
            self.add(self._segment_child(version, names, segment_ids[0]))
            return
        # counted in C (collections.Counter): a loop here cost ~0.1 ms per 1,000 customers
        for s, c in Tally(segment_ids).items():
            self.add(self._segment_child(version, names, s), c)

    def _segment_child(self, version: str, names: list[str], segment_id: int) -> Counter:
        key = (version, segment_id)
        child = self._segment_children.get(key)
        if child is None:
            child = (self.segments.labels(version, names[segment_id]), version)
            self._segment_children[key] = child
        return child[0]

    def serving(self, version: str, previous: str | None) -> None:
        """Record that this worker now serves ``version`` (and no longer ``previous``)."""
        if previous is not None and previous != version:
            self.bundle.labels(previous).set(0)
        self.bundle.labels(version).set(1)

    def exposition(self) -> bytes:
        """The Prometheus text format: this process's registry, or all workers' files."""
        self.flush()
        if self.multiprocess_dir is not None:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=str(self.multiprocess_dir))
            return generate_latest(registry)
        return generate_latest(self.registry)
