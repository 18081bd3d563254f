"""The HTTP face of the scoring core: ``create_app`` builds a Flask app from settings."""

from __future__ import annotations

import logging
import time
import tomllib
from collections.abc import Callable
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson
from flask import Flask, Request, Response
from flask.globals import request_ctx
from flask.json.provider import JSONProvider
from flask.sessions import SecureCookieSessionInterface
from flask.signals import request_tearing_down
from werkzeug.routing import MapAdapter

from api.settings import Settings

__all__ = ["ServiceResponse", "create_app", "import_modules"]

log = logging.getLogger(__name__)

#: ``create_app`` config keys that are objects, not settings (test doubles)
INJECTED = ("REDIS_CLIENT",)
#: request methods counted by name in metrics; any other token a client sends counts as "other"
#: (each distinct label value is a new series: a client must not be able to add them at will)
METRIC_METHODS = frozenset(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
#: where the request's start time is kept in the WSGI environ
_START = "segment_service.start"
_clock = time.perf_counter


class OrjsonProvider(JSONProvider):
    """Flask's JSON (``jsonify``, ``request.get_json``) through orjson."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        """Serialise to a str."""
        return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY).decode()

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        """Parse JSON text."""
        return orjson.loads(s)

    def response(self, *args: Any, **kwargs: Any) -> Response:
        """A JSON response, as ``jsonify`` builds it."""
        obj = self._prepare_response_obj(args, kwargs)
        return self._app.response_class(
            orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY), mimetype="application/json"
        )


#: the modules ``create_app`` imports (deferred: see there)
APP_MODULES = (
    "api.auth",
    "api.cache",
    "api.caps",
    "api.errors",
    "api.extensions",
    "api.feedback",
    "api.limits",
    "api.metrics",
    "api.model",
    "api.online",
    "api.routes",
    "api.warm",
)


def import_modules() -> None:
    """Import what ``create_app`` needs without building anything (no app, metric or client).

    The gunicorn master calls it before forking, once PROMETHEUS_MULTIPROC_DIR is set, so that a
    worker it forks later (a replacement) starts in milliseconds: about a second of imports on
    this project's machine otherwise, on the core of the worker it replaces.
    """
    import importlib

    for name in APP_MODULES:
        importlib.import_module(name)


def create_app(config: dict[str, Any] | None = None) -> ServiceFlask:
    """Build the service: settings, logging, metrics, cache, feature store, endpoints, errors, bundle.

    ``config`` overrides environment variables by name (values checked like the environment)
    and may inject ``REDIS_CLIENT`` (any object with redis-py's get/set/ping).
    """
    # Imported here, not at the top: gunicorn.conf.py imports api.settings in the master, and
    # prometheus_client must not be imported there before PROMETHEUS_MULTIPROC_DIR is set
    # (it picks its multiprocess mode once, at import).
    from api.auth import KeyRing
    from api.cache import ProfileCache, redis_client
    from api.caps import FrequencyCaps
    from api.errors import register_error_handlers
    from api.extensions import EXTENSION, Services
    from api.feedback import FeedbackStream
    from api.limits import RateLimiter
    from api.metrics import Metrics
    from api.model import ModelState
    from api.online import FeatureStore
    from api.routes import active_routes, register_routes
    from api.warm import warm_up

    config = dict(config or {})
    injected = {k: config.pop(k) for k in INJECTED if k in config}
    settings = Settings.load(config)
    _configure_logging(settings)
    settings.warn_about(log)

    app = ServiceFlask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=settings.MAX_BODY_BYTES, JSON_SORT_KEYS=False)
    # Flask's Request reads MAX_CONTENT_LENGTH through the ``current_app`` proxy each time; a
    # request class of this app's own carries it (the same value: the setting is read once)
    app.request_class = type(
        "ServiceRequest", (Request,), {"_max_content_length": settings.MAX_BODY_BYTES}
    )
    app.json = OrjsonProvider(app)
    app.session_interface = NoSessions()
    app.url_map.strict_slashes = False

    metrics = Metrics(settings.PROMETHEUS_MULTIPROC_DIR)
    client = injected.get("REDIS_CLIENT")
    if client is None and settings.REDIS_URL:
        client = redis_client(settings.REDIS_URL, settings.REDIS_TIMEOUT_MS)
    cache = ProfileCache(
        client,
        metrics,
        prefix=settings.CACHE_PREFIX,
        ttl_seconds=settings.CACHE_TTL_SECONDS,
        memo_seconds=settings.PROFILE_MEMO_SECONDS,
    )
    model = ModelState(settings, metrics)
    routes = active_routes(settings)

    app.extensions[EXTENSION] = Services(
        settings=settings,
        metrics=metrics,
        keys=KeyRing(settings.API_KEYS, settings.ADMIN_API_KEYS),
        cache=cache,
        model=model,
        caps=FrequencyCaps(
            client,
            prefix=settings.CACHE_PREFIX,
            fail=settings.CAPS_FAIL,
            local_cache=settings.CAPS_LOCAL_CACHE,
            local_entries=settings.CAPS_LOCAL_CACHE_ENTRIES,
            summary=settings.CAPS_SUMMARY,
            seen_bits=settings.CAPS_SUMMARY_BITS,
            on_failure=metrics.count_caps_failure,
        ),
        feedback=FeedbackStream(
            client, settings.FEEDBACK_STREAM or f"{settings.CACHE_PREFIX}:feedback"
        ),
        app_version=_app_version(),
        features=FeatureStore(client, metrics, prefix=settings.CACHE_PREFIX),
        routes=routes,
        limits=RateLimiter(client, metrics, settings.limits(), prefix=settings.CACHE_PREFIX),
    )
    register_routes(app, routes)
    register_error_handlers(app)
    app.observe = metrics.observe_request
    _trust_proxies(app, settings.TRUSTED_PROXY_HOPS)
    # last, with the app whole: the bundle, warmed up before the worker says it is ready
    model.start(warm_up=partial(warm_up, app))
    return app


def _trust_proxies(app: Flask, hops: int) -> None:
    """Behind ``hops`` trusted proxies, the client address is taken from X-Forwarded-For.

    werkzeug's ProxyFix replaces ``REMOTE_ADDR`` with the address the outermost trusted proxy
    saw (the ``hops``-th entry from the right of X-Forwarded-For), so the per-address throttle
    of wrong keys and the access log see the client, not the proxy. Entries further left are
    whatever the client wrote and are never used. Off by default: without a proxy that sets the
    header, any client could choose its address.
    """
    if hops:
        from werkzeug.middleware.proxy_fix import ProxyFix

        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=0, x_host=0, x_port=0, x_prefix=0)


def _configure_logging(settings: Settings) -> None:
    level = getattr(logging, settings.LOG_LEVEL)
    logging.getLogger("api").setLevel(level)
    root = logging.getLogger()
    if not root.handlers:
        # Plain process: log to stderr. Under gunicorn its error log handlers are reused.
        gunicorn_error = logging.getLogger("gunicorn.error")
        if gunicorn_error.handlers:
            root.handlers = gunicorn_error.handlers
        else:
            logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        root.setLevel(level)


class NoSessions(SecureCookieSessionInterface):
    """Flask's sessions as they are without a secret key (this API has none): no session is
    opened and every request sees the same empty, read-only session, instead of a new one built
    per request."""

    def __init__(self) -> None:
        self._null = self.null_session_class()

    def open_session(self, app: Flask, request: Any) -> None:
        """No cookie session: Flask falls back to the null session."""
        return None

    def make_null_session(self, app: Flask) -> Any:
        """The one null session (it refuses every change, so sharing it changes nothing)."""
        return self._null


class ServiceResponse(Response):
    """Flask's Response, handing a plain answer to the server without werkzeug's general steps.

    For every answer werkzeug copies the headers into a new ``Headers`` to apply its fix-ups (a
    relative Location, Content-Location, 304/412 entity headers, a missing Content-Length) and
    wraps the body in a ``ClosingIterator`` for ``close``: ~4% of a one-customer request. An
    answer with none of that to do (status 200, exactly the Content-Type and Content-Length that
    ``set_data`` wrote, a body of one bytes object, nothing to call on close, not HEAD) is
    handed over as it is: the same status, header list and bytes. Anything else takes
    werkzeug's steps.
    """

    def _plain(self) -> bool:
        if self.status_code != 200 or self._on_close or self.direct_passthrough:
            return False
        body = self.response
        if type(body) is not list or len(body) != 1 or type(body[0]) is not bytes:
            return False
        headers = self.headers
        if len(headers) != 2:
            return False
        (first, _), (second, _) = headers
        return first == "Content-Type" and second == "Content-Length"

    def get_wsgi_headers(self, environ: dict[str, Any]) -> Any:
        """werkzeug's ``get_wsgi_headers``; a plain answer's headers as they are."""
        if self._plain():
            return self.headers  # read, never changed, by get_wsgi_response
        return super().get_wsgi_headers(environ)

    def get_app_iter(self, environ: dict[str, Any]) -> Any:
        """werkzeug's ``get_app_iter``; a plain answer's body list as it is (nothing to close)."""
        if environ["REQUEST_METHOD"] != "HEAD" and self._plain():
            return self.response
        return super().get_app_iter(environ)


class ServiceFlask(Flask):
    """Flask, counting and timing every answered request for the metrics.

    The timing starts when the WSGI call enters the app and ends when the response has been
    processed (what ``before_request``/``after_request`` hooks would measure, plus URL matching).
    Done by overriding, not by registering hooks: Flask checks every hook function for being a
    coroutine on every request (``ensure_sync``), which cost more than the metrics themselves
    (bench/RESULTS.md, instruction counts).
    """

    #: set by ``create_app``: counts one answered request (endpoint, method, status, seconds)
    observe: Callable[[str, str, int, float], None] | None = None
    response_class = ServiceResponse

    # Flask's request steps below read ``request``/``request_ctx`` attributes through
    # werkzeug's context proxies: each such read first fails the ordinary attribute look-up (an
    # AttributeError built and dropped) and then goes through the proxy, about a microsecond
    # (bench/RESULTS.md). The service registers no blueprints, before/after/teardown request
    # functions or URL value preprocessors, so the steps that would only look for them are
    # skipped while there are none; with any registered, Flask's own step runs.
    def preprocess_request(self) -> Any:
        """Flask's, when there is a URL value preprocessor or a before-request function."""
        if self.url_value_preprocessors or self.before_request_funcs:
            return super().preprocess_request()
        return None

    def dispatch_request(self) -> Any:
        """Flask's ``dispatch_request`` (3.1), with the request taken from its context once."""
        req = request_ctx._get_current_object().request  # type: ignore[attr-defined]
        if req.routing_exception is not None:
            self.raise_routing_exception(req)
        rule = req.url_rule
        if getattr(rule, "provide_automatic_options", False) and req.method == "OPTIONS":
            return self.make_default_options_response()
        return self.ensure_sync(self.view_functions[rule.endpoint])(**req.view_args)

    def do_teardown_request(self, *args: Any) -> None:
        """Flask's; without teardown functions only its ``request_tearing_down`` signal."""
        if self.teardown_request_funcs or not args:
            super().do_teardown_request(*args)
            return
        request_tearing_down.send(self, _async_wrapper=self.ensure_sync, exc=args[0])

    #: what Flask's URL binding computes from a request's host fields, by those fields
    _bound: dict[tuple, tuple[str, str, str | None, str]] | None = None

    def create_url_adapter(self, request: Any) -> MapAdapter | None:
        """Flask's URL adapter for ``request``, with the host part bound once per host.

        Flask (through werkzeug's ``bind_to_environ``) reads the host twice, lower-cases it and
        IDNA-encodes it for every request (~3% of a one-customer request). The result depends
        only on the environ's host fields; it is kept for up to 256 of them and the adapter is
        built from it and the request's path, method and query. Configurations that make the
        binding depend on more (host or subdomain matching, SERVER_NAME, TRUSTED_HOSTS) take
        Flask's own path every time, and so does every first request of a host (which raises
        what Flask raises for a bad one).
        """
        config = self.config
        if (
            request is None
            or self.url_map.host_matching
            or self.subdomain_matching
            or config["SERVER_NAME"] is not None
            or config["TRUSTED_HOSTS"] is not None
        ):
            return super().create_url_adapter(request)
        env = request.environ
        key = (
            env.get("HTTP_HOST"),
            env.get("SERVER_NAME"),
            env.get("SERVER_PORT"),
            env["wsgi.url_scheme"],
            env.get("HTTP_CONNECTION"),
            env.get("HTTP_UPGRADE"),
            self.url_map.default_subdomain,
        )
        bound = self._bound
        if bound is None:
            bound = self._bound = {}
        known = bound.get(key)
        if known is None:
            adapter = super().create_url_adapter(request)
            if len(bound) >= 256:
                bound.clear()
            bound[key] = (request.host, adapter.server_name, adapter.subdomain, adapter.url_scheme)
            return adapter
        host, server_name, subdomain, scheme = known
        request.host = host
        script_name = _wsgi_string(env, "SCRIPT_NAME")
        path_info = _wsgi_string(env, "PATH_INFO")
        return MapAdapter(
            self.url_map,
            server_name,
            "/" if script_name is None else script_name,
            subdomain,
            scheme,
            "/" if path_info is None else path_info,
            env["REQUEST_METHOD"],
            _wsgi_string(env, "QUERY_STRING"),
        )

    def wsgi_app(self, environ: dict[str, Any], start_response: Any) -> Any:
        """Flask's WSGI entry, noting when the request entered the app."""
        environ[_START] = _clock()
        return super().wsgi_app(environ, start_response)

    def process_response(self, response: Response) -> Response:
        """Flask's response processing, then the request's metrics (every answer passes here,
        error handlers' included)."""
        ctx = request_ctx._get_current_object()  # type: ignore[attr-defined]
        if (
            ctx._after_request_functions
            or self.after_request_funcs
            or not self.session_interface.is_null_session(ctx._session)
        ):
            response = super().process_response(response)
        observe = self.observe
        if observe is not None:
            req = ctx.request
            start = req.environ.get(_START)
            rule = req.url_rule
            method = req.method
            observe(
                rule.rule if rule is not None else "unmatched",
                method if method in METRIC_METHODS else "other",
                response.status_code,
                _clock() - start if start is not None else 0.0,
            )
        return response


def _wsgi_string(environ: dict[str, Any], name: str) -> str | None:
    """An environ string as werkzeug's ``bind_to_environ`` reads it (latin-1 bytes as UTF-8)."""
    value = environ.get(name)
    return None if value is None else value.encode("latin1").decode(errors="replace")


def _app_version() -> str:
    try:
        return metadata.version("segment-service")
    except metadata.PackageNotFoundError:
        pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
        try:
            return str(tomllib.loads(pyproject.read_text())["project"]["version"])
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "unknown"
