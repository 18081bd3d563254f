"""ServiceFlask skips Flask's request steps that would find nothing to run; once an app registers
a before-request, after-request or teardown function, Flask's own steps run it as usual."""

from __future__ import annotations

import json

import pytest

from tests.api.conftest import SCORING


def test_registered_request_functions_still_run_in_order(make_app, demo_request):
    app = make_app()
    calls = []
    app.before_request(lambda: calls.append("before"))

    def after(response):
        calls.append("after")
        response.headers["X-After"] = "1"
        return response

    app.after_request(after)
    app.teardown_request(lambda exc: calls.append(("teardown", exc)))
    response = app.test_client().post("/predict-segment", json=demo_request, headers=SCORING)
    assert response.status_code == 200
    assert response.headers["X-After"] == "1"
    assert calls == ["before", "after", ("teardown", None)]


def test_a_before_request_answer_replaces_the_view(make_app, demo_request):
    app = make_app()
    app.before_request(lambda: ("held", 418))
    response = app.test_client().post("/predict-segment", json=demo_request, headers=SCORING)
    assert (response.status_code, response.get_data()) == (418, b"held")


def test_the_body_limit_is_the_apps_own(make_app, demo_request):
    small, large = make_app(MAX_BODY_BYTES="1024"), make_app()
    body = json.dumps(demo_request) + " " * 1100  # whitespace: valid JSON over 1,024 bytes
    for app, status in ((small, 413), (large, 200), (small, 413)):
        response = app.test_client().post(
            "/predict-segment", data=body, content_type="application/json", headers=SCORING
        )
        assert response.status_code == status


@pytest.mark.parametrize(
    "length", ["0", "5", "0012", "+5", " 5", "5 ", "-1", "abc", "\u0663", "", None, "1" * 30]
)
@pytest.mark.parametrize("transfer", [None, "chunked", "identity", "gzip, chunked"])
def test_content_length_is_werkzeugs(app, length, transfer):
    from api.views import content_length

    environ = {"CONTENT_LENGTH": length, "HTTP_TRANSFER_ENCODING": transfer}
    environ = {k: v for k, v in environ.items() if v is not None}
    with app.test_request_context("/recommend", method="POST", environ_overrides=environ):
        from flask import request

        req = request._get_current_object()
        for key, value in environ.items():  # the test client sets its own: put ours back
            req.environ[key] = value
        if length is None:
            req.environ.pop("CONTENT_LENGTH", None)
        assert content_length(req) == app.request_class(req.environ).content_length


ENVIRONS = [
    {},
    {"HTTP_HOST": "Scoring.Example.COM:8000"},
    {"HTTP_HOST": "b\\xc3\\xbccher.example"},
    {"SCRIPT_NAME": "/api", "PATH_INFO": "/recommend/", "QUERY_STRING": "a=1&b=%C3%BC"},
    {"HTTP_CONNECTION": "keep-alive, Upgrade", "HTTP_UPGRADE": "websocket"},
    {"wsgi.url_scheme": "https", "HTTP_HOST": "x:443"},
    {"PATH_INFO": "/caf\\xc3\\xa9"},
]


def _adapter_fields(adapter):
    names = ("server_name", "script_name", "subdomain", "url_scheme", "path_info")
    return {n: getattr(adapter, n) for n in names} | {
        "method": adapter.default_method,
        "query": adapter.query_args,
    }


def test_url_adapters_are_flasks_also_when_remembered(app):
    from flask import Flask

    for overrides in ENVIRONS:
        for _ in range(2):  # the second time from what the first one bound
            with app.test_request_context("/predict-segment", method="POST") as ctx:
                ctx.request.environ.update(overrides)
                flask_req = app.request_class(ctx.request.environ)
                theirs = Flask.create_url_adapter(app, flask_req)
                req = app.request_class(ctx.request.environ)
                ours = app.create_url_adapter(req)
                assert _adapter_fields(ours) == _adapter_fields(theirs), overrides
                assert req.host == flask_req.host, overrides
    assert app._bound  # the host part was remembered


def _wsgi(response, method="POST"):
    seen = {}

    def start_response(status, headers, exc_info=None):
        seen["status"], seen["headers"] = status, headers

    environ = {"REQUEST_METHOD": method, "SERVER_NAME": "x", "SERVER_PORT": "80"}
    environ["wsgi.url_scheme"] = "http"
    body = b"".join(response(environ, start_response))
    return seen["status"], seen["headers"], body


@pytest.mark.parametrize("method", ["POST", "HEAD"])
@pytest.mark.parametrize(
    "case",
    ["plain", "created", "extra header", "text body", "two pieces", "location", "not modified"],
)
def test_service_responses_answer_as_werkzeug_does(case, method):
    from flask import Response

    from api import ServiceResponse

    def build(cls):
        body = "café" if case == "text body" else b'{"ok":true}'
        response = cls(body, content_type="application/json")
        if case == "created":
            response.status_code = 201
        elif case == "extra header":
            response.headers["X-Request-Id"] = "r-1"
        elif case == "two pieces":
            response.response = [b'{"ok"', b":true}"]
        elif case == "location":
            response.headers["Location"] = "/recommend"
        elif case == "not modified":
            response.status_code = 304
        return response

    assert _wsgi(build(ServiceResponse), method) == _wsgi(build(Response), method)


def test_a_response_with_something_to_close_is_closed():
    from api import ServiceResponse

    closed = []
    response = ServiceResponse(b'{"ok":true}', content_type="application/json")
    response.call_on_close(lambda: closed.append(True))
    iterable = response({"REQUEST_METHOD": "POST"}, lambda status, headers: None)
    assert b"".join(iterable) == b'{"ok":true}' and not closed
    iterable.close()  # what the server does when it is done with the body
    assert closed == [True]


def test_a_plain_answer_is_handed_over_as_it_is():
    from api import ServiceResponse

    response = ServiceResponse(b'{"ok":true}', content_type="application/json")
    assert response.get_app_iter({"REQUEST_METHOD": "POST"}) is response.response
    assert response.get_wsgi_headers({}) is response.headers
