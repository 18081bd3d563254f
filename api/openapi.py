"""The OpenAPI 3 document, generated with apispec from the marshmallow schemas of the served model.

Request schemas come from the loaded bundle (its inputs, campaign pool and channels), so the
document is built per model version (and cached by the caller). Examples are real: the example
customer has the training medians and the example answers are what the engine says about it.
"""

from __future__ import annotations

from typing import Any

import orjson
from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from marshmallow import fields

from api import schemas as sc
from api.errors import envelope
from api.model import LoadedModel

TITLE = "Customer segmentation and campaign recommendation"
DESCRIPTION = """\
Assigns a customer to a segment of the served model and ranks the campaigns they may receive by
expected value (predicted response probability x campaign value).

Scoring calls need a key in the `X-API-Key` header (401 without a valid key, 403 for an admin
key); `/admin/*` needs an admin key; health, version, metrics and this document are open.
Every error is `{"error": {"code", "message", "fields"?}}`.

Both scoring endpoints take one customer, or `{"customers": [...]}` with up to MAX_BATCH_ITEMS
customers (more: 422 on `customers`). A batch answers item by item, in order; a bad item gets
its own error entry and the others are scored. In a /recommend batch the ranking options
(`top_k`, `channel`, `exclude`, `explain`) sit at the top level and apply to every customer.

**By customer id** (when the service has a Redis): a customer (or batch item) that carries a
`customer_id` but not every required feature is completed from the feature store, the features
sent overriding the stored ones; the answer then has `last_scored` when the stream job has scored
the customer. Unknown id: 404 `customer_not_found`; a stored record that no longer fits the
schema: 409 `stale_features` naming the fields; store unavailable: 503
`feature_store_unavailable` with `Retry-After` (requests carrying their features keep working).
"""


def _either_to_one_of(self: Any, field: fields.Field, **kwargs: Any) -> dict[str, Any]:
    """apispec attribute function: document an :class:`~api.schemas.Either` field as oneOf."""
    if isinstance(field, sc.Either):
        return {"oneOf": [self.resolve_nested_schema(choice) for choice in field.choices]}
    return {}


def _example_customer(loaded: LoadedModel) -> dict[str, Any]:
    feature_schema = loaded.engine.schema
    out: dict[str, Any] = {"customer_id": "c-42"}
    for spec in feature_schema.inputs:
        out[spec.name] = sc._example_number(spec)
    for spec in feature_schema.categoricals:
        if spec.categories:
            out[spec.name] = spec.categories[0]
    return out


def _example_answers(loaded: LoadedModel, customer: dict[str, Any]) -> dict[str, Any]:
    engine = loaded.engine
    batch = engine.batch_from_records([customer])

    def finish(result: dict[str, Any]) -> dict[str, Any]:
        profile = engine.profile(result["segment_id"])
        stats = {"size": profile["size"], "share": profile["share"], "mean": profile["mean"]}
        return {"customer_id": customer["customer_id"], **result, "segment_stats": stats}

    segment = finish(engine.predict_segment(batch)[0])
    out = {
        "segment": {**segment, "model_version": loaded.version},
        "segment_batch": {
            "model_version": loaded.version,
            "results": [
                segment,
                envelope(
                    "validation_error",
                    "customers[1] does not match the schema",
                    {"order_count": ["Missing data for required field."]},
                ),
            ],
        },
    }
    if engine.has_response_model:
        ranked = finish(engine.recommend(batch, top_k=3)[0])
        out["recommend"] = {**ranked, "model_version": loaded.version}
        out["recommend_batch"] = {"model_version": loaded.version, "results": [ranked]}
    return out


def _json_body(schema: Any, examples: dict[str, Any]) -> dict[str, Any]:
    return {
        "content": {
            "application/json": {
                "schema": schema,
                "examples": {k: {"value": v} for k, v in examples.items()},
            }
        }
    }


def _error(description: str, code: str, message: str, fields_: Any = None) -> dict[str, Any]:
    return {
        "description": description,
        **_json_body("ErrorEnvelope", {code: envelope(code, message, fields_)}),
    }


def _errors(*statuses: int) -> dict[str, Any]:
    table = {
        400: _error("Empty body or not JSON", "bad_request", "body is not valid JSON"),
        401: _error("Missing or unknown API key", "unauthorized", "missing API key"),
        403: _error("Key of the wrong kind", "forbidden", "this key cannot call admin endpoints"),
        404: _error("Bundle version not found", "bundle_not_found", "no bundle version 'x'"),
        409: _error(
            "The served model has no response model",
            "no_response_model",
            "this model version ranks no campaigns: it has no response model",
        ),
        413: _error(
            "Body larger than MAX_BODY_BYTES", "payload_too_large", "request body too large"
        ),
        415: _error(
            "Content-Type is not application/json",
            "unsupported_media_type",
            "Content-Type must be application/json",
        ),
        422: _error(
            "The body does not match the schema",
            "validation_error",
            "request does not match the schema",
            {"order_count": ["Must be greater than or equal to 0."]},
        ),
        503: _error("No verified bundle loaded", "not_ready", "no verified model bundle is loaded"),
    }
    return {str(s): table[s] for s in statuses}


def _by_id_errors(*, recommend: bool) -> dict[str, Any]:
    """The errors of a request naming a stored customer (merged with the endpoint's own)."""
    not_found = envelope("customer_not_found", "no stored features for customer 'c-404'")
    stale = envelope(
        "stale_features",
        "the stored features of this customer do not fit the served model's schema",
        {"order_count": ["Missing data for required field."]},
    )
    down = envelope(
        "feature_store_unavailable",
        "the feature store is unavailable: send the customer's features, or retry",
    )
    conflicts = {"stale_features": {"value": stale}}
    if recommend:
        conflicts["no_response_model"] = {
            "value": envelope(
                "no_response_model",
                "this model version ranks no campaigns: it has no response model",
            )
        }
    ready = {"not_ready": {"value": envelope("not_ready", "no verified model bundle is loaded")}}

    def body(description: str, examples: dict[str, Any]) -> dict[str, Any]:
        return {
            "description": description,
            "content": {"application/json": {"schema": "ErrorEnvelope", "examples": examples}},
        }

    return {
        "404": body(
            "No stored features for the customer id", {"customer_not_found": {"value": not_found}}
        ),
        "409": body(
            "Stored features that no longer fit the schema"
            + ("; or no response model" if recommend else ""),
            conflicts,
        ),
        "503": {
            **body(
                "No verified bundle loaded; or the feature store is unavailable",
                {**ready, "feature_store_unavailable": {"value": down}},
            ),
            "headers": {
                "Retry-After": {
                    "description": "seconds to wait (feature_store_unavailable only)",
                    "schema": {"type": "integer"},
                }
            },
        },
    }


def build_spec(loaded: LoadedModel, app_version: str) -> APISpec:
    """The apispec object for the served model (also used by tests)."""
    plugin = MarshmallowPlugin()
    spec = APISpec(
        title=TITLE,
        version=app_version,
        openapi_version="3.0.3",
        plugins=[plugin],
        info={"description": DESCRIPTION},
    )
    plugin.converter.add_attribute_function(_either_to_one_of)
    key = {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    spec.components.security_scheme("ApiKey", key)
    spec.components.security_scheme("AdminKey", {**key, "description": "an ADMIN_API_KEYS key"})

    s = loaded.schemas
    spec.components.schema("Customer", schema=s.customer_class)
    spec.components.schema("RecommendRequest", schema=s.recommend_class)
    spec.components.schema("CustomerBatch", schema=s.customer_batch_class)
    spec.components.schema("RecommendBatch", schema=s.recommend_batch_class)
    for cls in (
        sc.ErrorEnvelope,
        sc.PredictSegmentResponse,
        sc.SegmentBatchResponse,
        sc.RecommendResponse,
        sc.RecommendBatchResponse,
        sc.Health,
        sc.Ready,
        sc.VersionInfo,
        sc.ReloadRequest,
        sc.ReloadResponse,
    ):
        spec.components.schema(cls.__name__, schema=cls)

    customer = _example_customer(loaded)
    answers = _example_answers(loaded, customer)
    second = {k: v for k, v in customer.items() if k != "order_count"} | {"customer_id": "c-43"}
    scoring = {"security": [{"ApiKey": []}]}

    spec.path(
        path="/predict-segment",
        operations={
            "post": {
                **scoring,
                "summary": "Segment of one customer, or of a batch",
                "requestBody": {
                    "required": True,
                    **_json_body(
                        {
                            "oneOf": [
                                {"$ref": "#/components/schemas/Customer"},
                                {"$ref": "#/components/schemas/CustomerBatch"},
                            ]
                        },
                        {"one": customer, "batch": {"customers": [customer, second]}},
                    ),
                },
                "responses": {
                    "200": {
                        "description": "The segment (one customer) or one entry per customer",
                        **_json_body(
                            {
                                "oneOf": [
                                    {"$ref": "#/components/schemas/PredictSegmentResponse"},
                                    {"$ref": "#/components/schemas/SegmentBatchResponse"},
                                ]
                            },
                            {"one": answers["segment"], "batch": answers["segment_batch"]},
                        ),
                    },
                    **_errors(400, 401, 403, 413, 415, 422),
                    **_by_id_errors(recommend=False),
                },
            }
        },
    )
    if loaded.engine.has_response_model:
        options = {"top_k": 3, "channel": sorted(loaded.engine.channels)[0], "explain": False}
        recommend_examples = {
            "one": {**customer, "top_k": 3},
            "batch": {"customers": [customer], **options},
        }
        recommend_answers = {"one": answers["recommend"], "batch": answers["recommend_batch"]}
    else:
        recommend_examples = {"one": customer}
        recommend_answers = {}
    spec.path(
        path="/recommend",
        operations={
            "post": {
                **scoring,
                "summary": "Segment and campaigns ranked by expected value",
                "description": "Only campaigns eligible for the customer's segment (and the "
                "requested channel) are returned. Unknown ids in `exclude` are ignored.",
                "requestBody": {
                    "required": True,
                    **_json_body(
                        {
                            "oneOf": [
                                {"$ref": "#/components/schemas/RecommendRequest"},
                                {"$ref": "#/components/schemas/RecommendBatch"},
                            ]
                        },
                        recommend_examples,
                    ),
                },
                "responses": {
                    "200": {
                        "description": "Ranked campaigns (one customer) or one entry per customer",
                        **_json_body(
                            {
                                "oneOf": [
                                    {"$ref": "#/components/schemas/RecommendResponse"},
                                    {"$ref": "#/components/schemas/RecommendBatchResponse"},
                                ]
                            },
                            recommend_answers,
                        ),
                    },
                    **_errors(400, 401, 403, 413, 415, 422),
                    **_by_id_errors(recommend=True),
                },
            }
        },
    )

    def simple(path: str, summary: str, schema: str, extra: tuple[int, ...] = ()) -> None:
        spec.path(
            path=path,
            operations={
                "get": {
                    "summary": summary,
                    "responses": {
                        "200": {
                            "description": summary,
                            "content": {"application/json": {"schema": schema}},
                        },
                        **_errors(*extra),
                    },
                }
            },
        )

    simple("/healthz", "The process is alive", "Health")
    simple("/readyz", "A verified bundle is loaded (503 until then)", "Ready", (503,))
    simple("/version", "The served model and app versions", "VersionInfo", (503,))
    spec.path(
        path="/metrics",
        operations={
            "get": {
                "summary": "Prometheus metrics, summed over all workers",
                "responses": {
                    "200": {
                        "description": "Prometheus text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
    )
    spec.path(
        path="/admin/reload",
        operations={
            "post": {
                "security": [{"AdminKey": []}],
                "summary": "Load, verify and swap in a bundle in every worker",
                "requestBody": {
                    "required": True,
                    **_json_body("ReloadRequest", {"current": {}, "named": {"version": "v2"}}),
                },
                "responses": {
                    "200": {
                        "description": "Now served",
                        **_json_body(
                            "ReloadResponse",
                            {
                                "reloaded": {
                                    "model_version": "v2",
                                    "previous_version": "v1",
                                    "scope": "all_workers",
                                }
                            },
                        ),
                    },
                    **_errors(400, 401, 403, 404, 415, 422),
                    "409": _error(
                        "The bundle failed verification; the previous one keeps serving",
                        "bundle_rejected",
                        "bundle refused, still serving the previous one: ...",
                    ),
                },
            }
        },
    )
    return spec


def openapi_document(loaded: LoadedModel, services: Any) -> bytes:
    """The document as JSON bytes."""
    return orjson.dumps(build_spec(loaded, services.app_version).to_dict())
