"""docker-compose.yml and deploy/nginx.conf fit the image: ports, bundle mount, keys, replicas."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.infra.dockerfile import env_defaults, parse_dockerfile

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
SERVICES = COMPOSE["services"]
_, STAGES = parse_dockerfile(ROOT / "Dockerfile")
IMAGE_ENV = {k: v for stage in STAGES for k, v in env_defaults(stage).items()}
PORT = IMAGE_ENV["BIND"].rsplit(":", 1)[1]


def _api_services() -> list[dict]:
    """The services built from this repository's Dockerfile."""
    return [s for s in SERVICES.values() if "build" in s]


def test_two_api_replicas_and_redis():
    """At least two API instances (replicas or services) and a Redis they point at."""
    apis = _api_services()
    instances = sum(s.get("deploy", {}).get("replicas", 1) for s in apis)
    assert instances >= 2
    redis_service = next(name for name, s in SERVICES.items() if "redis" in s.get("image", ""))
    for api in apis:
        assert api["environment"]["REDIS_URL"].startswith(f"redis://{redis_service}:")


def test_bundle_is_mounted_read_only_where_the_image_looks():
    """The bundle volume lands on the image's MODEL_ROOT, read-only."""
    for api in _api_services():
        mounts = [v for v in api["volumes"] if v.split(":")[1] == IMAGE_ENV["MODEL_ROOT"]]
        assert mounts and all(v.endswith(":ro") for v in mounts), api["volumes"]


def test_keys_come_from_the_host_environment():
    """Every key-like variable is a ${...} reference, never a literal."""
    for api in _api_services():
        for name, value in api["environment"].items():
            if re.search(r"KEY|SECRET|TOKEN|PASSWORD", name):
                assert re.fullmatch(r"\$\{[A-Z_]+(:?[-?][^}]*)?\}", str(value)), (name, value)


def test_proxy_routes_to_the_api_port_and_publishes_only_loopback():
    """nginx's upstream names the API service on the port the image exposes."""
    proxy = next(s for s in SERVICES.values() if "nginx" in s.get("image", ""))
    conf_mount = next(v for v in proxy["volumes"] if v.endswith("nginx.conf:ro"))
    conf = (ROOT / conf_mount.split(":")[0]).read_text(encoding="utf-8")
    api_names = [name for name, s in SERVICES.items() if "build" in s]
    servers = re.findall(r"^\s*server\s+([\w.-]+):(\d+)", conf, flags=re.MULTILINE)
    assert servers and all(host in api_names and port == PORT for host, port in servers)
    assert "proxy_pass http://" in conf
    for published in proxy.get("ports", []):
        assert str(published).startswith("127.0.0.1:"), published
