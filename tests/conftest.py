"""Shared fixtures: a real Redis connection, tiny real bundles, a valid demo request body."""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest

# OpenMP threads that spin while waiting (K-Means, LightGBM) slow a busy 2-core machine 10-50x.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bundle_builder import build_bundle, synthetic_customers  # noqa: E402
from rfm_demo import rfm_demo_config, write_rfm_demo  # noqa: E402

#: real public datasets (see ../shared/data/README.md); absent in a user's fresh clone
SHARED_DATA = Path(os.environ.get("SHARED_DATA_DIR", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real-data folder; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real datasets not available ({SHARED_DATA} is absent)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of the test Redis server (the test command starts one when none answers)."""
    return os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def redis_prefix(redis_url):
    """A key prefix unique to one test; its keys (and only those) are deleted afterwards."""
    import redis

    prefix = f"segsvc-test-{uuid.uuid4().hex[:12]}"
    yield prefix
    client = redis.Redis.from_url(redis_url, socket_timeout=2)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=500))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture(scope="session")
def tiny_bundle_root(tmp_path_factory) -> Path:
    """A bundle root holding one small verified bundle (3 segments, 4 campaigns), `current` set.

    Its response model is compiled (as training does), so the API tests serve compiled trees;
    ``fresh_bundle_root`` has none, so LightGBM's C API serves there.
    """
    root = tmp_path_factory.mktemp("bundles")
    build_bundle(root, n=3000, seed=0, version="v1-tiny", compiled=True)
    return root


@pytest.fixture(scope="session")
def tiny_bundle(tiny_bundle_root):
    """The tiny bundle, loaded and verified."""
    from scoring.bundle import load_current

    return load_current(tiny_bundle_root)


@pytest.fixture
def fresh_bundle_root(tmp_path) -> Path:
    """A writable bundle root with one bundle, for tests that tamper with or add bundles."""
    build_bundle(tmp_path, n=1500, seed=1, version="v1")
    return tmp_path


@pytest.fixture(scope="session")
def demo_customers():
    """500 synthetic demo-contract customers (pandas frame) and their planted labels."""
    return synthetic_customers(500, seed=99)


@pytest.fixture
def demo_request() -> dict:
    """A valid /predict-segment body in the demo contract."""
    return {
        "customer_id": "c-42",
        "total_spend": 1250.0,
        "order_count": 14,
        "days_since_last_purchase": 12,
        "unique_products": 9,
        "discount_usage": 0.2,
        "return_rate": 0.05,
        "mobile_usage": 0.8,
    }


@pytest.fixture(scope="session")
def mixture_bundle(tmp_path_factory) -> tuple[Path, Path]:
    """(bundle root, data folder): a bundle serving the Gaussian mixture, 2,000 demo customers."""
    import dataclasses

    from training.config import load_config
    from training.generate import write_demo
    from training.pipeline import train

    data = tmp_path_factory.mktemp("mixture-demo")
    write_demo(data, n_customers=2000, seed=6)
    root = tmp_path_factory.mktemp("mixture-bundles")
    config = load_config(
        ROOT / "examples" / "demo.toml", {"data_dir": str(data), "output": str(root)}
    )
    config = dataclasses.replace(
        config,
        segmentation=dataclasses.replace(config.segmentation, model="gaussian_mixture"),
        output=dataclasses.replace(config.output, report=False),
    )
    train(config, environ={})
    return root, data


@pytest.fixture(scope="session")
def rfm_bundle(tmp_path_factory) -> tuple[Path, Path]:
    """(bundle root, data folder): the demo config trained with ``segmentation.method = "rfm"``,
    CLV and ``clv.weight_gains`` on, 2,000 demo customers with the four CLV features."""
    from training.pipeline import train

    data = tmp_path_factory.mktemp("rfm-demo")
    write_rfm_demo(data)
    root = tmp_path_factory.mktemp("rfm-bundles")
    config = rfm_demo_config(data, root)
    train(config, environ={})
    return root, data
