"""One error envelope for every failure: ``{"error": {"code", "message", "fields"?}}``.

The service's own errors form a small tree; each carries its HTTP status and code::

    ApiError                      (any failure answered in the envelope)
    ├── BadRequest         400    bad_request: empty or non-JSON body
    ├── Unauthorized       401    unauthorized: missing or unknown API key
    ├── Forbidden          403    forbidden: a key of the wrong kind (scoring vs admin)
    ├── BundleNotFound     404    bundle_not_found: /admin/reload named a missing version
    ├── CustomerNotFound   404    customer_not_found: no stored features for a customer id
    ├── BundleRejected     409    bundle_rejected: reload refused, the old bundle keeps serving
    ├── StaleFeatures      409    stale_features: the stored record does not fit the schema
    ├── UnsupportedMedia   415    unsupported_media_type: Content-Type is not application/json
    ├── ValidationFailed   422    validation_error: field-keyed messages
    ├── TooManyRequests    429    too_many_requests: a rate limit (Retry-After, retry_after)
    ├── NotReady           503    not_ready: no verified bundle loaded yet
    ├── FeatureStoreDown   503    feature_store_unavailable: Redis down (with Retry-After)
    └── FeedbackDown       503    feedback_unavailable: the stream cannot be written (Retry-After)

Errors from elsewhere are mapped here too: a marshmallow ``ValidationError`` a view lets escape
is 422 ``validation_error`` with field-keyed messages (one handler, no try/except in views);
werkzeug's HTTP errors (404, 405, 413, ...) keep their
status with a code from :data:`HTTP_CODES`; the scoring core's ``NoResponseModelError`` becomes
409 ``no_response_model``; anything else is 500 ``internal_error``, logged with its traceback and
answered without it and without any echo of the input. Requests too malformed to reach the app
(a bad request line or header, headers over gunicorn's limits) are answered by gunicorn with
:func:`protocol_error_response`, in the same envelope (gunicorn.conf.py installs it).
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import orjson
from flask import Flask, Response
from marshmallow import ValidationError
from werkzeug.exceptions import HTTPException

from scoring.engine import NoResponseModelError

log = logging.getLogger(__name__)

#: error code for each HTTP status werkzeug may raise on its own
HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    408: "request_timeout",
    411: "length_required",
    413: "payload_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    417: "expectation_failed",
    422: "validation_error",
    429: "too_many_requests",
    431: "headers_too_large",
    500: "internal_error",
    501: "not_implemented",
    503: "not_ready",
}

#: what a client sees for werkzeug's HTTP errors: short, fixed, never werkzeug's HTML text
HTTP_MESSAGES = {
    404: "no such endpoint",
    405: "method not allowed on this endpoint",
    413: "request body too large",
    415: "Content-Type must be application/json",
}


#: what a client sees when gunicorn refuses a request before the app: fixed text, because
#: gunicorn's own message quotes the offending request line or header
PROTOCOL_MESSAGES = {
    400: "malformed HTTP request (request line, header or chunked body)",
    414: "request line too long",
    431: "request headers too large",
    500: "internal error",
    501: "transfer coding not supported",
}


class ApiError(Exception):
    """A failure answered in the error envelope with ``status`` and ``code``."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, fields: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields


class BadRequest(ApiError):
    """The body is empty or not JSON."""

    status, code = 400, "bad_request"


class Unauthorized(ApiError):
    """No API key, or one that is not configured."""

    status, code = 401, "unauthorized"


class Forbidden(ApiError):
    """A valid key of the wrong kind for this endpoint."""

    status, code = 403, "forbidden"


class BundleNotFound(ApiError):
    """/admin/reload named a bundle version that is not under MODEL_ROOT."""

    status, code = 404, "bundle_not_found"


class CustomerNotFound(ApiError):
    """A request by customer id names a customer with no stored features."""

    status, code = 404, "customer_not_found"


class BundleRejected(ApiError):
    """The bundle to load failed verification; the previous one keeps serving."""

    status, code = 409, "bundle_rejected"


class StaleFeatures(ApiError):
    """The stored feature record no longer fits the served schema; ``fields`` names the fields."""

    status, code = 409, "stale_features"


class UnsupportedMedia(ApiError):
    """The request's Content-Type is not JSON."""

    status, code = 415, "unsupported_media_type"


class ValidationFailed(ApiError):
    """The JSON does not fit the request schema; ``fields`` says where and why."""

    status, code = 422, "validation_error"


class NotReady(ApiError):
    """No verified bundle is loaded."""

    status, code = 503, "not_ready"


class TooManyRequests(ApiError):
    """A rate limit refused the request; retry after ``retry_after`` seconds (api/limits.py)."""

    status, code = 429, "too_many_requests"

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class FeatureStoreDown(ApiError):
    """The feature store (Redis) cannot be read; retry after ``retry_after`` seconds."""

    status, code = 503, "feature_store_unavailable"

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class FeedbackDown(ApiError):
    """The feedback stream cannot be written (no Redis configured, or Redis failed).

    The events of one request are appended in one MULTI/EXEC, all or none, and none of them
    was acknowledged; the client should send the same events again after ``retry_after``
    seconds (events are folded once per ``event_id``, so a retry whose first attempt did reach
    Redis is never counted twice).
    """

    status, code = 503, "feedback_unavailable"

    def __init__(self, message: str, *, retry_after: int | None = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def envelope(code: str, message: str, fields: dict[str, Any] | None = None) -> dict[str, Any]:
    """The error envelope as a plain dict (also used for one failed item of a batch)."""
    error: dict[str, Any] = {"code": code, "message": message}
    if fields is not None:
        error["fields"] = fields
    return {"error": error}


def error_response(
    status: int, code: str, message: str, fields: dict[str, Any] | None = None
) -> Response:
    """A JSON response carrying the envelope."""
    return Response(
        orjson.dumps(envelope(code, message, fields)), status=status, mimetype="application/json"
    )


def protocol_error_response(status: int) -> bytes:
    """A whole HTTP/1.1 response with the envelope, for errors answered before the app runs."""
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Error"
    message = PROTOCOL_MESSAGES.get(status) or reason.lower()
    body = orjson.dumps(envelope(HTTP_CODES.get(status, "http_error"), message))
    head = (
        f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


def _api_error(exc: ApiError) -> Response:
    if isinstance(exc, TooManyRequests):
        body = envelope(exc.code, exc.message)
        body["error"]["retry_after"] = exc.retry_after
        response = Response(orjson.dumps(body), status=exc.status, mimetype="application/json")
    else:
        response = error_response(exc.status, exc.code, exc.message, exc.fields)
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


def _http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    code = HTTP_CODES.get(status, "http_error")
    message = HTTP_MESSAGES.get(status) or (exc.name or "error").lower()
    response = error_response(status, code, message)
    if status == 405 and exc.valid_methods:
        # 405 must name the allowed methods (RFC 9110).
        response.headers["Allow"] = ", ".join(exc.valid_methods)
    return response


def validation_messages(exc: ValidationError) -> dict[str, Any]:
    """Field-keyed messages of a marshmallow error (non-dict bodies under ``_schema``)."""
    messages = exc.messages
    return _str_keys(messages) if isinstance(messages, dict) else {"_schema": messages}


def _str_keys(messages: Any) -> Any:
    # marshmallow keys list items by int index; JSON object keys are strings.
    if isinstance(messages, dict):
        return {str(k): _str_keys(v) for k, v in messages.items()}
    return messages


def _validation_error(exc: ValidationError) -> Response:
    # The one place a schema's refusal becomes a 422: views just load and let it raise.
    return error_response(
        422, "validation_error", "request does not match the schema", validation_messages(exc)
    )


def _no_response_model(exc: NoResponseModelError) -> Response:
    return error_response(
        409, "no_response_model", "this model version ranks no campaigns: it has no response model"
    )


def _unexpected(exc: Exception) -> Response:
    # The traceback goes to the server log only; the client gets no detail and no input echo.
    log.error("unhandled error", exc_info=exc)
    return error_response(500, "internal_error", "internal error")


def register_error_handlers(app: Flask) -> None:
    """Answer every failure, ours or the framework's, in the envelope."""
    app.register_error_handler(ApiError, _api_error)
    app.register_error_handler(ValidationError, _validation_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(NoResponseModelError, _no_response_model)
    app.register_error_handler(Exception, _unexpected)
