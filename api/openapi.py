"""The OpenAPI 3 document, generated with apispec from the route table and the served model.

The paths come from the same table that registers the views (:mod:`api.routes`): each route
contributes its method, summary, security, request and answer documentation and the codes of its
errors (documented from :data:`ERRORS`). Request schemas come from the loaded bundle (its inputs,
campaign pool and channels), so the document is built per model version (and cached by the
caller). Examples are real and follow the served bundle's feature schema: the example customer
has the training medians, the example answers are what the engine says about it, and the
example validation errors name one of its own inputs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

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

**explain**: each returned campaign gets its three largest feature contributions to the response
log-odds, and the answer `explain_method` says how they were computed: `path` (the default:
path attribution from per-leaf tables built when the bundle loads: on ~200 trees a request with
`explain` costs about 1.3x a plain one; contributions sum to the log-odds minus the model's
expected value; an approximation of SHAP that depends on split order) or `treeshap` (exact, when
the service runs with `EXPLAIN_METHOD=treeshap`: 1-2 ms per returned campaign on ~200
trees of 31 leaves).

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


# ---- examples from the served bundle ---------------------------------------------------------
@dataclass(frozen=True)
class Examples:
    """Example bodies and answers of the served model, built once per document."""

    loaded: LoadedModel
    #: a valid customer (training medians, first category of each categorical)
    customer: dict[str, Any]
    #: a second batch customer lacking ``invalid_field`` (so its batch entry is an error)
    second: dict[str, Any]
    #: a required input of the served schema, named by the example validation errors
    invalid_field: str
    #: example answers keyed "segment", "segment_batch", "recommend", "recommend_batch"
    answers: dict[str, Any]

    @classmethod
    def of(cls, loaded: LoadedModel) -> Examples:
        """The examples of ``loaded`` (its feature schema and its engine's answers)."""
        schema = loaded.engine.schema
        customer = example_customer(loaded)
        required = [spec.name for spec in schema.inputs if spec.required]
        invalid = (required or schema.input_names)[0]
        second = {k: v for k, v in customer.items() if k != invalid} | {"customer_id": "c-43"}
        return cls(loaded, customer, second, invalid, _example_answers(loaded, customer, invalid))

    def field_messages(self, message: str = "Missing data for required field.") -> dict:
        """Field-keyed messages naming one of the served schema's inputs."""
        return {self.invalid_field: [message]}


def example_customer(loaded: LoadedModel) -> dict[str, Any]:
    """A valid customer of ``loaded``'s schema (training medians, first category of each)."""
    feature_schema = loaded.engine.schema
    out: dict[str, Any] = {"customer_id": "c-42"}
    for spec in feature_schema.inputs:
        out[spec.name] = sc._example_number(spec)
    for spec in feature_schema.categoricals:
        if spec.categories:
            out[spec.name] = spec.categories[0]
    return out


def _example_answers(loaded: LoadedModel, customer: dict[str, Any], invalid: str) -> dict:
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
                    {invalid: ["Missing data for required field."]},
                ),
            ],
        },
    }
    if engine.has_response_model:
        ranked = finish(engine.recommend(batch, top_k=3)[0])
        out["recommend"] = {**ranked, "model_version": loaded.version}
        out["recommend_batch"] = {"model_version": loaded.version, "results": [ranked]}
    return out


def json_content(schema: Any, examples: dict[str, Any] | None = None) -> dict[str, Any]:
    """``content`` of a JSON body: a schema (a component name, or a dict) and named examples."""
    media: dict[str, Any] = {"schema": schema}
    if examples:
        media["examples"] = {k: {"value": v} for k, v in examples.items()}
    return {"content": {"application/json": media}}


def one_of(*components: str) -> dict[str, Any]:
    """A schema that is one of the named components."""
    return {"oneOf": [{"$ref": f"#/components/schemas/{c}"} for c in components]}


# ---- errors ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ErrorDoc:
    """How one error code is documented: its status, when it happens and an example message."""

    status: int
    description: str
    message: str
    #: the example carries field messages (naming an input of the served schema)
    fields: bool = False
    #: the answer carries ``Retry-After``
    retry_after: bool = False


#: every error code a route may list in ``Route.errors`` (a test checks each ApiError's code
#: is here); several codes of one status are documented together
ERRORS: dict[str, ErrorDoc] = {
    "bad_request": ErrorDoc(400, "Empty body or not JSON", "body is not valid JSON"),
    "unauthorized": ErrorDoc(401, "Missing or unknown API key", "missing API key"),
    "forbidden": ErrorDoc(403, "Key of the wrong kind", "this key cannot call admin endpoints"),
    "bundle_not_found": ErrorDoc(404, "Bundle version not found", "no bundle version 'x'"),
    "customer_not_found": ErrorDoc(
        404, "No stored features for the customer id", "no stored features for customer 'c-404'"
    ),
    "no_response_model": ErrorDoc(
        409,
        "The served model has no response model",
        "this model version ranks no campaigns: it has no response model",
    ),
    "stale_features": ErrorDoc(
        409,
        "Stored features that no longer fit the schema",
        "the stored features of this customer do not fit the served model's schema",
        fields=True,
    ),
    "bundle_rejected": ErrorDoc(
        409,
        "The bundle failed verification; the previous one keeps serving",
        "bundle refused, still serving the previous one: ...",
    ),
    "payload_too_large": ErrorDoc(413, "Body larger than MAX_BODY_BYTES", "request body too large"),
    "unsupported_media_type": ErrorDoc(
        415, "Content-Type is not application/json", "Content-Type must be application/json"
    ),
    "validation_error": ErrorDoc(
        422, "The body does not match the schema", "request does not match the schema", True
    ),
    "too_many_requests": ErrorDoc(
        429,
        "A rate limit (per key, or wrong keys per address); the envelope has retry_after",
        "rate limit on requests per second for this API key; retry after 1 s",
        retry_after=True,
    ),
    "report_not_found": ErrorDoc(
        404,
        "The served bundle has no HTML report",
        "no report for model version v1; `python -m training report <version>` writes it",
    ),
    "not_ready": ErrorDoc(503, "No verified bundle loaded", "no verified model bundle is loaded"),
    "feedback_unavailable": ErrorDoc(
        503,
        "The feedback stream cannot be written",
        "feedback needs Redis: set REDIS_URL",
    ),
    "feature_store_unavailable": ErrorDoc(
        503,
        "The feature store is unavailable",
        "the feature store is unavailable: send the customer's features, or retry",
        retry_after=True,
    ),
}


def error_responses(codes: Iterable[str], examples: Examples) -> dict[str, Any]:
    """The ``responses`` entries of ``codes``, grouped by status, one example per code."""
    by_status: dict[int, list[str]] = {}
    for code in codes:
        by_status.setdefault(ERRORS[code].status, []).append(code)
    out: dict[str, Any] = {}
    for status in sorted(by_status):
        docs = [(code, ERRORS[code]) for code in by_status[status]]
        entry: dict[str, Any] = {
            "description": "; or ".join(doc.description for _, doc in docs),
            **json_content(
                "ErrorEnvelope",
                {
                    code: envelope(
                        code, doc.message, examples.field_messages() if doc.fields else None
                    )
                    for code, doc in docs
                },
            ),
        }
        if any(doc.retry_after for _, doc in docs):
            entry["headers"] = {
                "Retry-After": {
                    "description": "seconds to wait (feature_store_unavailable only)",
                    "schema": {"type": "integer"},
                }
            }
        out[str(status)] = entry
    return out


# ---- the document -----------------------------------------------------------------------------
class DocumentedRoute(Protocol):
    """What the document reads of a route (an ``api.routes.Route``; a protocol here, so this
    module need not import the route table that imports the views that serve this document)."""

    method: str
    path: str
    summary: str
    description: str
    security: str | None
    request: Any
    response: Any
    errors: tuple[str, ...]
    components: tuple[type, ...]
    documented: bool


#: response and request schemas every document carries (routes add their own)
COMPONENTS = (sc.ErrorEnvelope,)


def build_spec(loaded: LoadedModel, app_version: str, routes: Iterable[DocumentedRoute]) -> APISpec:
    """The apispec object for the served model and ``routes`` (also used by tests)."""
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
    routes = [r for r in routes if r.documented]
    registered: set[str] = set()
    for cls in (*COMPONENTS, *(c for r in routes for c in r.components)):
        if cls.__name__ not in registered:
            spec.components.schema(cls.__name__, schema=cls)
            registered.add(cls.__name__)

    examples = Examples.of(loaded)
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        operation: dict[str, Any] = {"summary": route.summary}
        if route.description:
            operation["description"] = route.description
        if route.security:
            operation["security"] = [{route.security: []}]
        if route.request is not None:
            operation["requestBody"] = {"required": True, **route.request(examples)}
        operation["responses"] = {
            "200": route.response(examples),
            **error_responses(route.errors, examples),
        }
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    for path, operations in paths.items():
        spec.path(path=path, operations=operations)
    return spec


def openapi_document(loaded: LoadedModel, services: Any) -> bytes:
    """The document as JSON bytes, for the routes the app registered."""
    return orjson.dumps(build_spec(loaded, services.app_version, services.routes).to_dict())


# ---- documentation of the scoring endpoints (used by their entries in api.routes) -----------
def segment_request(ex: Examples) -> dict[str, Any]:
    """/predict-segment body: one customer or a batch."""
    return json_content(
        one_of("Customer", "CustomerBatch"),
        {"one": ex.customer, "batch": {"customers": [ex.customer, ex.second]}},
    )


def customer_request(ex: Examples) -> dict[str, Any]:
    """One customer's features (no batch): /bundle/position."""
    return json_content("Customer", {"one": ex.customer})


def segment_response(ex: Examples) -> dict[str, Any]:
    """/predict-segment answer."""
    return {
        "description": "The segment (one customer) or one entry per customer",
        **json_content(
            one_of("PredictSegmentResponse", "SegmentBatchResponse"),
            {"one": ex.answers["segment"], "batch": ex.answers["segment_batch"]},
        ),
    }


def recommend_request(ex: Examples) -> dict[str, Any]:
    """/recommend body: one customer with options, or a batch with options at the top."""
    engine = ex.loaded.engine
    if engine.has_response_model:
        options = {"top_k": 3, "channel": sorted(engine.channels)[0], "explain": False}
        examples = {
            "one": {**ex.customer, "top_k": 3},
            "batch": {"customers": [ex.customer], **options},
        }
    else:
        examples = {"one": ex.customer}
    return json_content(one_of("RecommendRequest", "RecommendBatch"), examples)


def recommend_response(ex: Examples) -> dict[str, Any]:
    """/recommend answer."""
    answers = ex.answers
    examples = (
        {"one": answers["recommend"], "batch": answers["recommend_batch"]}
        if "recommend" in answers
        else None
    )
    return {
        "description": "Ranked campaigns (one customer) or one entry per customer (a batch "
        'asking "answer": "compact": the static parts once, see RecommendCompactBatchResponse)',
        **json_content(
            one_of("RecommendResponse", "RecommendBatchResponse", "RecommendCompactBatchResponse"),
            examples,
        ),
    }


def plain_response(description: str, schema: str, examples: dict | None = None):
    """A documenter of a JSON answer with a fixed schema (and optional fixed examples)."""

    def document(_: Examples) -> dict[str, Any]:
        return {"description": description, **json_content(schema, examples)}

    return document


def plain_request(schema: str, examples: dict | None = None):
    """A documenter of a JSON body with a fixed schema (and optional fixed examples)."""

    def document(_: Examples) -> dict[str, Any]:
        return json_content(schema, examples)

    return document


def html_response(description: str):
    """A documenter of a ``text/html`` answer (the what-if page, the evidence report)."""

    def document(_: Examples) -> dict[str, Any]:
        return {
            "description": description,
            "content": {"text/html": {"schema": {"type": "string"}}},
        }

    return document


def text_response(description: str):
    """A documenter of a ``text/plain`` answer."""

    def document(_: Examples) -> dict[str, Any]:
        return {
            "description": description,
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }

    return document
