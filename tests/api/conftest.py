"""API fixtures: apps built by the factory over the tiny bundle, their clients and keys."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from api import create_app

SCORING_KEY = "test-scoring-key"
ADMIN_KEY = "test-admin-key"
SCORING = {"X-API-Key": SCORING_KEY}
ADMIN = {"X-API-Key": ADMIN_KEY}


@pytest.fixture
def make_app(tiny_bundle_root) -> Callable[..., Any]:
    """Build an app over the tiny bundle; keyword arguments override settings by name.

    Every setting that could leak in from the environment is pinned (no Redis, no marker).
    """

    def build(**overrides: Any):
        config = {
            "MODEL_ROOT": str(tiny_bundle_root),
            "MODEL_VERSION": "",
            "BUNDLE_HMAC_KEY": "",
            "API_KEYS": SCORING_KEY,
            "ADMIN_API_KEYS": ADMIN_KEY,
            "REDIS_URL": "",
            "RELOAD_MARKER": "",
            "WORKER_ROSTER": "",
            "PROMETHEUS_MULTIPROC_DIR": "",
            "BENCH_FLOOR": "0",
            **overrides,
        }
        app = create_app(config)
        app.testing = True
        return app

    return build


@pytest.fixture
def app(make_app):
    """The service over the tiny bundle, in-process cache only."""
    return make_app()


@pytest.fixture
def client(app):
    """Flask test client of :func:`app`."""
    return app.test_client()


@pytest.fixture
def services(app):
    """The app's services (settings, cache, model, metrics)."""
    from api.extensions import get_services

    return get_services(app)


@pytest.fixture
def read_metric() -> Callable[..., float]:
    """``read_metric(app, name, **labels)``: current value of one sample (0.0 when absent)."""
    from api.extensions import get_services

    def read(app, name: str, **labels: str) -> float:
        metrics = get_services(app).metrics
        metrics.flush()  # what a scrape sees: /metrics writes the pending batch first
        value = metrics.registry.get_sample_value(name, labels)
        return value or 0.0

    return read


@pytest.fixture
def scoring_headers() -> dict[str, str]:
    """Headers carrying a valid scoring key."""
    return dict(SCORING)


@pytest.fixture
def admin_headers() -> dict[str, str]:
    """Headers carrying a valid admin key."""
    return dict(ADMIN)
