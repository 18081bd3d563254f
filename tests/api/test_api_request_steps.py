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
