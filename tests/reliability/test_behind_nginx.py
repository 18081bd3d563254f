"""The service behind nginx (deploy/nginx-loopback.conf), as docker-compose.yml deploys it.

nginx is a real one on a free loopback port (scripts/nginx.sh installs it for `make test`),
started and stopped by pid around a real gunicorn. What a proxy changes: it buffers slow
clients itself, and it keeps connections to the workers open, so a worker that leaves must not
turn a request on one of them into a 502.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bench.reliability import scenarios

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
if NGINX is None:  # pragma: no cover - make test installs it (scripts/nginx.sh)
    pytest.fail("nginx is not installed: run scripts/nginx.sh's nginx_ensure (make test does)")


def _failed(result: dict) -> list[str]:
    return [name for name, ok in result["checks"].items() if not ok]


def test_nginx_in_front_shields_even_plain_gthread_from_slow_clients(tiny_bundle_root):
    """200 slowloris connections to nginx: gunicorn's own gthread worker (which alone answers
    nothing, RELIABILITY.md) keeps answering, because nginx reads requests whole first."""
    result = scenarios.slow_clients(
        tiny_bundle_root, slow=200, seconds=6, nginx=True, args=("--worker-class", "gthread")
    )
    assert not _failed(result), result
    assert result["ok"] > 100, result


def test_recycling_behind_nginx_turns_no_request_into_a_502(tiny_bundle_root):
    """One worker recycled twice under 8 clients through nginx's kept-alive upstream
    connections: every request answered 2xx, none lost."""
    result = scenarios.recycling(
        tiny_bundle_root, recycles=2, max_requests=300, workers=1, clients=8, nginx=True
    )
    assert result["sent"] > 600, result
    assert not _failed(result), result
