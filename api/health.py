"""Open operational endpoints: /healthz, /readyz, /version, /metrics and /openapi.json."""

from __future__ import annotations

import os

from flask import Response

from api.extensions import get_services
from api.openapi import openapi_document
from api.views import json_response


def healthz() -> Response:
    """The process answers (nothing else is checked)."""
    return json_response({"status": "ok"})


def readyz() -> Response:
    """200 once this worker has a verified bundle loaded, else 503; every worker is listed.

    Under gunicorn, ``workers`` lists each live worker of the server (from the worker roster):
    pid, ready, and the version it serves, so one answer shows a worker that cannot serve or a
    fleet split across versions. Redis is reported but not required.
    """
    services = get_services()
    services.model.poll()
    loaded = services.model.current
    body = {
        "ready": loaded is not None,
        "model_version": loaded.version if loaded else None,
        "redis": services.cache.redis_state(),
    }
    workers = _workers(services)
    if workers is not None:
        body["pid"] = os.getpid()
        body["workers"] = workers
        body["workers_ready"] = sum(1 for w in workers if w["ready"])
    return json_response(body, 200 if loaded is not None else 503)


def _workers(services) -> list[dict] | None:
    """Every live worker's state from the roster (None without one: a single process)."""
    roster = services.model.roster
    if roster is None:
        return None
    return [
        {"pid": e["pid"], "ready": bool(e.get("ready")), "model_version": e.get("version")}
        for e in roster.entries()
    ]


def version() -> Response:
    """The served model version, when its bundle was made, its segments, and the app version."""
    services = get_services()
    loaded = services.model.serving()
    return json_response(
        {
            "model_version": loaded.version,
            "created_at": loaded.bundle.manifest.get("created_at"),
            "k": loaded.bundle.n_segments,
            "segment_names": loaded.engine.segment_names,
            "has_response_model": loaded.engine.has_response_model,
            # how campaign probabilities are computed: compiled trees, or LightGBM and why
            "propensity": None
            if loaded.bundle.compiled_status is None
            else loaded.bundle.compiled_status.describe(),
            # the same for an uplift bundle's control model (null without one)
            "control_propensity": None
            if loaded.bundle.compiled_control_status is None
            else loaded.bundle.compiled_control_status.describe(),
            "app_version": services.app_version,
            **_versions_served(services),
        }
    )


def _versions_served(services) -> dict:
    """``{"workers": {version: number of ready workers}}`` under gunicorn, else nothing."""
    workers = _workers(services)
    if workers is None:
        return {}
    served: dict[str, int] = {}
    for w in workers:
        if w["ready"]:
            served[w["model_version"]] = served.get(w["model_version"], 0) + 1
    return {"workers": served}


def metrics() -> Response:
    """Prometheus text format, summed over every gunicorn worker, plus the stream job's counters."""
    services = get_services()
    services.model.poll()  # an idle worker scraped only for metrics still follows reloads
    # The stream job's totals live in Redis (one hash), added to this process's metrics.
    body = services.metrics.exposition() + services.features.stream_exposition()
    return Response(body, mimetype=None, content_type=services.metrics.content_type)


def openapi() -> Response:
    """The OpenAPI 3 document of the served model version, generated from the schemas."""
    services = get_services()
    loaded = services.model.serving()
    doc = services.openapi.get(loaded.version)
    if doc is None:
        doc = openapi_document(loaded, services)
        services.openapi[loaded.version] = doc
    return Response(doc, mimetype="application/json")
