"""Regressions found by fuzzing the API: each hostile input answers 4xx in the envelope, never 5xx.

Covers numbers that overflow the model (answered as null before), bodies streamed past the size
limit without Content-Length, compressed bodies, the reload version ``current``, request methods
that would add metric series, and gunicorn's own error page for requests it cannot parse.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import math
import socket
from pathlib import Path

import numpy as np
import orjson
import pytest

from api.errors import protocol_error_response
from api.schemas import MAX_MAGNITUDE

ENDPOINTS = ["/predict-segment", "/recommend"]
ROOT = Path(__file__).resolve().parents[2]


def _error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.data
    body = response.get_json()
    assert set(body) == {"error"} and body["error"]["code"] == code
    return body["error"]


def _post_raw(client, path: str, data: bytes, headers: dict, **kwargs):
    return client.post(path, data=data, headers=headers, content_type="application/json", **kwargs)


# ---- numbers the model cannot take ---------------------------------------------------------------
# (case, raw JSON value spliced into the body, field that must carry the message)
OVERFLOW_CASES = [
    ("amount near float max", "total_spend", b"1.7976931348623157e308"),
    ("amount 2**64 as an integer", "total_spend", b"18446744073709551616"),
    ("days just past the cap", "days_since_last_purchase", b"1000000000000001"),
    ("subnormal order count under a normal spend", "order_count", b"5e-324"),
    ("tiny order count under a normal spend", "order_count", b"1e-13"),
]


def _with_raw(demo_request: dict, field: str, literal: bytes) -> bytes:
    body = orjson.dumps({**demo_request, field: 0})
    return body.replace(f'"{field}":0'.encode(), f'"{field}":'.encode() + literal)


def test_the_engine_alone_would_answer_nan_for_an_overflowing_ratio(tiny_bundle, demo_request):
    # Why the edge check exists: 1250 / 5e-324 overflows avg_order_value and the distance is NaN,
    # which orjson writes as null in a 200 answer.
    from scoring.engine import ScoringEngine

    engine = ScoringEngine(tiny_bundle)
    with np.errstate(all="ignore"):
        result = engine.predict_segment(
            engine.batch_from_records([{**demo_request, "order_count": 5e-324}])
        )[0]
    assert not math.isfinite(result["distance"])


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize(
    ("case", "field", "literal"), OVERFLOW_CASES, ids=[c[0] for c in OVERFLOW_CASES]
)
def test_overflowing_numbers_are_422_on_the_field(
    client, scoring_headers, demo_request, endpoint, case, field, literal
):
    r = _post_raw(client, endpoint, _with_raw(demo_request, field, literal), scoring_headers)
    error = _error(r, 422, "validation_error")
    assert list(error["fields"]) == [field]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_an_overflowing_batch_item_gets_its_own_error(
    client, scoring_headers, demo_request, endpoint
):
    body = {"customers": [{**demo_request, "order_count": 5e-324}, demo_request]}
    r = client.post(endpoint, json=body, headers=scoring_headers)
    assert r.status_code == 200
    first, second = r.get_json()["results"]
    assert first["error"]["code"] == "validation_error"
    assert list(first["error"]["fields"]) == ["order_count"]
    assert math.isfinite(second["distance"])


@pytest.mark.parametrize(
    "change",
    [
        {"total_spend": MAX_MAGNITUDE},
        {"total_spend": MAX_MAGNITUDE, "order_count": 1},
        {"total_spend": 0, "order_count": 5e-324},  # 0 / tiny is 0: fine
        {"order_count": 0},  # no orders: the derived feature takes its fill value
        {"total_spend": -0.0, "discount_usage": -0.0},
        {"days_since_last_purchase": 5e-324, "mobile_usage": None},
    ],
)
@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_extreme_values_inside_the_domain_get_finite_answers(
    client, scoring_headers, demo_request, endpoint, change
):
    r = client.post(endpoint, json={**demo_request, **change}, headers=scoring_headers)
    assert r.status_code == 200, r.data
    answer = r.get_json()
    assert math.isfinite(answer["distance"])
    for campaign in answer.get("campaigns", []):
        assert math.isfinite(campaign["probability"])
        assert math.isfinite(campaign["expected_value"])


def test_openapi_documents_the_magnitude_cap(client):
    doc = client.get("/openapi.json").get_json()
    schema = next(
        s for name, s in doc["components"]["schemas"].items() if name.startswith("Customer")
    )
    assert schema["properties"]["total_spend"]["maximum"] == MAX_MAGNITUDE
    assert schema["properties"]["total_spend"]["minimum"] == 0


def test_openapi_documents_integer_customer_ids_as_they_are_echoed(
    client, scoring_headers, demo_request
):
    r = client.post(
        "/predict-segment", json={**demo_request, "customer_id": 0}, headers=scoring_headers
    )
    assert r.get_json()["customer_id"] == 0
    doc = client.get("/openapi.json").get_json()
    documented = [
        s["properties"]["customer_id"]
        for s in doc["components"]["schemas"].values()
        if "customer_id" in s.get("properties", {})
    ]
    assert len(documented) >= 4  # requests and answers
    for prop in documented:
        assert {alt["type"] for alt in prop["anyOf"]} == {"string", "integer"}


# ---- bodies --------------------------------------------------------------------------------------
def _streamed(client, body: bytes, headers: dict):
    """POST ``body`` without Content-Length, as a server that de-chunks the stream passes it."""
    return client.post(
        "/predict-segment",
        input_stream=io.BytesIO(body),
        headers={**headers, "Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )


def test_streamed_body_past_the_limit_is_413(make_app, scoring_headers, demo_request):
    client = make_app(MAX_BODY_BYTES=1024).test_client()
    # Valid JSON padded past the limit: werkzeug alone would hand over the first 1,024 bytes
    # and the truncated body would have been scored.
    body = orjson.dumps(demo_request).ljust(1025)
    _error(_streamed(client, body, scoring_headers), 413, "payload_too_large")
    assert _streamed(client, orjson.dumps(demo_request), scoring_headers).status_code == 200
    assert _streamed(client, body[:1024], scoring_headers).status_code == 200


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "gzip, identity"])
def test_compressed_body_is_415(client, scoring_headers, demo_request, endpoint, encoding):
    headers = {**scoring_headers, "Content-Encoding": encoding}
    r = _post_raw(client, endpoint, gzip.compress(orjson.dumps(demo_request)), headers)
    error = _error(r, 415, "unsupported_media_type")
    assert "Content-Encoding" in error["message"]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize(
    ("content_type", "encoding"),
    [
        ("application/json; charset=utf-8", None),
        ("application/json;charset=UTF-8", "identity"),
        ("Application/JSON", ""),
    ],
)
def test_plain_json_with_parameters_is_accepted(
    client, scoring_headers, demo_request, endpoint, content_type, encoding
):
    headers = {**scoring_headers, "Content-Type": content_type}
    if encoding is not None:
        headers["Content-Encoding"] = encoding
    r = client.post(endpoint, data=orjson.dumps(demo_request), headers=headers)
    assert r.status_code == 200, r.data


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"[" * 2000 + b"]" * 2000, "depth"),
        (b'{"customer_id": ' + b"9" * 400 + b"}", "number"),
        (b'{"total_spend": 1e999}', "number"),
        (b'{"secret-looking-text": 1} trailing', "after"),
        (b"\xef\xbb\xbf{}", "BOM"),
    ],
)
def test_bad_json_says_what_and_where_without_quoting_the_body(client, scoring_headers, data, says):
    error = _error(_post_raw(client, "/predict-segment", data, scoring_headers), 400, "bad_request")
    assert says in error["message"] and "column" in error["message"]
    assert "secret-looking-text" not in error["message"] and "999" not in error["message"]


# ---- operators and metrics -----------------------------------------------------------------------
def test_reload_of_the_current_link_by_name_is_422(client, admin_headers):
    r = client.post("/admin/reload", json={"version": "current"}, headers=admin_headers)
    error = _error(r, 422, "validation_error")
    assert list(error["fields"]) == ["version"]
    assert client.post("/admin/reload", json={}, headers=admin_headers).status_code == 200


def test_unknown_methods_share_one_metric_label(app, client, read_metric):
    for method in ("BREW", "XYZZY", "PROPFIND"):
        assert client.open("/no-such-thing", method=method).status_code == 404
    client.open("/no-such-thing", method="DELETE")
    labels = {"endpoint": "unmatched", "status": "404"}
    assert read_metric(app, "segsvc_http_requests_total", method="other", **labels) == 3
    assert read_metric(app, "segsvc_http_requests_total", method="DELETE", **labels) == 1
    assert read_metric(app, "segsvc_http_requests_total", method="BREW", **labels) == 0


# ---- gunicorn's own error page -------------------------------------------------------------------
@pytest.mark.parametrize("status", [400, 403, 414, 417, 431, 500, 501])
def test_protocol_errors_are_whole_responses_in_the_envelope(status):
    raw = protocol_error_response(status)
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith(f"HTTP/1.1 {status} ")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert headers["Content-Type"] == "application/json"
    assert int(headers["Content-Length"]) == len(body)
    error = orjson.loads(body)["error"]
    assert set(error) == {"code", "message"} and error["code"] != "http_error"


def _gunicorn_config():
    spec = importlib.util.spec_from_file_location(
        "gunicorn_conf_under_test", ROOT / "gunicorn.conf.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gunicorn_workers_answer_unparseable_requests_in_the_envelope(monkeypatch):
    from gunicorn import util

    conf = _gunicorn_config()
    monkeypatch.setattr(util, "write_error", util.write_error)  # restored after the test
    monkeypatch.setattr(conf.gc, "freeze", lambda: None)
    conf.post_worker_init(None)
    assert util.write_error is conf._write_error_envelope

    server, client = socket.socketpair()
    with server, client:
        # gunicorn passes the offending header in ``mesg``: it must not reach the client.
        util.write_error(server, 400, "Bad Request", "Invalid HTTP Header: 'X-Secret-Value'")
        server.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := client.recv(4096):
            received += chunk
    assert received == protocol_error_response(400)
    assert b"X-Secret-Value" not in received
