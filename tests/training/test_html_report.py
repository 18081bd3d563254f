"""The HTML evidence report: written by training, rebuilt from a bundle, self-contained."""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest

from scoring.bundle import load_bundle
from training.cli import main
from training.compare import METHODS
from training.config import load_config
from training.generate import write_demo
from training.pipeline import train

ROOT = Path(__file__).resolve().parents[2]

#: charts every bundle with a response model shows
CHARTS = [
    "elbow curve",
    "scores by k",
    "segment sizes",
    "segment map",
    "Ward dendrogram",
    "standardized centroids heatmap",
    "algorithm comparison",
    "ROC curve",
    "calibration curve",
    "feature importance",
    "response rate heatmap",
    # the demo history has a randomized control arm, so the bundle has an uplift model
    "Qini coefficients",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The demo config trained on 3,000 generated customers."""
    data = tmp_path_factory.mktemp("demo")
    write_demo(data, n_customers=3000, seed=5)
    out = tmp_path_factory.mktemp("artifacts")
    config = load_config(
        ROOT / "examples" / "demo.toml", {"data_dir": str(data), "output": str(out)}
    )
    return config, train(config, environ={})


def chart_alts(page: str) -> list[str]:
    """The alt texts of the embedded chart images, in order."""
    return re.findall(
        r'<img class="chart" src="data:image/svg\+xml;base64,[^"]+" alt="([^"]+)"', page
    )


def test_training_writes_the_html_report_beside_the_bundle(trained):
    _, result = trained
    path = result.html_report_path
    assert path == result.path.parent / "reports" / f"{result.path.name}.html"
    page = path.read_text()
    assert chart_alts(page) == CHARTS
    assert "could not be drawn" not in page
    for name in result.bundle.segment_names:
        assert html.escape(name) in page
    # self-contained: nothing is fetched from anywhere
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert "<script" not in page


def test_the_comparison_has_a_row_per_method_in_report_and_manifest(trained):
    _, result = trained
    comparison = result.bundle.manifest["comparison"]
    assert [m["method"] for m in comparison["methods"]] == [m.key for m in METHODS]
    assert [m["method"] for m in comparison["methods"] if m["served"]] == ["kmeans"]
    page = result.html_report_path.read_text()
    for m in METHODS:
        assert f">{m.label}" in page
    assert 'class="served"><td class="text">K-Means (served)</td>' in page
    assert "compared, not served" in page
    # the manifest keeps the outliers: count, share, ids and the features behind them
    dbscan = comparison["outliers"]["dbscan"]
    assert set(dbscan) == {"count", "share", "ids", "features"}


def test_the_bundle_carries_the_chart_data_and_it_verifies(trained):
    _, result = trained
    bundle = load_bundle(result.path)
    assert "evidence.json" in bundle.manifest["files"]
    ev = bundle.evidence
    assert len(ev["map"]["x"]) == len(ev["map"]["segment"]) == 1500
    assert len(ev["map"]["centers"]) == bundle.n_segments
    assert len(ev["zscores"]["values"]) == bundle.n_segments
    metrics = bundle.manifest["metrics"]["response_model"]
    assert len(metrics["roc"]["fpr"]) == len(metrics["roc"]["tpr"]) == 51
    assert set(metrics["importance"]) == set(bundle.schema.response_model_columns)


def test_report_command_rebuilds_the_report_from_the_bundle_alone(trained, capsys):
    config, result = trained
    original = result.html_report_path.read_text()
    result.html_report_path.unlink()
    assert main(["report", result.path.name, "--root", config.output.root]) == 0
    printed = capsys.readouterr().out.strip()
    assert Path(printed) == result.html_report_path
    rebuilt = result.html_report_path.read_text()
    assert chart_alts(rebuilt) == chart_alts(original)
    # "current" and a version folder work too
    assert main(["report", "--root", config.output.root]) == 0
    assert main(["report", str(result.path)]) == 0


def test_report_command_refuses_an_unknown_version(trained, capsys):
    config, _ = trained
    assert main(["report", "nope", "--root", config.output.root]) == 2
    assert "nope" in capsys.readouterr().err


def test_segmentation_only_bundle_says_why_there_is_no_response_section(tmp_path):
    data = tmp_path / "demo"
    write_demo(data, n_customers=1500, seed=2)
    config = load_config(
        ROOT / "examples" / "demo.toml",
        {"data_dir": str(data), "output": str(tmp_path / "out"), "k": 3},
    )
    import dataclasses

    config = dataclasses.replace(
        config,
        response_model=dataclasses.replace(config.response_model, enabled=False),
        comparison=dataclasses.replace(config.comparison, enabled=False),
    )
    result = train(config, environ={})
    page = result.html_report_path.read_text()
    assert "No response model" in page
    assert "No comparison was run" in page
    assert "ROC curve" not in chart_alts(page)


def test_uplift_lifetime_value_and_migration_are_drawn_when_present(tiny_bundle):
    import dataclasses

    from training.html_report import render_html

    bundle = tiny_bundle  # replaced, not modified: the fixture is shared
    k = bundle.n_segments
    manifest = dict(bundle.manifest)
    manifest["metrics"] = {
        **(manifest.get("metrics") or {}),
        "uplift": {
            "per_campaign": {
                c.id: {"qini": {"uplift": 0.05, "response": 0.01}} for c in bundle.campaigns
            }
        },
    }
    manifest["resegmentation"] = {
        "migration": {"counts": [[10 * (i == j) + 1 for j in range(k)] for i in range(k)],
                      "retention": 0.9}
    }  # fmt: skip
    profiles = [
        {**p, "clv": {"mean": 10.0 + i, "total": 100.0 * (i + 1), "share": 1 / k}}
        for i, p in enumerate(bundle.profiles)
    ]
    page = render_html(dataclasses.replace(bundle, manifest=manifest, profiles=profiles))
    alts = chart_alts(page)
    assert {"Qini coefficients", "lifetime value by segment", "segment migration"} <= set(alts)
    assert "could not be drawn" not in page
    assert "Retention (customers who stayed in their matched segment): 0.900" in page
    # a bundle without them has no such section
    assert 'id="extra"' not in render_html(tiny_bundle)
