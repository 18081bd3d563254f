"""Rate limits against the real Redis: per key (requests, customers), failed keys per address.

Two apps stand for two gunicorn workers sharing one Redis; threads send concurrently, so the
check-and-charge must be atomic for the counts to hold.
"""

from __future__ import annotations

import threading
import time

import pytest

from api.settings import Settings, SettingsError

KEY_A, KEY_B = "limit-key-a", "limit-key-b"


@pytest.fixture
def limited(make_app, redis_url, redis_prefix):
    """Build apps sharing one Redis prefix, with the given limits."""

    def build(**limits):
        return make_app(
            REDIS_URL=redis_url,
            CACHE_PREFIX=redis_prefix,
            API_KEYS=f"{KEY_A},{KEY_B}",
            **limits,
        )

    return build


def _post(client, body, key=KEY_A, path="/predict-segment", addr="10.0.0.1"):
    return client.post(
        path, json=body, headers={"X-API-Key": key}, environ_base={"REMOTE_ADDR": addr}
    )


def test_requests_per_second_hold_across_workers_and_threads(limited, demo_request):
    workers = [limited(RATE_LIMIT_REQUESTS_PER_SECOND=5), limited(RATE_LIMIT_REQUESTS_PER_SECOND=5)]
    statuses: list[int] = []
    answers = []
    lock = threading.Lock()

    def client(app):
        c = app.test_client()
        for _ in range(6):
            r = _post(c, demo_request)
            with lock:
                statuses.append(r.status_code)
                answers.append(r)

    start = time.monotonic()
    threads = [threading.Thread(target=client, args=(workers[i % 2],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    assert set(statuses) <= {200, 429}
    # a bucket of 5 plus what refilled meanwhile (5/s): never the 48 sent
    assert 5 <= statuses.count(200) <= 5 + int(elapsed * 5) + 1
    refused = next(r for r in answers if r.status_code == 429)
    error = refused.get_json()["error"]
    assert error["code"] == "too_many_requests" and error["retry_after"] >= 1
    assert refused.headers["Retry-After"] == str(error["retry_after"])
    # the other key has its own bucket
    assert _post(workers[0].test_client(), demo_request, key=KEY_B).status_code == 200
    metrics = workers[0].test_client().get("/metrics").get_data(as_text=True)
    assert 'segsvc_rate_limited_total{limit="requests"}' in metrics


def test_customers_per_second_count_batch_items_and_explain(limited, demo_request):
    # buckets that refill slowly, so a slow first request (numba compiling explain's walk, a
    # loaded machine) cannot refill them between the requests the test counts on
    client = limited(RATE_LIMIT_CUSTOMERS_PER_SECOND=1, RATE_LIMIT_BURST_SECONDS=100).test_client()
    batch = {"customers": [demo_request] * 60}
    assert _post(client, batch).status_code == 200
    r = _post(client, batch)  # 60 more than the 40 left
    assert r.status_code == 429 and "customers" in r.get_json()["error"]["message"]
    # a single customer still fits; with explain it weighs RATE_LIMIT_EXPLAIN_WEIGHT (4 here)
    client2 = limited(
        RATE_LIMIT_CUSTOMERS_PER_SECOND=0.1,
        RATE_LIMIT_BURST_SECONDS=100,
        RATE_LIMIT_EXPLAIN_WEIGHT=4,
    ).test_client()
    explained = {**demo_request, "explain": True}
    codes = [_post(client2, explained, key=KEY_B, path="/recommend").status_code for _ in range(3)]
    assert codes[:2] == [200, 200] and codes[2] == 429  # 4 + 4 of 10, then 4 more is over


def test_a_batch_bigger_than_the_bucket_passes_when_the_bucket_is_full(limited, demo_request):
    client = limited(RATE_LIMIT_CUSTOMERS_PER_SECOND=20).test_client()
    assert _post(client, {"customers": [demo_request] * 50}).status_code == 200
    r = _post(client, demo_request)
    assert r.status_code == 429 and r.get_json()["error"]["retry_after"] >= 2


def test_wrong_keys_are_throttled_per_address(limited, demo_request):
    client = limited(AUTH_FAILURES_PER_MINUTE=3).test_client()
    codes = [_post(client, demo_request, key="guess").status_code for _ in range(4)]
    assert codes == [401, 401, 401, 429]
    # from that address even a valid key is refused now; another address is unaffected
    assert _post(client, demo_request).status_code == 429
    assert _post(client, demo_request, addr="10.0.0.2").status_code == 200
    r = client.post(
        "/admin/reload",
        json={},
        headers={"X-API-Key": "guess"},
        environ_base={"REMOTE_ADDR": "10.0.0.1"},
    )
    assert r.status_code == 429


def _guess(client, addr, forwarded):
    return client.post(
        "/predict-segment",
        json={},
        headers={"X-API-Key": "guess", "X-Forwarded-For": forwarded},
        environ_base={"REMOTE_ADDR": addr},
    ).status_code


def test_behind_a_trusted_proxy_wrong_keys_are_throttled_per_client(limited):
    """TRUSTED_PROXY_HOPS=1: the address the proxy appended counts, not the proxy's own."""
    client = limited(AUTH_FAILURES_PER_MINUTE=2, TRUSTED_PROXY_HOPS=1).test_client()
    proxy = "10.9.9.9"
    assert [_guess(client, proxy, "203.0.113.7") for _ in range(3)] == [401, 401, 429]
    # another client behind the same proxy is not punished for the first one's guesses
    assert _guess(client, proxy, "203.0.113.8") == 401
    # what a client writes before the proxy's entry is its own choice and never trusted
    assert _guess(client, proxy, "198.51.100.1, 203.0.113.7") == 429


def test_without_trusted_proxies_x_forwarded_for_is_ignored(limited):
    """Off by default: a client cannot pick a new address per request to dodge the throttle."""
    client = limited(AUTH_FAILURES_PER_MINUTE=2).test_client()
    codes = [_guess(client, "10.0.0.5", f"203.0.113.{i}") for i in range(3)]
    assert codes == [401, 401, 429]


def test_limits_fail_open_when_redis_is_down(make_app, demo_request):
    app = make_app(
        REDIS_URL="redis://127.0.0.1:1/0",  # nothing listens on port 1
        RATE_LIMIT_REQUESTS_PER_SECOND=1,
        API_KEYS=KEY_A,
    )
    client = app.test_client()
    assert [_post(client, demo_request).status_code for _ in range(3)] == [200, 200, 200]
    metrics = client.get("/metrics").get_data(as_text=True)
    line = next(x for x in metrics.splitlines() if x.startswith("segsvc_rate_limit_fail_open"))
    assert float(line.split()[-1]) >= 3


def test_trusted_proxy_hops_are_checked():
    with pytest.raises(SettingsError, match="TRUSTED_PROXY_HOPS"):
        Settings.load({"TRUSTED_PROXY_HOPS": "-1"}, environ={})
    assert Settings.load({}, environ={}).TRUSTED_PROXY_HOPS == 0


def test_limits_need_redis():
    with pytest.raises(SettingsError, match=r"RATE_LIMIT_REQUESTS_PER_SECOND.*REDIS_URL"):
        Settings.load({"RATE_LIMIT_REQUESTS_PER_SECOND": "5"}, environ={})
