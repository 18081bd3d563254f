"""Waiting in tests for something that happens on another thread or connection."""

from __future__ import annotations

import time
from collections.abc import Callable


def until(condition: Callable[[], object], tries: int = 500, step: float = 0.01) -> None:
    """Poll ``condition`` (an invalidation or a subscriber arrives asynchronously) until it
    holds, at most ``tries`` times ``step`` seconds apart; fail the test otherwise."""
    for _ in range(tries):
        if condition():
            return
        time.sleep(step)
    raise AssertionError("condition not reached")
