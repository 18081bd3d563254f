"""The outages of issue 11, replayed against a real 2-worker gunicorn on loopback.

Each test runs the short version of a scenario from ``bench/reliability/scenarios.py`` (the
long versions write RELIABILITY.md) and asserts on what the scenario checked.
"""

from __future__ import annotations

import pytest

from bench.reliability import scenarios

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _failed(result: dict) -> list[str]:
    return [name for name, ok in result["checks"].items() if not ok]


def test_sighup_onto_bad_bundles_keeps_serving(tiny_bundle_root):
    """(2) SIGHUP onto a bad `current` is refused by a trial load; nobody stops serving."""
    result = scenarios.sighup_bad_current(
        tiny_bundle_root, kinds=("tampered_file", "library_mismatch", "unsigned")
    )
    assert not _failed(result), result


def test_recycling_never_leaves_no_worker(tiny_bundle_root):
    """(4) Workers past their budget retire one at a time, each after its replacement is ready."""
    result = scenarios.recycling(tiny_bundle_root, recycles=3, max_requests=150)
    assert not _failed(result), result


def test_a_single_worker_recycles_without_a_failed_or_lost_request(tiny_bundle_root):
    """(issue 12) One worker, 8 clients: its replacement is ready before it leaves, so no
    request is refused, reset, timed out or answered with an error through the recycles; with
    RECYCLE_AT_IDLE_PRIORITY each replacement builds its app at idle priority and then serves
    at normal priority."""
    result = scenarios.recycling(
        tiny_bundle_root, recycles=2, max_requests=300, workers=1, clients=8, idle_start=True
    )
    assert result["sent"] > 600, result  # the budget was really used up, twice
    assert not _failed(result), result


def test_reload_under_load_switches_every_worker_without_a_failure(tiny_bundle_root):
    result = scenarios.reload_under_load(tiny_bundle_root, clients=2)
    assert not _failed(result), result


def test_kill_9_of_a_worker_loses_only_what_it_had_in_hand(tiny_bundle_root):
    result = scenarios.kill_worker(tiny_bundle_root, clients=2)
    assert not _failed(result), result


def test_redis_killed_or_frozen_under_load_fails_nothing(tiny_bundle_root):
    """Our own redis-server (never the shared one) killed, then frozen, for a few seconds."""
    for result in scenarios.redis_faults(tiny_bundle_root, fault_seconds=3, clients=2):
        assert not _failed(result), result


def test_feedback_while_redis_is_frozen_loses_no_acknowledged_event(tiny_bundle_root):
    """Every 202 is in the stream after the thaw; every refusal is a 503 with Retry-After."""
    result = scenarios.feedback_during_redis_freeze(tiny_bundle_root, fault_seconds=3)
    assert not _failed(result), result
