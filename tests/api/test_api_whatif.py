"""The what-if page and the bundle endpoints it reads, through the test client."""

from __future__ import annotations

from pathlib import Path

import pytest

from scoring.bundle import load_current

PAGE_FILES = ("/", "/static/whatif.js", "/static/whatif.css")


def test_the_page_and_its_files_are_served_open(client):
    for path in PAGE_FILES:
        response = client.get(path)
        assert response.status_code == 200, path
    page = client.get("/")
    assert page.mimetype == "text/html"
    assert b'<script src="/static/whatif.js">' in page.data
    # the key is typed by the user: nothing secret is in the page
    assert b"test-scoring-key" not in page.data


def test_bundle_needs_a_scoring_key(client, admin_headers):
    assert client.get("/bundle").status_code == 401
    assert client.get("/bundle", headers=admin_headers).status_code == 403
    assert client.get("/bundle/report").status_code == 401
    assert client.post("/bundle/position", json={}).status_code == 401


def test_bundle_describes_the_served_bundle(client, scoring_headers, tiny_bundle):
    body = client.get("/bundle", headers=scoring_headers).get_json()
    assert body["model_version"] == tiny_bundle.version
    assert body["k"] == tiny_bundle.n_segments == len(body["segments"])
    assert [f["name"] for f in body["features"]["inputs"]] == tiny_bundle.schema.input_names
    first = body["features"]["inputs"][0]
    assert {"kind", "required", "median", "observed_min", "observed_max"} <= set(first)
    assert [c["id"] for c in body["campaigns"]] == [c.id for c in tiny_bundle.campaigns]
    for campaign in body["campaigns"]:
        assert len(campaign["eligible"]) == body["k"]
        for s, ok in enumerate(campaign["eligible"]):
            # a reason exactly where the campaign is not open to the segment
            assert (campaign["not_eligible"][s] is None) == ok
    sizes = sum(s["size"] for s in body["segments"])
    name = next(iter(body["population_mean"]))
    expected = sum(s["mean"][name] * s["size"] for s in body["segments"]) / sizes
    assert body["population_mean"][name] == pytest.approx(expected)
    # the tiny bundle was not written by the pipeline: no evidence, no report
    assert body["map"] is None and body["report_available"] is False


def test_not_eligible_names_the_segment_and_where_the_campaign_is_open(
    client, scoring_headers, tiny_bundle
):
    body = client.get("/bundle", headers=scoring_headers).get_json()
    restricted = [c for c in body["campaigns"] if not all(c["eligible"])]
    assert restricted, "the tiny bundle has a campaign closed to some segment"
    campaign = restricted[0]
    s = campaign["eligible"].index(False)
    reason = campaign["not_eligible"][s]
    assert reason.startswith(f"not open to segment {s} ('{tiny_bundle.segment_names[s]}')")


def test_report_is_404_until_written_then_served(make_app, fresh_bundle_root, scoring_headers):
    client = make_app(MODEL_ROOT=str(fresh_bundle_root)).test_client()
    missing = client.get("/bundle/report", headers=scoring_headers)
    assert missing.status_code == 404
    assert missing.get_json()["error"]["code"] == "report_not_found"
    version = load_current(fresh_bundle_root).version
    reports = Path(fresh_bundle_root) / "reports"
    reports.mkdir()
    (reports / f"{version}.html").write_text("<!DOCTYPE html><title>r</title>")
    served = client.get("/bundle/report", headers=scoring_headers)
    assert served.status_code == 200 and served.mimetype == "text/html"
    assert served.data == b"<!DOCTYPE html><title>r</title>"
    assert client.get("/bundle", headers=scoring_headers).get_json()["report_available"] is True


def test_position_is_the_engines_projection(app, client, scoring_headers, demo_request):
    from api.extensions import get_services

    answer = client.post("/bundle/position", json=demo_request, headers=scoring_headers)
    assert answer.status_code == 200
    body = answer.get_json()
    with app.app_context():
        engine = get_services(app).model.serving().engine
    record = {k: v for k, v in demo_request.items() if k != "customer_id"}
    batch = engine.batch_from_records([record])
    projected = engine.project(batch)[0]
    assert body["x"] == pytest.approx(projected[0])
    assert body["y"] == pytest.approx(projected[1])
    assert list(body["features"]) == engine.schema.numeric_names


def test_position_validates_like_predict_segment(client, scoring_headers, demo_request):
    bad = {**demo_request, "total_spend": -5}
    position = client.post("/bundle/position", json=bad, headers=scoring_headers)
    segment = client.post("/predict-segment", json=bad, headers=scoring_headers)
    assert position.status_code == segment.status_code == 422
    assert position.get_json()["error"]["fields"] == segment.get_json()["error"]["fields"]
