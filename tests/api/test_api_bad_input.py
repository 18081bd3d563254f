"""Every kind of bad input answers 4xx in the one error envelope, never 500, never a traceback."""

from __future__ import annotations

import orjson
import pytest

ENDPOINTS = ["/predict-segment", "/recommend"]


def _check_envelope(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.data
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert "Traceback" not in response.get_data(as_text=True)
    return body["error"]


# (description, body change, field expected in the error)
FIELD_CASES = [
    ("unknown field", {"favourite_colour": "red"}, "favourite_colour"),
    ("string for a number", {"total_spend": "1250.0"}, "total_spend"),
    ("string integer", {"order_count": "14"}, "order_count"),
    ("boolean for a number", {"order_count": True}, "order_count"),
    ("list for a number", {"order_count": [1]}, "order_count"),
    ("object for a number", {"order_count": {"n": 1}}, "order_count"),
    ("null required number", {"order_count": None}, "order_count"),
    ("negative count", {"order_count": -1}, "order_count"),
    ("negative amount", {"total_spend": -0.01}, "total_spend"),
    ("negative days", {"days_since_last_purchase": -3}, "days_since_last_purchase"),
    ("ratio above 1", {"discount_usage": 1.5}, "discount_usage"),
    ("ratio below 0", {"return_rate": -0.1}, "return_rate"),
    ("empty customer id", {"customer_id": ""}, "customer_id"),
    ("boolean customer id", {"customer_id": True}, "customer_id"),
    ("null customer id", {"customer_id": None}, "customer_id"),
    ("long customer id", {"customer_id": "x" * 129}, "customer_id"),
]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize(("case", "change", "field"), FIELD_CASES, ids=[c[0] for c in FIELD_CASES])
def test_invalid_field_answers_422_keyed_by_field(
    client, scoring_headers, demo_request, endpoint, case, change, field
):
    data = orjson.dumps({**demo_request, **change})
    r = client.post(endpoint, data=data, headers=scoring_headers, content_type="application/json")
    error = _check_envelope(r, 422, "validation_error")
    assert field in error["fields"]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_missing_required_field(client, scoring_headers, demo_request, endpoint):
    body = {k: v for k, v in demo_request.items() if k != "order_count"}
    error = _check_envelope(
        client.post(endpoint, json=body, headers=scoring_headers), 422, "validation_error"
    )
    assert list(error["fields"]) == ["order_count"]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
# orjson refuses these literals (1e400 overflows to infinity), so they are bad JSON: 400
@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
def test_nan_and_infinity_literals_are_refused(
    client, scoring_headers, demo_request, endpoint, literal
):
    data = orjson.dumps({**demo_request, "total_spend": 0}).replace(
        b'"total_spend":0', b'"total_spend":' + literal
    )
    r = client.post(endpoint, data=data, headers=scoring_headers, content_type="application/json")
    _check_envelope(r, 400, "bad_request")


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("data", [b"", b"{", b"not json", b"\xff\xfe", b"{'a': 1}"])
def test_empty_or_malformed_body_is_400(client, scoring_headers, endpoint, data):
    r = client.post(endpoint, data=data, headers=scoring_headers, content_type="application/json")
    _check_envelope(r, 400, "bad_request")


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("body", [[], [1, 2], "text", 3, None])
def test_json_that_is_not_an_object_is_422(client, scoring_headers, endpoint, body):
    r = client.post(
        endpoint, data=orjson.dumps(body), headers=scoring_headers, content_type="application/json"
    )
    _check_envelope(r, 422, "validation_error")


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_wrong_content_type_is_415(client, scoring_headers, demo_request, endpoint, content_type):
    kwargs = {"content_type": content_type} if content_type else {}
    r = client.post(endpoint, data=orjson.dumps(demo_request), headers=scoring_headers, **kwargs)
    _check_envelope(r, 415, "unsupported_media_type")


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_oversize_body_is_413(make_app, scoring_headers, demo_request, endpoint):
    client = make_app(MAX_BODY_BYTES=2048).test_client()
    body = {"customers": [demo_request] * 40}
    assert len(orjson.dumps(body)) > 2048
    _check_envelope(
        client.post(endpoint, json=body, headers=scoring_headers), 413, "payload_too_large"
    )


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_body_read_from_a_server_that_ends_it(make_app, scoring_headers, demo_request, endpoint):
    """gunicorn sets wsgi.input_terminated: read_json then reads the stream directly
    (api/views.py); same answers, same 413 and 400 as through werkzeug's wrappers."""
    client = make_app(MAX_BODY_BYTES=2048).test_client()
    ended = {"environ_overrides": {"wsgi.input_terminated": True}}
    plain = client.post(endpoint, json=demo_request, headers=scoring_headers)
    r = client.post(endpoint, json=demo_request, headers=scoring_headers, **ended)
    assert r.status_code == 200 and r.get_json() == plain.get_json()
    big = {"customers": [demo_request] * 40}
    _check_envelope(
        client.post(endpoint, json=big, headers=scoring_headers, **ended), 413, "payload_too_large"
    )
    empty = client.post(
        endpoint, data=b"", content_type="application/json", headers=scoring_headers, **ended
    )
    _check_envelope(empty, 400, "bad_request")


def test_default_body_limit_fits_a_full_batch(client, scoring_headers, demo_request):
    # 1,000 realistic customers must fit MAX_BODY_BYTES' default.
    body = {
        "customers": [{**demo_request, "customer_id": f"customer-{i:08d}"} for i in range(1000)]
    }
    r = client.post("/recommend", json=body, headers=scoring_headers)
    assert r.status_code == 200
    assert len(r.get_json()["results"]) == 1000


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_too_many_batch_items_is_422_on_customers(
    make_app, scoring_headers, demo_request, endpoint
):
    client = make_app(MAX_BATCH_ITEMS=3).test_client()
    r = client.post(endpoint, json={"customers": [demo_request] * 4}, headers=scoring_headers)
    error = _check_envelope(r, 422, "validation_error")
    assert list(error["fields"]) == ["customers"]
    r = client.post(endpoint, json={"customers": [demo_request] * 3}, headers=scoring_headers)
    assert r.status_code == 200


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("customers", [[], "abc", {"a": 1}, None])
def test_bad_customers_container_is_422(client, scoring_headers, endpoint, customers):
    r = client.post(endpoint, json={"customers": customers}, headers=scoring_headers)
    error = _check_envelope(r, 422, "validation_error")
    assert "customers" in error["fields"]


def test_unknown_top_level_field_in_batch_is_422(client, scoring_headers, demo_request):
    r = client.post(
        "/predict-segment", json={"customers": [demo_request], "top_k": 2}, headers=scoring_headers
    )
    error = _check_envelope(r, 422, "validation_error")
    assert "top_k" in error["fields"]


OPTION_CASES = [
    ("top_k zero", {"top_k": 0}, "top_k"),
    ("top_k above pool", {"top_k": 99}, "top_k"),
    ("top_k string", {"top_k": "2"}, "top_k"),
    ("top_k float", {"top_k": 2.0}, "top_k"),
    ("top_k boolean", {"top_k": True}, "top_k"),
    ("unknown channel", {"channel": "carrier_pigeon"}, "channel"),
    ("channel number", {"channel": 3}, "channel"),
    ("exclude not a list", {"exclude": "cashback"}, "exclude"),
    ("exclude bad id", {"exclude": ["no spaces allowed"]}, "exclude"),
    ("exclude number", {"exclude": [1]}, "exclude"),
    ("explain string", {"explain": "true"}, "explain"),
    ("explain number", {"explain": 1}, "explain"),
]


@pytest.mark.parametrize(
    ("case", "change", "field"), OPTION_CASES, ids=[c[0] for c in OPTION_CASES]
)
@pytest.mark.parametrize("batch", [False, True], ids=["single", "batch"])
def test_invalid_recommend_option_is_422(
    client, scoring_headers, demo_request, case, change, field, batch
):
    body = {"customers": [demo_request], **change} if batch else {**demo_request, **change}
    error = _check_envelope(
        client.post("/recommend", json=body, headers=scoring_headers), 422, "validation_error"
    )
    assert field in error["fields"]


def test_options_are_not_accepted_by_predict_segment(client, scoring_headers, demo_request):
    r = client.post("/predict-segment", json={**demo_request, "top_k": 1}, headers=scoring_headers)
    assert "top_k" in _check_envelope(r, 422, "validation_error")["fields"]


def test_404_and_405_use_the_envelope(client, scoring_headers):
    _check_envelope(client.get("/no-such-thing"), 404, "not_found")
    r = client.get("/predict-segment", headers=scoring_headers)
    _check_envelope(r, 405, "method_not_allowed")
    assert "POST" in r.headers["Allow"]
    _check_envelope(client.post("/healthz"), 405, "method_not_allowed")


def test_unexpected_error_is_500_without_detail_or_echo(
    make_app, scoring_headers, demo_request, caplog
):
    app = make_app()
    from api.extensions import get_services

    engine = get_services(app).model.current.engine

    def broken(record):
        raise RuntimeError("secret internal detail")

    engine.predict_segment_one = broken  # an instance attribute: only this app's engine breaks
    r = app.test_client().post("/predict-segment", json=demo_request, headers=scoring_headers)
    error = _check_envelope(r, 500, "internal_error")
    text = r.get_data(as_text=True)
    assert "secret internal detail" not in text
    assert demo_request["customer_id"] not in text
    assert "fields" not in error
    # ... while the server log has the traceback
    assert any(
        "secret internal detail" in (rec.exc_text or "") or rec.exc_info for rec in caplog.records
    )
