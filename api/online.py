"""Features by customer id: requests that name a customer are completed from the feature store.

A scoring request (or batch item) *names a stored customer* when it carries a ``customer_id`` and
lacks at least one required input. The service then reads that customer's record (one Redis hash,
format in :mod:`scoring.online`), lays the request's own features over it (the request wins;
``null`` keeps the stored value) and checks the result with the same request schema as any
request. So:

* a request carrying all its features never touches the store, and keeps working while Redis is
  down; with no Redis configured nothing changes at all (a missing field is a 422 as before);
* unknown id -> 404 ``customer_not_found``; a stored record that does not fit the schema (unknown
  or unreadable field, a required input absent, a value outside its domain) -> 409
  ``stale_features`` naming the fields; Redis failing or skipped by the circuit breaker -> 503
  ``feature_store_unavailable`` with ``Retry-After``. In a batch each of these is the item's own
  error entry and the other items are scored (the batch answer carries ``Retry-After`` then);
* what the stream job last computed for the customer (segment, top campaigns, model version,
  time) comes back as ``last_scored`` when the record has it.

A batch reads every named customer with one pipelined round trip.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import redis
from marshmallow import ValidationError

from api.cache import CircuitBreaker
from api.errors import (
    ApiError,
    CustomerNotFound,
    FeatureStoreDown,
    StaleFeatures,
    envelope,
    validation_messages,
)
from api.metrics import Metrics
from api.schemas import CUSTOMER_ID, RequestSchemas
from scoring.features import FeatureSchema
from scoring.online import (
    StoredRecord,
    counters_key,
    decode_record,
    missing_required,
    record_key,
)

LAST_SCORED = "last_scored"


class FeatureStore:
    """Reads stored feature records from Redis, behind its own circuit breaker."""

    def __init__(
        self,
        client: Any | None,
        metrics: Metrics,
        *,
        prefix: str = "segsvc",
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.client = client
        self.metrics = metrics
        self.prefix = prefix
        self.breaker = breaker or CircuitBreaker(consequence="requests by customer id answer 503")
        self._results = {
            r: metrics.feature_lookups.labels(r)
            for r in ("found", "not_found", "stale", "unavailable")
        }

    @property
    def enabled(self) -> bool:
        """True when a Redis is configured (else requests must carry their features)."""
        return self.client is not None

    def names_stored_customer(self, body: Any, schema: FeatureSchema) -> bool:
        """True when ``body`` carries a customer id and lacks a required input."""
        return (
            self.client is not None
            and type(body) is dict
            and body.get(CUSTOMER_ID) is not None
            and bool(missing_required(body, schema))
        )

    def fetch(self, schema: FeatureSchema, ids: list[Any]) -> list[StoredRecord | None]:
        """The stored records of ``ids`` (None where absent), in one round trip.

        Raises :class:`FeatureStoreDown` when Redis fails or the breaker skips it.
        """
        if not self.breaker.allows():
            self._results["unavailable"].inc(len(ids))
            raise FeatureStoreDown(
                "the feature store is unavailable: send the customer's features, or retry",
                retry_after=self.breaker.retry_after(),
            )
        keys = [record_key(self.prefix, schema, cid) for cid in ids]
        try:
            if len(keys) == 1:
                raw = [self.client.hgetall(keys[0])]
            else:
                pipe = self.client.pipeline(transaction=False)
                for key in keys:
                    pipe.hgetall(key)
                raw = pipe.execute()
        except redis.RedisError:
            self.metrics.redis_errors.labels("hgetall").inc()
            self.breaker.failure()
            self._results["unavailable"].inc(len(ids))
            raise FeatureStoreDown(
                "the feature store is unavailable: send the customer's features, or retry",
                retry_after=self.breaker.retry_after(),
            ) from None
        self.breaker.success()
        return [decode_record(r, schema) if r else None for r in raw]

    def count(self, result: str, n: int = 1) -> None:
        """Count ``n`` look-ups with ``result``."""
        self._results[result].inc(n)

    def stream_exposition(self) -> bytes:
        """The stream job's counters from Redis, in Prometheus text (empty if none or down).

        Read at scrape time: the job keeps them in one hash (``scoring.online.counters_key``), so
        every worker reports the same totals.
        """
        if self.client is None or not self.breaker.allows():
            return b""
        try:
            raw = self.client.hgetall(counters_key(self.prefix))
        except redis.RedisError:
            self.metrics.redis_errors.labels("hgetall").inc()
            self.breaker.failure()
            return b""
        self.breaker.success()
        if not raw:
            return b""
        counts = {}
        for k, v in raw.items():
            try:
                counts[k.decode() if isinstance(k, bytes) else str(k)] = int(v)
            except ValueError:
                continue
        return stream_counters_text(counts)


#: the stream job's counters as exposed: hash field -> (metric, help)
STREAM_COUNTERS = {
    "updates": ("segsvc_stream_updates_total", "Customer records the stream job wrote"),
    "segment_changes": (
        "segsvc_stream_segment_changes_total",
        "Changes of a customer's segment the stream job recorded (Redis Stream entries)",
    ),
}
DEAD_LETTERS = (
    "segsvc_stream_dead_letters_total",
    "Events the stream job refused, by reason (dead-letter stream entries)",
)


def stream_counters_text(counts: dict[str, int]) -> bytes:
    """Prometheus text of the stream job's counters (hash field -> value)."""
    lines: list[str] = []
    for field_name, (metric, text) in STREAM_COUNTERS.items():
        lines += [f"# HELP {metric} {text}", f"# TYPE {metric} counter"]
        lines.append(f"{metric} {counts.get(field_name, 0)}")
    metric, text = DEAD_LETTERS
    lines += [f"# HELP {metric} {text}", f"# TYPE {metric} counter"]
    for name, value in sorted(counts.items()):
        if name.startswith("dead_letters:"):
            reason = name.split(":", 1)[1].replace("\\", "").replace('"', "")[:40]
            lines.append(f'{metric}{{reason="{reason}"}} {value}')
    return ("\n".join(lines) + "\n").encode()


@dataclass
class Completed:
    """A request completed from the store: the checked record and what the stream job scored."""

    record: dict[str, Any]
    options: dict[str, Any] = field(default_factory=dict)
    last_scored: dict[str, Any] | None = None


def complete_one(
    store: FeatureStore,
    schemas: RequestSchemas,
    schema: FeatureSchema,
    body: Any,
    *,
    recommend: bool,
) -> Completed:
    """One request naming a stored customer -> the complete, checked record (or an ApiError)."""
    sent, options = schemas.load_partial(body, recommend=recommend)
    stored = store.fetch(schema, [sent[CUSTOMER_ID]])[0]
    return _merge(store, schemas, sent, stored, options)


def _merge(
    store: FeatureStore,
    schemas: RequestSchemas,
    sent: dict[str, Any],
    stored: StoredRecord | None,
    options: dict[str, Any],
) -> Completed:
    cid = sent[CUSTOMER_ID]
    if stored is None:
        store.count("not_found")
        raise CustomerNotFound(f"no stored features for customer {str(cid)[:128]!r}")
    if stored.problems:
        store.count("stale")
        raise StaleFeatures(
            "the stored features of this customer do not fit the served model's schema",
            fields=stored.problems,
        )
    record = dict(stored.features)
    for name, value in sent.items():
        if value is not None and name not in options:
            record[name] = value
    record[CUSTOMER_ID] = cid
    try:
        record = schemas.load_customer(record)
    except ValidationError as exc:
        # The request's own fields passed their checks: what fails is the stored part.
        store.count("stale")
        raise StaleFeatures(
            "the stored features of this customer do not fit the served model's schema",
            fields=validation_messages(exc),
        ) from None
    store.count("found")
    return Completed(record, options, stored.last_scored())


@dataclass
class BatchLookup:
    """Batch items that named stored customers: completed records or error entries by position."""

    records: dict[int, Completed] = field(default_factory=dict)
    errors: dict[int, dict[str, Any]] = field(default_factory=dict)
    #: seconds to put in ``Retry-After`` when the store was unavailable for some items
    retry_after: int | None = None


def complete_batch(
    store: FeatureStore, schemas: RequestSchemas, schema: FeatureSchema, items: list[Any]
) -> BatchLookup:
    """Complete every item that names a stored customer (one pipelined read for all of them)."""
    out = BatchLookup()
    if not store.enabled:
        return out
    wanted: list[tuple[int, dict[str, Any]]] = []
    for i, item in enumerate(items):
        if not store.names_stored_customer(item, schema):
            continue
        try:
            sent, _ = schemas.load_partial(item)
        except ValidationError as exc:
            out.errors[i] = envelope(
                "validation_error",
                f"customers[{i}] does not match the schema",
                validation_messages(exc),
            )
            continue
        wanted.append((i, sent))
    if not wanted:
        return out
    try:
        stored = store.fetch(schema, [sent[CUSTOMER_ID] for _, sent in wanted])
    except FeatureStoreDown as exc:
        out.retry_after = exc.retry_after
        for i, _ in wanted:
            out.errors[i] = envelope(exc.code, f"customers[{i}]: {exc.message}")
        return out
    for (i, sent), record in zip(wanted, stored, strict=True):
        try:
            out.records[i] = _merge(store, schemas, sent, record, {})
        except ApiError as exc:
            out.errors[i] = envelope(exc.code, f"customers[{i}]: {exc.message}", exc.fields)
    return out
