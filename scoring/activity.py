"""Customer features from transaction events: the one definition training and the stream job share.

An *event* is one payment or purchase of one customer (a JSON object, one per line)::

    {
        "customer_id": "c-42",
        "event_time": 1767225600.0,
        "amount": 25.5,
        "product": "p-17",
        "discount": false,
        "returned": false,
        "channel": "mobile",
    }

``event_time`` is Unix seconds (or an ISO-8601 text with a zone), ``amount`` >= 0; ``product``,
``discount``, ``returned`` and ``channel`` are optional. :func:`parse_event` checks one line and
raises :class:`EventError` with a reason (bad JSON, unknown field, negative amount, a timestamp
too far in the future, ...): the stream job sends such lines to its dead-letter stream, the
offline builder counts them; both with the same reasons.

:class:`Activity` is a customer's running state: it folds events one at a time (the stream job
keeps one per customer in Flink state) and answers :meth:`Activity.features` for any feature in
:data:`FEATURES`. Offline, :func:`features_table` folds a whole event file with the same class, so
a customer's features are the same number whether computed by training or by the job.

Definitions: those of ``training/transactions.py`` (``customer_features`` with ``returns = "net"``
and no invoice column), extended with the demo wallet's names; ``tests/training/test_activity.py``
checks that both give the same numbers on the same rows. An event with ``returned: true`` is a
return of ``amount``: never a purchase, its value subtracted from spend. Days are UTC calendar days.
Features describe the customer *as of the day after their latest event* (``as_of``; training's
snapshot date is likewise the day after the last transaction), over all their events, or over a
rolling window of the last ``window_days`` days when one is set:

============================ ==========================================================
``recency_days``             ``as_of`` - last purchase day
``frequency``                distinct purchase days
``transaction_count``        purchases
``monetary_total``           purchase value net of returns (clipped at 0)
``monetary_avg``             ``monetary_total`` per purchase day
``tenure_days``              ``as_of`` - first purchase day
``avg_days_between``         mean days between purchase days (one purchase day: ``tenure_days``)
``return_count``             returns
``return_share``             value returned / value bought, in [0, 1]
``total_spend``              = ``monetary_total``
``order_count``              = ``transaction_count``
``days_since_last_purchase`` = ``recency_days``
``unique_products``          distinct products bought
``discount_usage``           share of purchases with a discount
``return_rate``              returns per purchase, at most 1
``mobile_usage``             share of purchases on the mobile channel
============================ ==========================================================

A customer with returns but no purchase has no features yet (training leaves such customers out).
Out-of-order events are folded like any other (every feature is order-independent); an event more
than ``allowed_lateness`` seconds older than the customer's latest event is *late* and refused
(:class:`EventError` reason ``late``), so that a customer's state only moves forward.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

DAY = 86_400
#: None: every event counts (as in training); a number: a rolling window of that many days
DEFAULT_WINDOW_DAYS: int | None = None
#: events older than the customer's latest by more than this are late (seconds)
DEFAULT_ALLOWED_LATENESS = 3 * DAY
#: event times further than this in the future of the checking clock are refused (seconds)
MAX_FUTURE_SKEW = DAY
#: events before this are refused as implausible (2000-01-01)
MIN_EVENT_TIME = 946_684_800.0
MAX_AMOUNT = 1e12
MAX_ID_LENGTH = 128

REQUIRED_FIELDS = ("customer_id", "event_time", "amount")
OPTIONAL_FIELDS = ("product", "discount", "returned", "channel")
MOBILE = "mobile"

FEATURES = (
    "recency_days",
    "frequency",
    "transaction_count",
    "monetary_total",
    "monetary_avg",
    "tenure_days",
    "avg_days_between",
    "return_count",
    "return_share",
    "total_spend",
    "order_count",
    "days_since_last_purchase",
    "unique_products",
    "discount_usage",
    "return_rate",
    "mobile_usage",
)
#: positions in a day's bucket
_BOUGHT, _PURCHASES, _DISCOUNTED, _MOBILE, _RETURNED, _RETURNS = range(6)


class EventError(ValueError):
    """An event that cannot be folded; ``reason`` is a short code, the message says more."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Event:
    """One checked transaction event."""

    customer_id: str
    event_time: float
    amount: float
    product: str | None = None
    discount: bool = False
    returned: bool = False
    channel: str | None = None

    @property
    def day(self) -> int:
        """UTC day number (days since 1970-01-01)."""
        return int(self.event_time // DAY)


def _time(value: Any) -> float:
    if type(value) in (int, float):
        return float(value)
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise EventError("bad_field", f"event_time {value[:40]!r} is not ISO-8601") from None
        if parsed.tzinfo is None:
            raise EventError("bad_field", "event_time text must carry a zone (Z or +hh:mm)")
        return parsed.timestamp()
    raise EventError("bad_field", "event_time must be Unix seconds or ISO-8601 text")


def check_event(
    data: Any, *, now: float | None = None, max_future: float = MAX_FUTURE_SKEW
) -> Event:
    """A decoded JSON object -> :class:`Event`, or :class:`EventError` saying why not.

    ``now`` (Unix seconds) bounds event times from above: at most ``now + max_future``.
    """
    if not isinstance(data, dict):
        raise EventError("not_an_object", "an event must be a JSON object")
    unknown = sorted(set(data) - set(REQUIRED_FIELDS) - set(OPTIONAL_FIELDS))
    if unknown:
        raise EventError("unknown_field", f"unknown field(s): {', '.join(unknown)[:100]}")
    missing = [f for f in REQUIRED_FIELDS if data.get(f) is None]
    if missing:
        raise EventError("missing_field", f"missing field(s): {', '.join(missing)}")
    cid = data["customer_id"]
    if type(cid) is int:
        cid = str(cid)
    if type(cid) is not str or not 0 < len(cid.strip()) <= MAX_ID_LENGTH:
        raise EventError("bad_field", f"customer_id must be 1-{MAX_ID_LENGTH} characters")
    t = _time(data["event_time"])
    if not math.isfinite(t) or t < MIN_EVENT_TIME:
        raise EventError("bad_field", "event_time is before 2000-01-01 or not finite")
    if now is not None and t > now + max_future:
        raise EventError("future", f"event_time is {(t - now) / 3600:.1f} h in the future")
    amount = data["amount"]
    if type(amount) not in (int, float) or not math.isfinite(amount):
        raise EventError("bad_field", "amount must be a finite JSON number")
    if amount < 0:
        raise EventError("negative_amount", f"amount {amount!r} is negative")
    if amount > MAX_AMOUNT:
        raise EventError("bad_field", f"amount {amount!r} is above {MAX_AMOUNT:g}")
    flags = {}
    for name in ("discount", "returned"):
        v = data.get(name, False)
        if v is None:
            v = False
        if type(v) is not bool:
            raise EventError("bad_field", f"{name} must be true or false")
        flags[name] = v
    texts = {}
    for name in ("product", "channel"):
        v = data.get(name)
        if v is not None and (type(v) not in (str, int) or len(str(v)) > MAX_ID_LENGTH):
            raise EventError("bad_field", f"{name} must be a text of at most {MAX_ID_LENGTH}")
        texts[name] = None if v is None else str(v)
    return Event(cid.strip(), t, float(amount), texts["product"], channel=texts["channel"], **flags)


def parse_event(
    line: str | bytes, *, now: float | None = None, max_future: float = MAX_FUTURE_SKEW
) -> Event:
    """One JSON line -> :class:`Event`, or :class:`EventError` (reason ``bad_json`` and others)."""
    try:
        data = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise EventError("bad_json", f"not JSON: {exc}"[:200]) from None
    return check_event(data, now=now, max_future=max_future)


@dataclass
class Activity:
    """One customer's running state; fold events with :meth:`add`, read :meth:`features`.

    Plain data (ints, floats, dicts), so it pickles small for Flink state and checkpoints.
    """

    window_days: int | None = DEFAULT_WINDOW_DAYS
    allowed_lateness: float = DEFAULT_ALLOWED_LATENESS
    #: day -> [value bought, purchases, discounted, mobile, value returned, returns]
    days: dict[int, list[float]] = field(default_factory=dict)
    #: product -> latest day bought
    products: dict[str, int] = field(default_factory=dict)
    last_time: float | None = None
    #: events folded since the customer was first seen (never decreases): a write sequence number
    folded: int = 0

    def add(self, event: Event) -> None:
        """Fold one event; raises :class:`EventError` ``late`` beyond the allowed lateness."""
        if self.last_time is not None and event.event_time < self.last_time - self.allowed_lateness:
            raise EventError(
                "late",
                f"event is {(self.last_time - event.event_time) / 3600:.1f} h older than the "
                f"customer's latest (allowed: {self.allowed_lateness / 3600:g} h)",
            )
        day = event.day
        if self.last_time is None or event.event_time > self.last_time:
            self.last_time = event.event_time
        bucket = self.days.get(day)
        if bucket is None:
            bucket = self.days[day] = [0.0, 0, 0, 0, 0.0, 0]
        if event.returned:
            bucket[_RETURNED] += event.amount
            bucket[_RETURNS] += 1
        else:
            bucket[_BOUGHT] += event.amount
            bucket[_PURCHASES] += 1
            bucket[_DISCOUNTED] += event.discount
            bucket[_MOBILE] += event.channel == MOBILE
            if event.product is not None and self.products.get(event.product, -1) < day:
                self.products[event.product] = day
        self.folded += 1
        if self.window_days is not None:
            self._evict(self.as_of - self.window_days)

    def _evict(self, start: int) -> None:
        for d in [d for d in self.days if d < start]:
            del self.days[d]
        for p in [p for p, d in self.products.items() if d < start]:
            del self.products[p]

    @property
    def as_of(self) -> int | None:
        """The day after the latest event (the features' snapshot day)."""
        return None if self.last_time is None else int(self.last_time // DAY) + 1

    @property
    def has_purchase(self) -> bool:
        """True once a purchase (not only returns) is in the state: features are defined."""
        return any(b[_PURCHASES] for b in self.days.values())

    def features(self, names: Sequence[str]) -> dict[str, float]:
        """The named features (each one of :data:`FEATURES`) as of :attr:`as_of`.

        Raises KeyError for a name without a definition, ValueError before any purchase.
        """
        unknown = missing_definitions(names)
        if unknown:
            raise KeyError(f"no event definition for feature(s): {', '.join(unknown)}")
        buckets = self.days
        purchase_days = [d for d, b in buckets.items() if b[_PURCHASES]]
        if not purchase_days:
            raise ValueError("no purchase yet: features are not defined")
        as_of = self.as_of
        first, last = min(purchase_days), max(purchase_days)
        freq = len(purchase_days)
        gross = math.fsum(b[_BOUGHT] for b in buckets.values())
        returned = math.fsum(b[_RETURNED] for b in buckets.values())
        purchases = sum(b[_PURCHASES] for b in buckets.values())
        returns = sum(b[_RETURNS] for b in buckets.values())
        total = max(gross - returned, 0.0)
        recency = float(as_of - last)
        tenure = float(as_of - first)
        values = {
            "recency_days": recency,
            "frequency": float(freq),
            "transaction_count": float(purchases),
            "monetary_total": total,
            "monetary_avg": total / freq,
            "tenure_days": tenure,
            "avg_days_between": (last - first) / (freq - 1) if freq > 1 else tenure,
            "return_count": float(returns),
            "return_share": min(max(returned / gross, 0.0), 1.0) if gross > 0 else 0.0,
            "total_spend": total,
            "order_count": float(purchases),
            "days_since_last_purchase": recency,
            "unique_products": float(len(self.products)),
            "return_rate": min(returns / purchases, 1.0),
        }
        out = {}
        for n in names:
            if n == "discount_usage":
                out[n] = sum(b[_DISCOUNTED] for b in buckets.values()) / purchases
            elif n == "mobile_usage":
                out[n] = sum(b[_MOBILE] for b in buckets.values()) / purchases
            else:
                out[n] = values[n]
        return out


def missing_definitions(names: Iterable[str]) -> list[str]:
    """Features among ``names`` that events cannot produce (a bundle the job cannot serve)."""
    return [n for n in names if n not in FEATURES]


@dataclass
class FoldResult:
    """What :func:`fold_events` made of an event stream."""

    activities: dict[str, Activity]
    #: reason -> events refused for it
    refused: dict[str, int]


def fold_events(
    lines: Iterable[str | bytes],
    *,
    window_days: int | None = DEFAULT_WINDOW_DAYS,
    allowed_lateness: float = DEFAULT_ALLOWED_LATENESS,
    now: float | None = None,
) -> FoldResult:
    """Fold event lines in order into one :class:`Activity` per customer (the offline path)."""
    activities: dict[str, Activity] = {}
    refused: dict[str, int] = {}
    for line in lines:
        if not line.strip():
            continue
        try:
            event = parse_event(line, now=now)
            activity = activities.get(event.customer_id)
            if activity is None:
                activity = Activity(window_days, allowed_lateness)
            activity.add(event)
            activities[event.customer_id] = activity
        except EventError as exc:
            refused[exc.reason] = refused.get(exc.reason, 0) + 1
    return FoldResult(activities, refused)


def features_table(
    activities: Mapping[str, Activity], names: Sequence[str]
) -> tuple[list[str], list[dict[str, float]]]:
    """Customer ids (sorted) and their named features, ready for a DataFrame.

    Customers with returns but no purchase yet are left out, as training leaves them out.
    """
    ids = sorted(c for c, a in activities.items() if a.has_purchase)
    return ids, [activities[c].features(names) for c in ids]
