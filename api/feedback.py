"""Feedback events into a Redis Stream: the service's half of the feedback loop.

``POST /feedback`` appends each validated event (impression, click, conversion) as one entry
whose ``event`` field holds the event's JSON; the service adds ``holdout`` entries itself when a
committed request holds a customer out of a campaign. ``python -m training feedback fold``
(``training/feedback.py``) drains the stream into Parquet; until then the stream is the only
copy, so nothing here trims it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
import redis

#: the entry field holding the event JSON (read by training/feedback.py)
FIELD = "event"
EVENT_TYPES = ("impression", "click", "conversion")
HOLDOUT = "holdout"


class FeedbackUnavailable(Exception):
    """The stream cannot be written (no Redis configured, or Redis failed)."""


class FeedbackStream:
    """Appends events to one Redis Stream, a batch in one round trip."""

    def __init__(self, client: redis.Redis | None, key: str) -> None:
        self.client = client
        self.key = key

    def append(self, events: Iterable[Mapping[str, Any]]) -> list[str]:
        """Append events in order, all or none; return their stream ids.

        One MULTI/EXEC: a request's events are in the stream all or none. When Redis fails or
        times out the caller answers 503 and the client sends them all again; where the write
        was applied but its answer lost (Redis frozen mid-write, then thawed:
        bench/reliability ``feedback_during_redis_freeze``), fold counts each ``event_id`` once.
        """
        if self.client is None:
            raise FeedbackUnavailable("feedback needs Redis: set REDIS_URL")
        pipe = self.client.pipeline(transaction=True)
        for event in events:
            pipe.xadd(self.key, {FIELD: orjson.dumps(dict(event))})
        try:
            ids = pipe.execute()
        except redis.RedisError as exc:
            raise FeedbackUnavailable(
                f"feedback stream unavailable ({exc.__class__.__name__}): the events may not "
                "be recorded; send the same events again (each event_id is counted once)"
            ) from None
        return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]


def holdout_events(
    result: Mapping[str, Any], customer_id: Any, model_version: str, now: float
) -> list[dict[str, Any]]:
    """The hold-out records of a committed answer: one per campaign the customer was held out
    of, with an event id fixed per (customer, campaign, UTC day) so a repeat is folded once."""
    if customer_id is None:
        return []
    day = dt.datetime.fromtimestamp(now, dt.UTC)
    stamp = day.isoformat(timespec="seconds")
    return [
        {
            "event_id": f"holdout:{customer_id}:{campaign}:{day:%Y%m%d}",
            "customer_id": str(customer_id),
            "campaign_id": campaign,
            "type": HOLDOUT,
            "timestamp": stamp,
            "model_version": model_version,
        }
        for campaign in result.get("held_out", ())
    ]
