"""Per-app state, kept in ``app.extensions`` and reached through one getter."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flask import current_app

from api.auth import KeyRing
from api.cache import ProfileCache
from api.caps import FrequencyCaps
from api.feedback import FeedbackStream
from api.limits import RateLimiter
from api.metrics import Metrics
from api.model import ModelState
from api.online import FeatureStore
from api.settings import Settings

EXTENSION = "segment_service"


@dataclass
class Services:
    """Everything the views need, built once by ``create_app``."""

    settings: Settings
    metrics: Metrics
    keys: KeyRing
    cache: ProfileCache
    model: ModelState
    app_version: str
    #: stored features for requests by customer id (disabled without Redis)
    features: FeatureStore
    #: frequency caps (Redis counters; disabled without Redis)
    caps: FrequencyCaps
    #: the feedback stream (POST /feedback, hold-out records)
    feedback: FeedbackStream
    #: the registered routes (api/routes.py): /openapi.json documents these
    routes: tuple = ()
    #: rate limits (api/limits.py; off unless configured)
    limits: RateLimiter | None = None
    #: OpenAPI documents already generated, by model version
    openapi: dict[str, bytes] = field(default_factory=dict)


def get_services(app: Any = None) -> Services:
    """The services of ``app`` (default: the app handling the current request)."""
    if app is None:
        # the app itself, not an attribute through the proxy: a proxied attribute first fails
        # the ordinary look-up (an AttributeError built and dropped) on every request
        app = current_app._get_current_object()  # type: ignore[attr-defined]
    return app.extensions[EXTENSION]
