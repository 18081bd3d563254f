"""Generated transaction events (JSON lines) for the stream tests and benchmark."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

DAY = 86_400
#: customer behaviours: (mean events, amount log-mean, discount share, mobile share)
PROFILES = (
    (12, 6.0, 0.1, 0.8),
    (6, 3.5, 0.7, 0.6),
    (2, 2.5, 0.2, 0.3),
)


def generate_events(
    n_customers: int,
    *,
    seed: int = 0,
    start: float = 1_780_000_000.0,
    days: int = 60,
    return_share: float = 0.05,
    prefix: str = "s",
) -> list[dict]:
    """Events of ``n_customers`` customers over ``days`` days, in event-time order."""
    rng = np.random.default_rng(seed)
    events = []
    for i in range(n_customers):
        n_ev, log_amount, discount, mobile = PROFILES[i % len(PROFILES)]
        n = max(1, int(rng.poisson(n_ev)))
        times = np.sort(start + rng.uniform(0, days * DAY, n))
        for j, t in enumerate(times):
            returned = bool(j > 0 and rng.random() < return_share)
            events.append(
                {
                    "customer_id": f"{prefix}{i:06d}",
                    "event_time": round(float(t), 3),
                    "amount": round(float(np.exp(rng.normal(log_amount, 0.5))), 2),
                    "product": f"p{int(rng.integers(0, 40))}",
                    "discount": bool(rng.random() < discount),
                    "returned": returned,
                    "channel": "mobile" if rng.random() < mobile else "web",
                }
            )
    events.sort(key=lambda e: e["event_time"])
    return events


def write_events(folder: Path, name: str, events: list, extra_lines: tuple[str, ...] = ()) -> Path:
    """Write a JSON-lines file atomically (hidden name, then rename: the source skips hidden)."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.tmp"
    with open(tmp, "w") as fh:
        for e in events:
            fh.write((e if isinstance(e, str) else json.dumps(e)) + "\n")
        for line in extra_lines:
            fh.write(line + "\n")
    final = folder / name
    os.replace(tmp, final)
    return final
