"""GET /openapi.json: a valid OpenAPI 3 document generated from the schemas, with real examples."""

from __future__ import annotations

import pytest

from api import schemas as sc


@pytest.fixture
def document(client) -> dict:
    """The served OpenAPI document."""
    r = client.get("/openapi.json")
    assert r.status_code == 200
    return r.get_json()


def test_document_is_valid_openapi(document):
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(document)


def test_document_structure(document, services):
    assert document["openapi"].startswith("3.")
    assert {
        "/predict-segment",
        "/recommend",
        "/healthz",
        "/readyz",
        "/version",
        "/metrics",
        "/admin/reload",
    } <= set(document["paths"])
    schemas = document["components"]["schemas"]
    customer = schemas["Customer"]
    engine = services.model.current.engine
    # generated from the bundle's feature schema, not written by hand
    assert set(customer["properties"]) == {"customer_id", *engine.schema.input_names}
    required = {s.name for s in engine.schema.inputs if s.required}
    assert set(customer["required"]) == required
    assert customer["additionalProperties"] is False
    ratio = next(s.name for s in engine.schema.inputs if s.kind == "ratio")
    assert customer["properties"][ratio]["minimum"] == 0
    assert customer["properties"][ratio]["maximum"] == 1
    options = schemas["RecommendRequest"]["properties"]
    assert set(options["channel"]["enum"]) == engine.channels
    assert options["top_k"]["maximum"] == len(engine.campaigns)
    batch = schemas["CustomerBatch"]["properties"]["customers"]
    assert batch["items"] == {"$ref": "#/components/schemas/Customer"}
    assert batch["maxItems"] == services.settings.MAX_BATCH_ITEMS
    results = schemas["RecommendBatchResponse"]["properties"]["results"]["items"]
    assert {"$ref": "#/components/schemas/ErrorEnvelope"} in results["oneOf"]
    assert document["components"]["securitySchemes"]["ApiKey"]["name"] == "X-API-Key"


def _examples(document, path, part) -> dict:
    op = document["paths"][path]["post"]
    content = op["requestBody"] if part == "request" else op["responses"]["200"]
    return {k: v["value"] for k, v in content["content"]["application/json"]["examples"].items()}


def test_examples_are_real(document, client, scoring_headers):
    for path, response_schemas in (
        ("/predict-segment", (sc.PredictSegmentResponse, sc.SegmentBatchResponse)),
        ("/recommend", (sc.RecommendResponse, sc.RecommendBatchResponse)),
    ):
        requests = _examples(document, path, "request")
        answers = _examples(document, path, "response")
        assert set(requests) == {"one", "batch"}
        for name, body in requests.items():
            r = client.post(path, json=body, headers=scoring_headers)
            assert r.status_code == 200, (path, name, r.data)
        single, batch = response_schemas
        single().load(answers["one"])
        batch().load(answers["batch"])
        served = client.post(path, json=requests["one"], headers=scoring_headers).get_json()
        assert served == answers["one"]  # the example answer is the served answer


def test_document_is_cached_per_version(client, services):
    first = client.get("/openapi.json").data
    assert client.get("/openapi.json").data == first
    assert list(services.openapi) == [services.model.current.version]
