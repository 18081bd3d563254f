"""The what-if page (``GET /``) and the bundle endpoints it reads: /bundle, /bundle/report and
/bundle/position (registered, like every endpoint, in ``api/routes.py``).

The page itself is static (``api/static``: plain HTML, CSS and JS, no build step) and open; it
asks for an API key and calls the public scoring endpoints with it, like the mobile backend does.
The bundle endpoints need a scoring key too: they describe the served bundle (feature schema with
observed ranges, segments, campaigns and their eligibility per segment, k evidence, comparison,
map sample), hand out its HTML evidence report, and place a customer on the segment map.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Response, send_from_directory

from api.errors import ApiError
from api.extensions import get_services
from api.model import LoadedModel
from api.views import admitted, authorised, json_response, read_json

STATIC = Path(__file__).resolve().parent / "static"
#: the HTML reports live beside the bundles (training/html_report.py writes them there)
REPORTS_DIR = "reports"


class ReportNotFound(ApiError):
    """The served bundle has no HTML report under MODEL_ROOT/reports."""

    status, code = 404, "report_not_found"


def page() -> Response:
    """The what-if page (static; the key is typed into it, never served with it)."""
    response = send_from_directory(STATIC, "index.html", max_age=0)
    response.headers["Cache-Control"] = "no-cache"
    return response


def _population_mean(profiles: list[dict[str, Any]]) -> dict[str, float | None]:
    total = sum(p["size"] for p in profiles) or 1
    names = list(profiles[0]["mean"]) if profiles else []
    return {n: sum(p["mean"].get(n, 0.0) * p["size"] for p in profiles) / total for n in names}


def _report_path(loaded: LoadedModel) -> Path:
    return get_services().settings.MODEL_ROOT / REPORTS_DIR / f"{loaded.version}.html"


def bundle_info(loaded: LoadedModel, report_available: bool) -> dict[str, Any]:
    """What the page shows about the served bundle (plain JSON)."""
    bundle, engine = loaded.bundle, loaded.engine
    manifest = bundle.manifest
    schema = bundle.schema
    k = bundle.n_segments
    names = engine.segment_names
    inputs = [
        {
            "name": f.name,
            "kind": f.kind,
            "required": f.required,
            "median": f.median,
            "observed_min": f.observed_min,
            "observed_max": f.observed_max,
            "minimum": f.minimum,
            "maximum": f.maximum,
            "description": f.description,
        }
        for f in schema.inputs
    ]
    # eligibility is the core's rule (scoring.campaigns, tabled at load time), never re-derived
    eligible = engine.tables.eligible
    campaigns = []
    for j, c in enumerate(engine.campaigns):
        open_to = [names[s] for s in range(k) if eligible[s, j]]
        campaigns.append(
            {
                "id": c.id,
                "name": c.name,
                "channel": c.channel,
                "value": c.value,
                "description": c.description,
                "eligible": eligible[:, j].tolist(),
                "not_eligible": [
                    None
                    if eligible[s, j]
                    else f"not open to segment {s} ('{names[s]}'); open to: "
                    + (", ".join(f"'{n}'" for n in open_to) or "no segment of this bundle")
                    for s in range(k)
                ],
            }
        )
    comparison = manifest.get("comparison") or {}
    evidence = bundle.evidence or {}
    selection = manifest.get("k_selection") or {}
    return {
        "model_version": loaded.version,
        "name": manifest.get("name"),
        "created_at": manifest.get("created_at"),
        "k": k,
        "served_model": manifest.get("served_clustering", "kmeans"),
        "has_response_model": engine.has_response_model,
        "features": {
            "inputs": inputs,
            "derived": [
                {"name": d.name, "numerator": d.numerator, "denominator": d.denominator}
                for d in schema.derived
            ],
            "categoricals": [
                {"name": c.name, "categories": list(c.categories), "required": c.required}
                for c in schema.categoricals
            ],
        },
        "segments": [
            {
                "segment_id": p["segment_id"],
                "name": p["name"],
                "description": p.get("description", ""),
                "size": p["size"],
                "share": p["share"],
                "mean": p["mean"],
                "default_campaigns": p.get("default_campaigns", []),
            }
            for p in bundle.profiles
        ],
        "population_mean": _population_mean(bundle.profiles),
        "campaigns": campaigns,
        "k_selection": {
            key: selection.get(key) for key in ("chosen_k", "knee", "reasoning", "table")
        },
        "comparison": [
            {
                key: m.get(key)
                for key in (
                    "method",
                    "label",
                    "served",
                    "assigns_new_customers",
                    "clusters",
                    "silhouette",
                    "noise_share",
                    "stability_ari",
                )
            }
            for m in comparison.get("methods", [])
        ]
        or None,
        "map": evidence.get("map"),
        "report_available": report_available,
    }


def bundle() -> Response:
    """The served bundle as the what-if page needs it (scoring key)."""
    services = get_services()
    authorised(services)
    admitted(services, None)
    loaded = services.model.serving()
    return json_response(bundle_info(loaded, _report_path(loaded).is_file()))


def bundle_report() -> Response:
    """The served bundle's HTML evidence report (scoring key), or 404 report_not_found."""
    services = get_services()
    authorised(services)
    admitted(services, None)
    loaded = services.model.serving()
    path = _report_path(loaded)
    if not path.is_file():
        raise ReportNotFound(
            f"no report for model version {loaded.version}; "
            "`python -m training report <version>` writes it"
        )
    return send_from_directory(path.parent, path.name, mimetype="text/html", max_age=0)


def bundle_position() -> Response:
    """Where one customer sits on the segment map (PC1, PC2) and the features the model sees."""
    services = get_services()
    authorised(services)
    loaded = services.model.serving()
    body = read_json()
    admitted(services, body)
    # marshmallow's ValidationError becomes the 422 envelope in api/errors.py
    record = loaded.schemas.load_customer(body)
    engine = loaded.engine
    batch = engine.batch_from_records([record])
    projected = engine.project(batch)[0]
    names = loaded.bundle.schema.numeric_names
    return json_response(
        {
            "x": float(projected[0]),
            "y": float(projected[1]) if projected.shape[0] > 1 else 0.0,
            "features": dict(zip(names, batch.numeric[0].tolist(), strict=True)),
            "model_version": loaded.version,
        }
    )
