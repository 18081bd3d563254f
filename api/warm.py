"""A new worker's first requests, answered in-process before it says it is ready.

After a fork, the first request a worker answers writes to thousands of objects it shares with
the gunicorn master (reference counts, the interpreter's specialised bytecode), each write
copying a page: ~760 pages and ~4.5 ms of CPU on the production-sized bundle, which every
request queued behind it waited for (bench/RESULTS.md). :func:`warm_up` takes that cost before
the worker is ready, while the worker it replaces still serves (at idle priority there: see
api/priority.py), leaving ~1 ms of it to the first real request.

Nothing is counted, sent or stored: the model scores the OpenAPI document's example customer
(the scoring core is pure; the views' steps that reach Redis or the metrics are not taken), and
the app answers one ``GET /healthz`` with its metrics observer detached, before any request can
arrive, and is left as if it had answered none. A warm-up that fails is logged and changes
nothing else.
"""

from __future__ import annotations

import logging
from typing import Any

from api.model import LoadedModel
from api.openapi import example_customer
from api.views import json_response, targeting_options

log = logging.getLogger(__name__)

#: what the app is asked during the warm-up (it reaches no service and no model)
PATH = "/healthz"


def warm_up(app: Any, loaded: LoadedModel) -> None:
    """Score an example customer with ``loaded`` and answer ``GET /healthz`` through ``app``."""
    try:
        _score(loaded)
        _answer(app)
    except Exception:  # a warm-up only saves time; it never stops a start
        log.warning(
            "warm-up of bundle %s failed (first requests are slower)", loaded.version, exc_info=True
        )


def _score(loaded: LoadedModel) -> None:
    """What one-customer /predict-segment and /recommend ask of the schemas and the engine."""
    schemas, engine = loaded.schemas, loaded.engine
    customer = example_customer(loaded)
    json_response(engine.predict_segment_one(schemas.load_customer(customer)))
    if engine.has_response_model:
        record, options = schemas.load_recommend(customer)
        options = dict(options)
        targeting_options(engine, options)
        json_response(engine.recommend_one(record, **options))


def _answer(app: Any) -> None:
    """One request through Flask and werkzeug, not counted (the app serves nothing yet)."""
    from werkzeug.test import EnvironBuilder

    environ = EnvironBuilder(path=PATH, method="GET").get_environ()
    observe, app.observe = app.observe, None
    try:
        answer = app(environ, lambda status, headers, exc_info=None: None)
        try:
            for _ in answer:
                pass
        finally:
            close = getattr(answer, "close", None)
            if close is not None:
                close()
    finally:
        app.observe = observe
        # Flask refuses new hooks (before_request, ...) once it has served a request: this one
        # was not served to anyone, so the app stays open to them as create_app left it
        app._got_first_request = False
