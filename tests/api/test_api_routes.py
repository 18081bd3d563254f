"""The route table drives both the URL map and the OpenAPI paths; one handler answers bad bodies."""

from __future__ import annotations

import dataclasses

import orjson
from marshmallow import Schema, fields

from api import errors, openapi
from api.extensions import get_services
from api.routes import ROUTES, SCORING_KEY, Route, register_routes
from api.views import json_response, read_json
from scoring.bundle import write_bundle


def _rules(app) -> set[tuple[str, str]]:
    return {
        (method, rule.rule)
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }


def test_url_map_and_document_come_from_the_same_table(app, client):
    documented = {(r.method, r.path) for r in ROUTES if r.documented and r.enabled is None}
    assert documented <= _rules(app)
    paths = client.get("/openapi.json").get_json()["paths"]
    in_document = {(m.upper(), p) for p, ops in paths.items() for m in ops}
    assert in_document == documented
    # every served route is either documented or marked as not documented on purpose
    undocumented = {(r.method, r.path) for r in ROUTES if not r.documented}
    assert _rules(app) <= documented | undocumented


def test_bench_floor_is_served_only_when_enabled(make_app):
    assert ("POST", "/bench/floor") not in _rules(make_app())
    assert ("POST", "/bench/floor") in _rules(make_app(BENCH_FLOOR="1"))


def test_every_error_code_the_service_raises_is_documented():
    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    codes = {cls.code for cls in subclasses(errors.ApiError)}
    assert codes <= set(openapi.ERRORS)
    for route in ROUTES:
        assert set(route.errors) <= set(openapi.ERRORS), route.path


class _Echo(Schema):
    name = fields.String(required=True)
    count = fields.Integer(required=True)


def _echo():
    """A new endpoint as another issue would add it: load with a schema, answer."""
    return json_response(_Echo().load(read_json()))


def test_a_new_route_is_one_entry_served_documented_and_validated(make_app, scoring_headers):
    app = make_app()
    route = Route(
        "POST",
        "/echo",
        _echo,
        "Echo a name",
        openapi.plain_response("The same body", "_Echo"),
        security=SCORING_KEY,
        request=openapi.plain_request("_Echo", {"one": {"name": "a", "count": 1}}),
        errors=("validation_error",),
        components=(_Echo,),
    )
    register_routes(app, [route])
    with app.app_context():
        services = get_services(app)
        services.routes = (*services.routes, route)
    client = app.test_client()
    ok = client.post("/echo", json={"name": "a", "count": 1})
    assert ok.status_code == 200 and ok.get_json() == {"name": "a", "count": 1}
    # the one ValidationError handler: 422 in the envelope, messages keyed by field
    bad = client.post("/echo", json={"name": 5})
    assert bad.status_code == 422
    body = bad.get_json()["error"]
    assert body["code"] == "validation_error"
    assert set(body["fields"]) == {"name", "count"}
    doc = client.get("/openapi.json").get_json()
    op = doc["paths"]["/echo"]["post"]
    assert op["security"] == [{"ApiKey": []}]
    assert "422" in op["responses"] and "_Echo" in doc["components"]["schemas"]


def _renamed_bundle(bundle, root, old: str, new: str):
    """``bundle`` with feature ``old`` called ``new``, written under ``root``."""

    def name(n: str) -> str:
        return new if n == old else n

    s = bundle.schema
    schema = dataclasses.replace(
        s,
        inputs=tuple(dataclasses.replace(f, name=name(f.name)) for f in s.inputs),
        derived=tuple(
            dataclasses.replace(d, numerator=name(d.numerator), denominator=name(d.denominator))
            for d in s.derived
        ),
        cluster_features=tuple(map(name, s.cluster_features)),
        log_features=tuple(map(name, s.log_features)),
        response_features=tuple(map(name, s.response_features)),
    )
    profiles = [{**p, "mean": {name(k): v for k, v in p["mean"].items()}} for p in bundle.profiles]
    copy = dataclasses.replace(
        bundle, schema=schema, profiles=profiles, manifest={"config": {}}, path=None
    )
    write_bundle(copy, root, version="renamed")


def test_examples_follow_the_served_bundle_not_a_demo_field(
    make_app, tiny_bundle, tmp_path, scoring_headers
):
    # regression: the document hard-coded the demo field order_count
    _renamed_bundle(tiny_bundle, tmp_path, "order_count", "purchases")
    client = make_app(MODEL_ROOT=str(tmp_path)).test_client()
    doc = client.get("/openapi.json").get_json()
    assert b"order_count" not in orjson.dumps(doc)
    op = doc["paths"]["/predict-segment"]["post"]
    example_422 = op["responses"]["422"]["content"]["application/json"]["examples"]
    (fields_,) = [e["value"]["error"]["fields"] for e in example_422.values()]
    assert set(fields_) <= set(tiny_bundle.schema.input_names) - {"order_count"} | {"purchases"}
    for path in ("/predict-segment", "/recommend"):
        examples = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        for example in examples["examples"].values():
            r = client.post(path, json=example["value"], headers=scoring_headers)
            assert r.status_code == 200, (path, r.data)
