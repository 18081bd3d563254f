"""The route table: every endpoint once, driving both the URL map and the OpenAPI paths.

Adding an endpoint is one :class:`Route` entry in :data:`ROUTES`: its method and path, the view
function, the summary, the key it needs, how its body and answer are documented (functions of
the served model's :class:`~api.openapi.Examples`, so examples follow the bundle), the codes of
the errors it may answer (documented from :data:`api.openapi.ERRORS`) and any response schema it
adds to the document. ``create_app`` registers every enabled entry; ``/openapi.json`` documents
every registered entry that is ``documented``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response
from marshmallow import Schema

from api import admin, health, views, whatif
from api import schemas as sc
from api.openapi import (
    Examples,
    customer_request,
    html_response,
    plain_request,
    plain_response,
    recommend_request,
    recommend_response,
    segment_request,
    segment_response,
    text_response,
)
from api.settings import Settings

#: the security scheme of scoring calls and of admin calls (see api/openapi.py)
SCORING_KEY, ADMIN_KEY = "ApiKey", "AdminKey"


@dataclass(frozen=True)
class Route:
    """One endpoint: how it is served and how it is documented."""

    method: str
    path: str
    view: Callable[[], Response]
    summary: str
    #: the 200 answer's documentation (description, content) for the served model
    response: Callable[[Examples], dict[str, Any]]
    description: str = ""
    #: security scheme name (SCORING_KEY, ADMIN_KEY), None for an open endpoint
    security: str | None = None
    #: the request body's documentation (content), None when there is no body
    request: Callable[[Examples], dict[str, Any]] | None = None
    #: error codes the endpoint may answer (keys of api.openapi.ERRORS)
    errors: tuple[str, ...] = ()
    #: schema classes the documentation refers to by name
    components: tuple[type[Schema], ...] = ()
    #: False to serve without documenting (the benchmark floor)
    documented: bool = True
    #: registered only when this says so (None: always)
    enabled: Callable[[Settings], bool] | None = None

    @property
    def endpoint(self) -> str:
        """Flask's endpoint name: the view function's name."""
        return self.view.__name__


#: errors every scoring call may answer (request plumbing, keys, the feature store)
SCORING_ERRORS = (
    "bad_request",
    "unauthorized",
    "forbidden",
    "customer_not_found",
    "stale_features",
    "payload_too_large",
    "unsupported_media_type",
    "validation_error",
    "too_many_requests",
    "not_ready",
    "feature_store_unavailable",
)

ROUTES: tuple[Route, ...] = (
    Route(
        "POST",
        "/predict-segment",
        views.predict_segment,
        "Segment of one customer, or of a batch",
        segment_response,
        security=SCORING_KEY,
        request=segment_request,
        errors=SCORING_ERRORS,
        components=(sc.PredictSegmentResponse, sc.SegmentBatchResponse),
    ),
    Route(
        "POST",
        "/recommend",
        views.recommend,
        "Segment and campaigns ranked by expected value",
        recommend_response,
        description="Only campaigns eligible for the customer's segment (and the requested "
        "channel) are returned. Unknown ids in `exclude` are ignored.",
        security=SCORING_KEY,
        request=recommend_request,
        errors=(*SCORING_ERRORS, "no_response_model"),
        components=(
            sc.RecommendResponse,
            sc.RecommendBatchResponse,
            sc.RecommendCompactBatchResponse,
        ),
    ),
    Route(
        "POST",
        "/feedback",
        views.feedback,
        "Report what happened to offers: impressions, clicks, conversions",
        plain_response(
            "Appended to the feedback stream",
            "FeedbackResponse",
            {"accepted": {"accepted": 1, "stream_ids": ["1764669600000-0"]}},
        ),
        description='One event or `{"events": [...]}` (at most MAX_BATCH_ITEMS). Events go '
        "to a Redis Stream that `python -m training feedback fold` turns into the next "
        "training's response history; a repeated `event_id` is folded once.",
        security=SCORING_KEY,
        request=plain_request(
            "FeedbackRequest",
            {
                "batch": {
                    "events": [
                        {
                            "event_id": "evt-0001",
                            "customer_id": "c-42",
                            "campaign_id": "cashback",
                            "type": "conversion",
                            "value": 18.0,
                            "timestamp": "2026-12-02T10:00:00Z",
                            "model_version": "v1",
                        }
                    ]
                }
            },
        ),
        errors=(
            "bad_request",
            "unauthorized",
            "forbidden",
            "payload_too_large",
            "unsupported_media_type",
            "validation_error",
            "too_many_requests",
            "not_ready",
            "feedback_unavailable",
        ),
        components=(sc.FeedbackEvent, sc.FeedbackRequest, sc.FeedbackResponse),
    ),
    Route(
        "GET",
        "/healthz",
        health.healthz,
        "The process is alive",
        plain_response("The process is alive", "Health"),
        components=(sc.Health,),
    ),
    Route(
        "GET",
        "/readyz",
        health.readyz,
        "A verified bundle is loaded (503 until then)",
        plain_response("A verified bundle is loaded (503 until then)", "Ready"),
        errors=("not_ready",),
        components=(sc.Ready,),
    ),
    Route(
        "GET",
        "/version",
        health.version,
        "The served model and app versions",
        plain_response("The served model and app versions", "VersionInfo"),
        errors=("not_ready",),
        components=(sc.VersionInfo,),
    ),
    Route(
        "GET",
        "/metrics",
        health.metrics,
        "Prometheus metrics, summed over all workers",
        text_response("Prometheus text format"),
    ),
    Route(
        "GET",
        "/openapi.json",
        health.openapi,
        "This document",
        plain_response("The OpenAPI 3 document of the served model", "object"),
        documented=False,
    ),
    Route(
        "POST",
        "/admin/reload",
        admin.reload,
        "Load, verify and swap in a bundle in every worker",
        plain_response(
            "Now served",
            "ReloadResponse",
            {
                "reloaded": {
                    "model_version": "v2",
                    "previous_version": "v1",
                    "scope": "all_workers",
                }
            },
        ),
        security=ADMIN_KEY,
        request=plain_request("ReloadRequest", {"current": {}, "named": {"version": "v2"}}),
        errors=(
            "bad_request",
            "unauthorized",
            "forbidden",
            "bundle_not_found",
            "bundle_rejected",
            "unsupported_media_type",
            "validation_error",
            "too_many_requests",
        ),
        components=(sc.ReloadRequest, sc.ReloadResponse),
    ),
    Route(
        "GET",
        "/",
        whatif.page,
        "The what-if page (HTML; asks for an API key, then calls the endpoints below)",
        html_response("The page (static HTML; its script and style are under /static/)"),
    ),
    Route(
        "GET",
        "/bundle",
        whatif.bundle,
        "The served bundle: feature schema, segments, campaigns, k evidence, comparison, map",
        plain_response("The served bundle", "BundleInfo"),
        security=SCORING_KEY,
        errors=("unauthorized", "forbidden", "too_many_requests", "not_ready"),
        components=(sc.BundleInfo,),
    ),
    Route(
        "GET",
        "/bundle/report",
        whatif.bundle_report,
        "The served bundle's HTML evidence report",
        html_response("The self-contained report written by training"),
        security=SCORING_KEY,
        errors=("unauthorized", "forbidden", "report_not_found", "too_many_requests", "not_ready"),
    ),
    Route(
        "POST",
        "/bundle/position",
        whatif.bundle_position,
        "Where one customer sits on the segment map, and the features the model sees",
        plain_response("PC1/PC2 and the imputed and derived features", "MapPosition"),
        security=SCORING_KEY,
        request=customer_request,
        errors=(
            "bad_request",
            "unauthorized",
            "forbidden",
            "payload_too_large",
            "unsupported_media_type",
            "validation_error",
            "too_many_requests",
            "not_ready",
        ),
        components=(sc.MapPosition,),
    ),
    Route(
        "POST",
        "/bench/floor",
        views.bench_floor,
        "Benchmark baseline (BENCH_FLOOR=1)",
        plain_response("A constant answer", "object"),
        security=SCORING_KEY,
        documented=False,
        enabled=lambda settings: bool(settings.BENCH_FLOOR),
    ),
)


def active_routes(settings: Settings, routes: Iterable[Route] = ROUTES) -> tuple[Route, ...]:
    """The routes ``settings`` enable."""
    return tuple(r for r in routes if r.enabled is None or r.enabled(settings))


def register_routes(app: Flask, routes: Iterable[Route]) -> None:
    """Add every route to ``app``'s URL map (endpoint = view function name)."""
    for route in routes:
        app.add_url_rule(
            route.path, endpoint=route.endpoint, view_func=route.view, methods=[route.method]
        )
