"""Scoring endpoints: POST /predict-segment and /recommend (one customer or a batch).

Each view: check the key, take the served model once, load the body with the version's request
schemas (a body naming a stored customer is completed from the feature store first, see
``api/online.py``), call the scoring engine, add the cached segment profile and answer with
orjson. Batch items are validated one by one; a bad item gets its own error entry and the others
are scored. A plain batch /recommend (no explain, caps, commit or stored customers) takes the
column path instead: validated column by column, ranked in one engine call and written straight
to JSON by ``api/batch_answer.py``, the same bytes as the item-by-item path (tested). A body
that does not fit its schema raises marshmallow's ValidationError, answered 422 by the one
handler in ``api/errors.py``. The views are registered by the route table
(``api/routes.py``), which also documents them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
from flask import Response, current_app, request
from marshmallow import ValidationError
from werkzeug.exceptions import RequestEntityTooLarge

from api import ServiceResponse
from api.auth import HEADER, SCORING
from api.batch_answer import encode_compact, encode_results
from api.caps import Prefetch, ReadCounts, Verdict, apply_caps, prefetch_caps, read_caps_batch
from api.errors import BadRequest, FeedbackDown, Unauthorized, UnsupportedMedia, envelope
from api.extensions import Services, get_services
from api.feedback import FeedbackUnavailable, holdout_events
from api.model import LoadedModel
from api.online import LAST_SCORED, BatchLookup, complete_batch, complete_one
from api.schemas import (
    ANSWER,
    CUSTOMER_ID,
    CUSTOMERS,
    CheckedBatch,
    RequestSchemas,
    load_feedback,
)
from scoring.engine import NoResponseModelError

log = logging.getLogger(__name__)

JSON = "application/json"
#: Content-Encoding values that leave the body as sent (anything else, e.g. gzip: 415)
IDENTITY = frozenset(["", "identity"])
_DUMP_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
#: where WSGI keeps the API key header and the Content-Encoding header
_KEY_ENVIRON = "HTTP_" + HEADER.upper().replace("-", "_")
_CONTENT_ENCODING = "HTTP_CONTENT_ENCODING"
#: set by a WSGI server (gunicorn) that ends the body stream itself
_TERMINATED = "wsgi.input_terminated"
#: a batch body names "customers" within this many bytes of its start to try the plain path
_BATCH_KEY_WITHIN = 64


# ---- request plumbing shared by every scoring call (and the benchmark floor) --------------------
def json_response(payload: Any, status: int = 200) -> Response:
    """Serialise with orjson (NaN and infinities become null, numpy scalars are accepted)."""
    return ServiceResponse(
        orjson.dumps(payload, option=_DUMP_OPTIONS), status=status, content_type=JSON
    )


def read_json() -> Any:
    """The request body parsed as JSON, or the error that says why it cannot be.

    415 for another Content-Type or a compressed body, 413 beyond MAX_BODY_BYTES (with or without
    Content-Length), 400 for an empty body or bad JSON.
    """
    return parse_json(read_body())


def read_body() -> bytes:
    """The request body's bytes: :func:`read_json`'s checks (415, 413, 400 when empty)."""
    # the request object itself: each ``request.x`` is a context-variable look-up through
    # werkzeug's proxy, and this runs on every scoring request
    req = request._get_current_object()  # type: ignore[attr-defined]
    environ = req.environ
    # The usual headers are read from environ as they are: werkzeug's ``mimetype`` parses the
    # Content-Type and ``content_length`` builds a headers view (looking up Transfer-Encoding
    # raises a KeyError when absent); both are asked only when the plain values do not decide.
    if environ.get("CONTENT_TYPE") != JSON and req.mimetype != JSON:
        raise UnsupportedMedia("Content-Type must be application/json")
    if (environ.get(_CONTENT_ENCODING) or "").strip().lower() not in IDENTITY:
        # RFC 9110 15.5.16: 415 for a content coding the server does not accept.
        raise UnsupportedMedia("Content-Encoding is not supported: send the JSON uncompressed")
    length = content_length(req)
    limit = req.max_content_length
    if length is not None and (limit is None or length <= limit) and _TERMINATED in environ:
        # What get_data reads here, without its stream wrappers: the server ends the body at
        # Content-Length (wsgi.input_terminated), which is within the limit.
        body = environ["wsgi.input"].read()
    else:
        body = req.get_data(cache=False)  # 413 when Content-Length exceeds MAX_BODY_BYTES
        if length is None and _over_limit(req, body):
            raise RequestEntityTooLarge()
    if not body:
        raise BadRequest("empty body: send a JSON object")
    return body


def content_length(req: Any) -> int | None:
    """werkzeug's ``req.content_length``, read straight from environ for plain digits."""
    environ = req.environ
    raw = environ.get("CONTENT_LENGTH")
    if (
        type(raw) is str
        and raw.isascii()
        and raw.isdigit()
        and "HTTP_TRANSFER_ENCODING" not in environ
    ):
        return int(raw)
    return req.content_length


def parse_json(body: bytes) -> Any:
    """``body`` parsed as JSON, or 400 saying why it cannot be."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        # orjson also refuses NaN/Infinity literals (not JSON), numbers beyond a double, and
        # nesting deeper than 1,024. Its messages are fixed texts with a position, never a
        # quote of the body, so the client may see them.
        raise BadRequest(f"body is not valid JSON: {exc}") from None


def _over_limit(req: Any, body: bytes) -> bool:
    """True when a body sent without Content-Length (chunked) went on past MAX_BODY_BYTES.

    werkzeug stops reading such a stream at the limit and returns what it read, without an
    error: a truncated body would then be answered 400 "not valid JSON" (or, padded with
    whitespace, even be scored). One more byte from the server's stream tells the two apart.
    """
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    return limit is not None and len(body) >= limit and bool(req.environ["wsgi.input"].read(1))


def authorised(services: Services, kind: str = SCORING) -> None:
    """401/403 unless the request carries a key of ``kind``; 429 once this address has sent
    too many wrong keys (AUTH_FAILURES_PER_MINUTE)."""
    environ = request._get_current_object().environ  # type: ignore[attr-defined]
    try:
        # what ``request.headers.get(HEADER)`` reads, without building the headers view
        services.keys.require(environ.get(_KEY_ENVIRON), kind)
    except Unauthorized:
        services.limits.failed_auth(environ.get("REMOTE_ADDR"))
        raise


def admitted(services: Services, body: Any) -> None:
    """429 when this key is over its request or customer rate (api/limits.py); else charge it."""
    limits = services.limits
    if not limits.enabled:
        return
    environ = request._get_current_object().environ  # type: ignore[attr-defined]
    limits.admit(environ.get(_KEY_ENVIRON) or "", environ.get("REMOTE_ADDR"), body)


# ---- answers ------------------------------------------------------------------------------------
def _stats_lookup(services: Services, loaded: LoadedModel) -> Callable[[int], dict[str, Any]]:
    """segment id -> segment_stats, through the profile cache, at most once per segment."""
    cache, engine, version = services.cache, loaded.engine, loaded.version
    seen: dict[int, dict[str, Any]] = {}

    def stats(segment_id: int) -> dict[str, Any]:
        out = seen.get(segment_id)
        if out is None:
            profile = cache.get(version, segment_id, lambda: engine.profile(segment_id))
            out = {"size": profile["size"], "share": profile["share"], "mean": profile["mean"]}
            if "clv" in profile:  # bundles trained with [clv]: the segment's lifetime value
                out["clv"] = profile["clv"]
            if "rfm" in profile:  # bundles with the [rfm] features: scores and groups
                out["rfm"] = profile["rfm"]
            seen[segment_id] = out
        return out

    return stats


def _answer(
    result: dict[str, Any],
    record: dict[str, Any],
    stats: Callable,
    last_scored: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Engine result + echoed customer id + segment stats (+ the stream job's last scoring)."""
    cid = record.get(CUSTOMER_ID)
    out = {CUSTOMER_ID: cid, **result} if cid is not None else result
    out["segment_stats"] = stats(result["segment_id"])
    if last_scored is not None:
        out[LAST_SCORED] = last_scored
    return out


def _count(services: Services, loaded: LoadedModel, endpoint: str, results: list[dict]) -> None:
    services.metrics.count_customers(endpoint, len(results))
    services.metrics.count_segments(
        loaded.version, loaded.engine.segment_names, [r["segment_id"] for r in results]
    )


def _score_batch(
    services: Services,
    loaded: LoadedModel,
    schemas: RequestSchemas,
    customers: list[Any],
    score: Callable[[list[dict[str, Any]]], list[dict[str, Any]]],
    endpoint: str,
    lookup: BatchLookup | None = None,
) -> Response:
    """Validate items one by one, score the valid ones in one engine call, answer in order.

    Items naming a stored customer are completed from the feature store first (one read),
    unless the caller already did (``lookup``).
    """
    if lookup is None:
        lookup = complete_batch(services.features, schemas, loaded.engine.schema, customers)
    results: list[Any] = [None] * len(customers)
    if lookup.records or lookup.errors:
        plain_positions = [
            i for i in range(len(customers)) if i not in lookup.records and i not in lookup.errors
        ]
        checked, at, errors = schemas.check_items([customers[i] for i in plain_positions])
        errors = {plain_positions[j]: m for j, m in errors.items()}
        positions = [plain_positions[j] for j in at]
        for i, completed in lookup.records.items():
            checked.append(completed.record)
            positions.append(i)
        results_from_store = {i: c.last_scored for i, c in lookup.records.items()}
        for i, entry in lookup.errors.items():
            results[i] = entry
    else:
        checked, positions, errors = schemas.check_items(customers)
        results_from_store = {}
    for i, messages in errors.items():
        results[i] = envelope(
            "validation_error", f"customers[{i}] does not match the schema", messages
        )
    if checked:
        scored = score(checked)
        stats = _stats_lookup(services, loaded)
        for i, record, result in zip(positions, checked, scored, strict=True):
            results[i] = _answer(result, record, stats, results_from_store.get(i))
        _count(services, loaded, endpoint, scored)
    response = json_response({"model_version": loaded.version, "results": results})
    if lookup.retry_after is not None:
        response.headers["Retry-After"] = str(lookup.retry_after)
    return response


def columns_apply(
    loaded: LoadedModel, options: dict[str, Any], targeted: bool, lookup: BatchLookup | None = None
) -> bool:
    """True when a batch /recommend can take the column path: no explain, caps or commit, no
    item named by a stored customer (in ``lookup``, when given), and a bundle whose answers it
    writes (``loaded.columns``, decided at load: K-Means, no RFM scores or CLV-weighted gains)."""
    return (
        loaded.columns is not None
        and not targeted
        and not options.get("explain")
        and (lookup is None or (not lookup.records and not lookup.errors))
    )


def _names_stored(
    services: Services, loaded: LoadedModel, customers: list[Any], refused: Any
) -> bool:
    """Whether any of the items the column check refused names a stored customer.

    Only those can: an item the feature store completes lacks a required input, which the
    column check refuses. So an all-valid batch costs no item-by-item look at the store
    (``complete_batch`` spent 0.84 ms on 1,000 such customers with Redis on).
    """
    store, schema = services.features, loaded.engine.schema
    return any(store.names_stored_customer(customers[i], schema) for i in refused)


def _refuse_compact(
    loaded: LoadedModel, options: dict[str, Any], commit: bool, lookup: Any
) -> None:
    """422 naming ``answer`` when a compact answer was asked of a batch only the dict path
    answers (its extra fields have no place in the compact tables)."""
    if loaded.columns is None:
        why = "this model version (a Gaussian mixture, RFM scores or CLV-weighted gains)"
    elif options.get("explain"):
        why = "explain"
    elif commit:
        why = "commit"
    elif loaded.engine.tables.has_caps:
        why = "a model version with frequency caps"
    else:
        why = "items naming a stored customer"
    raise ValidationError({ANSWER: [f"'compact' is not available with {why}: ask 'full'"]})


def _plain_batch(services: Services, loaded: LoadedModel, raw: bytes) -> Response | None:
    """The answer to a batch whose every item is valid and that the column path answers,
    decoded straight from the body's bytes (``RequestSchemas.decode_batch``); None for any
    other body, which is then parsed and checked item by item as before.

    Only tried on a body that names ``customers`` near its start and a bundle without caps
    (whose batches are never plain): a one-customer body pays one short ``in``.
    """
    if (
        loaded.columns is None
        or loaded.engine.tables.has_caps
        or b'"customers"' not in raw[:_BATCH_KEY_WITHIN]
    ):
        return None
    decoded = loaded.schemas.decode_batch(raw)
    if decoded is None:
        return None
    checked, options = decoded
    compact = options.pop(ANSWER, "full") == "compact"
    _, _, targeted = targeting_options(loaded.engine, options)
    if not columns_apply(loaded, options, targeted):
        return None
    # what the rate limits count (api.limits.request_cost): the items, and explain (never here)
    admitted(services, {CUSTOMERS: checked.ids, **options})
    # every item carries its required inputs: none names a stored customer to complete
    return _recommend_columns(services, loaded, len(checked.ids), options, compact, checked)


def _recommend_columns(
    services: Services,
    loaded: LoadedModel,
    total: int,
    options: dict[str, Any],
    compact: bool,
    checked: CheckedBatch,
) -> Response:
    """A batch /recommend without explain, caps, commit or stored customers, column by column.

    Validated as columns (``checked``: ``RequestSchemas.check_batch``), ranked in one engine
    call and written straight to JSON (``api/batch_answer.py``): the same bytes as the
    item-by-item path.
    """
    engine = loaded.engine
    errors = {
        i: envelope("validation_error", f"customers[{i}] does not match the schema", messages)
        for i, messages in checked.errors.items()
    }
    version = b'{"model_version":' + orjson.dumps(loaded.version)
    head = version + b',"results":'
    if checked.positions:
        channel = options.get("channel")
        ranking = engine.rank(
            engine.batch_from_columns(checked.raw, checked.categoricals),
            channel=channel,
            exclude=options.get("exclude", ()),
        )
        choice = engine.choose(ranking, checked.ids, options.get("top_k"))
        body = (encode_compact if compact else encode_results)(
            loaded.columns.compact if compact else loaded.columns,
            ranking,
            choice,
            checked.ids,
            _stats_lookup(services, loaded),
            channel=channel is not None,
            total=total,
            positions=checked.positions,
            errors=errors,
            before=version if compact else head,
            after=b"}",
        )
        services.metrics.count_customers("recommend", len(checked.positions))
        services.metrics.count_segments(
            loaded.version, engine.segment_names, ranking.assignment.segment.tolist()
        )
    else:
        results = orjson.dumps([errors[i] for i in range(total)], option=_DUMP_OPTIONS)
        if compact:  # nothing scored: the tables are empty
            tables = loaded.columns.compact.tables(lambda s: {}, np.empty(0, np.intp), False)
            head = version + tables + b',"results":'
        body = head + results + b"}"
    return ServiceResponse(body, status=200, content_type=JSON)


def targeting_options(engine: Any, options: dict[str, Any]) -> tuple[bool, int | None, bool]:
    """Take ``commit`` (and, when caps apply, ``top_k``) out of the ranking options.

    With frequency caps or a commit, the engine ranks every campaign worth offering and the
    caps pick the first ``top_k`` that pass; otherwise nothing here touches the request.
    """
    commit = bool(options.pop("commit", False))
    targeted = commit or engine.tables.has_caps
    top_k = options.pop("top_k", None) if targeted else options.get("top_k")
    return commit, top_k, targeted


def _target(
    services: Services,
    loaded: LoadedModel,
    result: dict[str, Any],
    customer_id: Any,
    commit: bool,
    top_k: int | None,
    prefetched: Prefetch | ReadCounts | Verdict | None = None,
) -> None:
    """Frequency caps on one answer and, for a committed send, its hold-out records."""
    tables = loaded.engine.tables
    apply_caps(
        services.caps,
        tables.caps,
        tables.campaign_index,
        result,
        customer_id,
        commit=commit,
        top_k=top_k,
        prefetched=prefetched,
    )
    if commit and result.get("held_out"):
        events = holdout_events(result, customer_id, loaded.version, time.time())
        try:
            services.feedback.append(events)
            services.metrics.count_feedback([e["type"] for e in events])
        except FeedbackUnavailable as exc:
            # the offer still goes out; the control group loses one record, and the log says so
            log.warning("hold-out records not written: %s", exc)


# ---- endpoints ----------------------------------------------------------------------------------
def predict_segment() -> Response:
    """One customer (or ``{"customers": [...]}``) -> segment, stats and default campaigns."""
    services = get_services()
    authorised(services)
    loaded = services.model.serving()
    body = read_json()
    admitted(services, body)
    schemas, engine = loaded.schemas, loaded.engine
    if type(body) is dict and CUSTOMERS in body:
        batch = schemas.load_batch(body, recommend=False)
        return _score_batch(
            services,
            loaded,
            schemas,
            batch.customers,
            lambda records: engine.predict_segment(engine.batch_from_records(records)),
            "predict-segment",
        )
    last_scored = None
    if services.features.names_stored_customer(body, engine.schema):
        completed = complete_one(services.features, schemas, engine.schema, body, recommend=False)
        record, last_scored = completed.record, completed.last_scored
    else:
        record = schemas.load_customer(body)
    result = engine.predict_segment_one(record)
    out = _answer(result, record, _stats_lookup(services, loaded), last_scored)
    out["model_version"] = loaded.version
    _count(services, loaded, "predict-segment", [result])
    return json_response(out)


def recommend() -> Response:
    """One customer (or a batch) -> segment and eligible campaigns ranked by expected value."""
    services = get_services()
    authorised(services)
    loaded = services.model.serving()
    engine = loaded.engine
    if not engine.has_response_model:
        # Before reading the body: no body can make this bundle rank campaigns (409).
        raise NoResponseModelError(f"model version {loaded.version} has no response model")
    raw = read_body()
    plain = _plain_batch(services, loaded, raw)
    if plain is not None:
        return plain
    body = parse_json(raw)
    admitted(services, body)
    schemas = loaded.schemas
    if type(body) is dict and CUSTOMERS in body:
        batch = schemas.load_batch(body, recommend=True)
        options = dict(batch.options)
        compact = options.pop(ANSWER, "full") == "compact"
        commit, top_k, targeted = targeting_options(engine, options)
        if columns_apply(loaded, options, targeted):
            checked = schemas.check_batch(batch.customers)
            if not _names_stored(services, loaded, batch.customers, checked.errors):
                return _recommend_columns(
                    services, loaded, len(batch.customers), options, compact, checked
                )
        lookup = complete_batch(services.features, schemas, engine.schema, batch.customers)
        if compact:
            _refuse_compact(loaded, options, commit, lookup)

        def score(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
            ids = [r.get(CUSTOMER_ID) for r in records]
            results = engine.recommend(
                engine.batch_from_records(records), customer_ids=ids, **options
            )
            if targeted:
                tables = engine.tables
                # read-only: the whole batch's counters in one round trip
                shared = (
                    None
                    if commit or not tables.has_caps
                    else read_caps_batch(
                        services.caps, tables.caps, tables.campaign_index, results, ids
                    )
                )
                for cid, result in zip(ids, results, strict=True):
                    _target(services, loaded, result, cid, commit, top_k, shared)
            return results

        return _score_batch(services, loaded, schemas, batch.customers, score, "recommend", lookup)
    last_scored = None
    if services.features.names_stored_customer(body, engine.schema):
        completed = complete_one(services.features, schemas, engine.schema, body, recommend=True)
        record, options, last_scored = completed.record, completed.options, completed.last_scored
    else:
        record, options = schemas.load_recommend(body)
    options = dict(options)
    commit, top_k, targeted = targeting_options(engine, options)
    customer_id = record.get(CUSTOMER_ID)
    # a read-only cap check: ask Redis now, read the answer after scoring (api/caps.py)
    prefetched = (
        prefetch_caps(services.caps, engine.campaign_ids, engine.tables.caps, customer_id)
        if targeted and not commit and engine.tables.has_caps
        else None
    )
    try:
        result = engine.recommend_one(record, **options)
        if targeted:
            _target(services, loaded, result, customer_id, commit, top_k, prefetched)
    finally:
        if prefetched is not None and type(prefetched) is not Verdict:  # a Verdict holds nothing
            prefetched.close()
    out = _answer(result, record, _stats_lookup(services, loaded), last_scored)
    out["model_version"] = loaded.version
    _count(services, loaded, "recommend", [result])
    return json_response(out)


_FLOOR = orjson.dumps({"ok": True})


def bench_floor() -> Response:
    """Benchmark baseline (BENCH_FLOOR=1): same key check and JSON parsing, constant answer."""
    services = get_services()
    authorised(services)
    services.model.serving()
    read_json()
    return ServiceResponse(_FLOOR, content_type=JSON)


def feedback() -> Response:
    """Feedback events (one, or ``{"events": [...]}``) -> appended to the Redis Stream (202).

    Checked like every request: a campaign outside the served pool is a 422 naming it; the
    whole request is refused if any event is invalid, so a client never half-sends a batch.
    """
    services = get_services()
    authorised(services)
    loaded = services.model.serving()
    body = read_json()
    admitted(services, body)
    events = load_feedback(body, loaded.engine.campaign_ids, services.settings.MAX_BATCH_ITEMS)
    try:
        ids = services.feedback.append(events)
    except FeedbackUnavailable as exc:
        # Redis down: worth retrying soon; no Redis configured: it never will be
        retry = 1 if services.feedback.client is not None else None
        raise FeedbackDown(str(exc), retry_after=retry) from None
    services.metrics.count_feedback([e["type"] for e in events])
    return json_response({"accepted": len(ids), "stream_ids": ids}, status=202)
