"""Profile cache: cache-aside in a real Redis with TTL, memo in front, graceful when Redis is down."""

from __future__ import annotations

import socket

import orjson
import pytest
import redis

from api.cache import CircuitBreaker, ProfileCache
from api.metrics import Metrics


@pytest.fixture
def redis_client(redis_url):
    """A client of the test Redis; skips when none answers."""
    client = redis.Redis.from_url(redis_url, socket_timeout=1)
    try:
        client.ping()
    except redis.RedisError:
        pytest.skip(f"no Redis at {redis_url}")
    yield client
    client.close()


@pytest.fixture
def closed_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_miss_writes_back_with_ttl_then_hit(
    make_app, redis_url, redis_prefix, redis_client, scoring_headers, demo_request, read_metric
):
    settings = {
        "REDIS_URL": redis_url,
        "CACHE_PREFIX": redis_prefix,
        "CACHE_TTL_SECONDS": 120,
        "PROFILE_MEMO_SECONDS": 0,
    }
    app = make_app(**settings)
    body = (
        app.test_client()
        .post("/predict-segment", json=demo_request, headers=scoring_headers)
        .get_json()
    )
    key = f"{redis_prefix}:profile:{body['model_version']}:{body['segment_id']}"
    assert read_metric(app, "segsvc_profile_cache_misses_total", layer="redis") == 1
    stored = orjson.loads(redis_client.get(key))
    assert stored["segment_id"] == body["segment_id"]
    assert stored["mean"] == body["segment_stats"]["mean"]
    assert 0 < redis_client.ttl(key) <= 120

    # Another worker (a second app) finds the profile in Redis.
    other = make_app(**settings)
    again = (
        other.test_client()
        .post("/predict-segment", json=demo_request, headers=scoring_headers)
        .get_json()
    )
    assert again["segment_stats"] == body["segment_stats"]
    assert read_metric(other, "segsvc_profile_cache_hits_total", layer="redis") == 1
    assert read_metric(other, "segsvc_profile_cache_misses_total", layer="redis") == 0


def test_redis_value_is_what_is_served(
    make_app, redis_url, redis_prefix, redis_client, scoring_headers, demo_request
):
    # Cache-aside means a cached profile is served as it is: prove it by planting one.
    app = make_app(REDIS_URL=redis_url, CACHE_PREFIX=redis_prefix, PROFILE_MEMO_SECONDS=0)
    client = app.test_client()
    body = client.post("/predict-segment", json=demo_request, headers=scoring_headers).get_json()
    key = f"{redis_prefix}:profile:{body['model_version']}:{body['segment_id']}"
    planted = {**orjson.loads(redis_client.get(key)), "size": 123456789}
    redis_client.set(key, orjson.dumps(planted), ex=60)
    body = client.post("/predict-segment", json=demo_request, headers=scoring_headers).get_json()
    assert body["segment_stats"]["size"] == 123456789
    # A corrupt value is a miss and gets replaced.
    redis_client.set(key, b"not json", ex=60)
    body = client.post("/predict-segment", json=demo_request, headers=scoring_headers).get_json()
    assert body["segment_stats"]["size"] != 123456789
    assert orjson.loads(redis_client.get(key))["segment_id"] == body["segment_id"]


def test_memo_answers_repeated_lookups_without_redis(
    make_app, redis_url, redis_prefix, scoring_headers, demo_request, read_metric
):
    app = make_app(REDIS_URL=redis_url, CACHE_PREFIX=redis_prefix, PROFILE_MEMO_SECONDS=30)
    client = app.test_client()
    for _ in range(5):
        client.post("/predict-segment", json=demo_request, headers=scoring_headers)
    assert read_metric(app, "segsvc_profile_cache_misses_total", layer="redis") == 1
    assert read_metric(app, "segsvc_profile_cache_hits_total", layer="memory") == 4


def test_without_redis_url_the_cache_is_in_process(
    client, app, scoring_headers, demo_request, read_metric
):
    for _ in range(3):
        assert (
            client.post("/predict-segment", json=demo_request, headers=scoring_headers).status_code
            == 200
        )
    assert read_metric(app, "segsvc_profile_cache_hits_total", layer="memory") == 2
    assert client.get("/readyz").get_json()["redis"] == "disabled"


def test_redis_down_still_answers_and_skips_redis(
    make_app, closed_port, scoring_headers, demo_request, read_metric
):
    app = make_app(
        REDIS_URL=f"redis://127.0.0.1:{closed_port}/0", PROFILE_MEMO_SECONDS=0, REDIS_TIMEOUT_MS=50
    )
    client = app.test_client()
    reference = (
        make_app()
        .test_client()
        .post("/recommend", json=demo_request, headers=scoring_headers)
        .get_json()
    )
    for _ in range(20):
        r = client.post("/recommend", json=demo_request, headers=scoring_headers)
        assert r.status_code == 200
        assert r.get_json() == reference
    # One failed call opened the breaker; the other 19 requests never waited on Redis.
    errors = sum(
        read_metric(app, "segsvc_redis_errors_total", operation=op) for op in ("get", "set", "ping")
    )
    assert errors == 1
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json()["redis"] == "down"


class FlakyRedis:
    """A Redis double that fails while ``down`` is True (injected through the factory)."""

    def __init__(self) -> None:
        self.down = True
        self.data: dict[str, bytes] = {}
        self.calls = 0

    def _check(self) -> None:
        self.calls += 1
        if self.down:
            raise redis.ConnectionError("connection refused")

    def get(self, key):
        self._check()
        return self.data.get(key)

    def set(self, key, value, ex=None):
        self._check()
        self.data[key] = value

    def ping(self):
        self._check()
        return True


def test_breaker_reconnects_by_itself_after_the_backoff():
    now = [0.0]
    clock = lambda: now[0]  # noqa: E731 -- a settable clock
    flaky = FlakyRedis()
    cache = ProfileCache(
        flaky,
        Metrics(),
        memo_seconds=0,
        breaker=CircuitBreaker(initial=1.0, maximum=4.0, clock=clock),
        clock=clock,
    )
    profile = {"segment_id": 0, "size": 1}
    assert cache.get("v", 0, lambda: profile) == profile
    assert flaky.calls == 1  # the get failed; the write-back was skipped
    for _ in range(10):
        cache.get("v", 0, lambda: profile)
    assert flaky.calls == 1  # breaker open: Redis skipped
    now[0] = 1.5
    cache.get("v", 0, lambda: profile)
    assert flaky.calls == 2  # probe after the backoff, failed again: backoff doubles to 2 s
    now[0] = 3.0
    cache.get("v", 0, lambda: profile)
    assert flaky.calls == 2
    flaky.down = False
    now[0] = 3.6
    cache.get("v", 0, lambda: profile)
    assert flaky.calls == 4  # get (miss) + set: reconnected
    assert flaky.data == {"segsvc:profile:v:0": orjson.dumps(profile)}
    assert cache.redis_state() == "ok"


def test_injected_client_is_used(make_app, scoring_headers, demo_request):
    flaky = FlakyRedis()
    flaky.down = False
    app = make_app(REDIS_CLIENT=flaky, PROFILE_MEMO_SECONDS=0)
    app.test_client().post("/predict-segment", json=demo_request, headers=scoring_headers)
    assert any(k.startswith("segsvc:profile:") for k in flaky.data)
