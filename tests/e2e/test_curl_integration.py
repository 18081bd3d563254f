"""Runs tests/e2e/curl_integration.sh: gunicorn, Redis and curl end to end."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "e2e" / "curl_integration.sh"


def _redis_available() -> bool:
    """True when REDIS_URL answers or the script can start its own redis-server."""
    if shutil.which("redis-server"):
        return True
    url = os.environ.get("REDIS_URL")
    if not url:
        return False
    import redis  # the service's own client; imported late so collection stays cheap

    try:
        return bool(redis.Redis.from_url(url, socket_timeout=2).ping())
    except redis.RedisError:
        return False


@pytest.mark.e2e
@pytest.mark.slow
def test_curl_integration() -> None:
    """Every endpoint, bad inputs, auth, batch and a reload pass through a real gunicorn."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    if not _redis_available():
        pytest.skip(
            "no Redis: install redis-server (apt-get install redis-server) or set REDIS_URL"
        )
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run(
        ["bash", str(SCRIPT)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    summary = [line for line in proc.stdout.splitlines() if line.endswith(" failed")]
    # the failed checks first: the server log printed after them can be long
    failures = "\n".join(line for line in proc.stdout.splitlines() if "FAIL " in line)
    assert proc.returncode == 0, (
        f"curl integration failed ({summary[-1] if summary else 'no summary'}):\n{failures}\n"
        f"{proc.stdout[-6000:]}\n--- stderr ---\n{proc.stderr[-3000:]}"
    )
    assert summary and summary[-1].endswith(" 0 failed"), proc.stdout[-3000:]
