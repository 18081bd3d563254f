"""The online feature record: one Redis hash per customer, keyed by the feature-schema version.

Three writers and one reader share this format, so it lives here and nowhere else: the bulk
loader (``python -m training features load``), the stream job (``stream/``) and the API
(``api/online.py``), which reads it for ``{"customer_id": ...}`` requests. This module only
builds keys and converts values; the Redis calls live with each caller (the core has no Redis).

Key::

    {prefix}:features:{schema_id}:{customer_id}

``schema_id`` (:func:`schema_id`) is a short hash of the *shape* of the inputs: the numeric input
names and kinds and the categorical names, in order. Two bundles with the same inputs (a
retraining) share stored records; a bundle with other inputs reads other keys, so it never sees a
record of the wrong shape. Medians, derived features and the clustering choice are not part of
it: they are computed from the inputs, never stored.

Fields of the hash:

* one per input (numeric as ``repr(float)`` text, categorical as text); an optional input with no
  value is simply absent (the engine imputes it);
* metadata, names starting with ``@`` (never a column name a table would carry):
  ``@updated_at`` (Unix seconds of the write), and, from the stream job, ``@segment_id``,
  ``@segment_name``, ``@campaigns`` (JSON list of campaign ids, best first), ``@model_version``,
  ``@scored_at``, ``@event_time`` (event time of the last event folded in, Unix seconds),
  ``@as_of`` (the day the features describe) and ``@seq`` (events folded: the job's write order).

The stream job also keeps, under the same prefix, a Redis Stream of segment changes, one of dead
letters and a hash of counters (:func:`changes_key`, :func:`dead_letters_key`,
:func:`counters_key`); the service's ``/metrics`` reads the counters.

:func:`decode_record` turns a stored hash back into a request-shaped record and lists every field
that does not fit the schema (unknown field, unreadable number), so the API can answer 409 naming
them; domain checks (negative amounts, ratios outside [0, 1]) are the request schema's, applied
to the decoded record by the caller, exactly as to a request.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from scoring.features import FeatureSchema

META_PREFIX = "@"
UPDATED_AT = "@updated_at"
SEGMENT_ID = "@segment_id"
SEGMENT_NAME = "@segment_name"
CAMPAIGNS = "@campaigns"
MODEL_VERSION = "@model_version"
SCORED_AT = "@scored_at"
EVENT_TIME = "@event_time"
AS_OF = "@as_of"
#: metadata the API returns as ``last_scored`` when the stream job has scored the customer
SCORED_FIELDS = (SEGMENT_ID, SEGMENT_NAME, CAMPAIGNS, MODEL_VERSION, SCORED_AT)


def schema_id(schema: FeatureSchema) -> str:
    """Short, stable hash of the inputs' shape (names, kinds, categoricals), 12 hex characters."""
    shape = {
        "inputs": [[f.name, f.kind] for f in schema.inputs],
        "categoricals": [c.name for c in schema.categoricals],
    }
    text = json.dumps(shape, separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def key_prefix(prefix: str, schema: FeatureSchema | str) -> str:
    """``{prefix}:features:{schema_id}:``, to which a customer id is appended."""
    sid = schema if isinstance(schema, str) else schema_id(schema)
    return f"{prefix}:features:{sid}:"


def record_key(prefix: str, schema: FeatureSchema | str, customer_id: Any) -> str:
    """The Redis key of one customer's record (ids are text: ``7`` and ``"7"`` are one customer)."""
    return key_prefix(prefix, schema) + str(customer_id)


def changes_key(prefix: str) -> str:
    """The Redis Stream where the stream job records each change of a customer's segment."""
    return f"{prefix}:stream:segment-changes"


def dead_letters_key(prefix: str) -> str:
    """The Redis Stream of events the stream job refused, with the reason."""
    return f"{prefix}:stream:dead-letters"


def counters_key(prefix: str) -> str:
    """The hash of the stream job's running totals (``/metrics`` exposes them)."""
    return f"{prefix}:stream:counters"


def format_number(value: float) -> str:
    """Numeric field text: the shortest repr that reads back to the same float."""
    return repr(float(value))


def encode_record(
    record: Mapping[str, Any], schema: FeatureSchema, *, updated_at: float | None = None
) -> dict[str, str]:
    """A record's inputs as hash fields (missing or NaN values left out, to be imputed)."""
    out: dict[str, str] = {}
    for name in schema.input_names:
        v = record.get(name)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        out[name] = format_number(v)
    for name in schema.categorical_names:
        v = record.get(name)
        if v is not None and v == v:  # NaN from pandas is missing
            out[name] = str(v)
    if updated_at is not None:
        out[UPDATED_AT] = format_number(updated_at)
    return out


@dataclass
class StoredRecord:
    """A decoded hash: the request-shaped features, what did not fit, and the metadata."""

    features: dict[str, Any]
    #: field name -> messages, for fields that do not fit the schema (the API's 409)
    problems: dict[str, list[str]] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)

    def last_scored(self) -> dict[str, Any] | None:
        """What the stream job last computed for the customer, or None if it never scored it."""
        m = self.meta
        if SEGMENT_ID not in m:
            return None
        try:
            campaigns = json.loads(m.get(CAMPAIGNS, "[]"))
            out = {
                "segment_id": int(m[SEGMENT_ID]),
                "segment_name": m.get(SEGMENT_NAME, ""),
                "campaigns": campaigns if isinstance(campaigns, list) else [],
                "model_version": m.get(MODEL_VERSION, ""),
                "scored_at": float(m.get(SCORED_AT, "nan")),
            }
        except ValueError:
            return None
        if not math.isfinite(out["scored_at"]):
            out["scored_at"] = None
        return out


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def decode_record(stored: Mapping[Any, Any], schema: FeatureSchema) -> StoredRecord:
    """A Redis hash (bytes or text keys and values) -> :class:`StoredRecord`."""
    numeric = set(schema.input_names)
    categorical = set(schema.categorical_names)
    features: dict[str, Any] = {}
    problems: dict[str, list[str]] = {}
    meta: dict[str, str] = {}
    for raw_name, raw_value in stored.items():
        name, value = _text(raw_name), _text(raw_value)
        if name.startswith(META_PREFIX):
            meta[name] = value
        elif name in numeric:
            try:
                number = float(value)
            except ValueError:
                problems[name] = [f"Stored value {value[:40]!r} is not a number."]
                continue
            if not math.isfinite(number):
                problems[name] = [f"Stored value {value[:40]!r} is not a finite number."]
                continue
            # Integral values go back as int, as a client would send them (counts, days).
            features[name] = int(number) if number.is_integer() and abs(number) < 2**53 else number
        elif name in categorical:
            features[name] = value
        else:
            problems[name] = ["Stored field is not an input of the served model's schema."]
    return StoredRecord(features, problems, meta)


def missing_required(record: Mapping[str, Any], schema: FeatureSchema) -> list[str]:
    """Required inputs that ``record`` does not carry (a request needing the stored record)."""
    return [f.name for f in schema.inputs if f.required and record.get(f.name) is None] + [
        c.name for c in schema.categoricals if c.required and record.get(c.name) is None
    ]
