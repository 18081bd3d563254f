"""Per-request counts are batched in the process (api/metrics.py) and written the same as
prometheus_client's own updates would have written them."""

from __future__ import annotations

import random

from prometheus_client import generate_latest

from api import metrics as metrics_module
from api.metrics import LATENCY_BUCKETS, Metrics


def _samples(m: Metrics) -> list[str]:
    # *_created gauges hold each registry's creation time: they differ between two registries
    text = generate_latest(m.registry).decode()
    return [x for x in text.splitlines() if x.startswith("segsvc_") and "_created" not in x]


def test_a_batch_writes_what_direct_updates_write():
    rng = random.Random(3)
    batched, direct = Metrics(), Metrics()
    # latencies on every bucket bound, between bounds and beyond the last one
    seconds = [*LATENCY_BUCKETS, 0.0, 7.5, *(rng.uniform(0, 0.03) for _ in range(200))]
    for i, s in enumerate(seconds):
        endpoint, status = ("/recommend", 200) if i % 3 else ("/predict-segment", 422)
        batched.observe_request(endpoint, "POST", status, s)
        direct.requests.labels(endpoint, "POST", str(status)).inc()
        direct.latency.labels(endpoint, str(status)).observe(s)
        batched.count_customers("recommend", 2)
        direct.customers.labels("recommend").inc(2)
        batched.count_segments("v1", ["a", "b", "c"], [i % 3, 1])
        direct.segments.labels("v1", ["a", "b", "c"][i % 3]).inc()
        direct.segments.labels("v1", "b").inc()
    assert batched.pending
    assert _samples(batched) != _samples(direct)  # nothing written yet
    batched.flush()
    assert not batched.pending
    assert _samples(batched) == _samples(direct)


def test_exposition_and_flush_pending_write_the_batch():
    m = Metrics()
    m.observe_request("/recommend", "POST", 200, 0.001)
    assert 'segsvc_http_requests_total{endpoint="/recommend"' in m.exposition().decode()
    assert not m.pending
    m.count_customers("recommend", 5)
    assert metrics_module.any_pending()
    metrics_module.flush_pending()
    assert not metrics_module.any_pending()
    assert m.customers.labels("recommend")._value.get() == 5


def test_counts_are_written_at_least_once_a_second_under_load():
    m = Metrics()
    m.add(m.cache_hits.labels("memory"))
    assert m.pending
    m._next_flush = 0.0  # a second has passed
    m.add(m.cache_hits.labels("memory"))
    assert not m.pending
    assert m.cache_hits.labels("memory")._value.get() == 2
