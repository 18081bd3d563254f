"""The HTML evidence report of a bundle: one self-contained file that opens offline.

Built from a bundle alone (manifest, profiles, campaigns, response model and ``evidence.json``),
so training writes it right after the bundle and ``python -m training report <version>``
rebuilds it the same way. It lives beside the Markdown report at
``<root>/reports/<version>.html`` (files inside a bundle folder must all be in its manifest).
Charts come from :mod:`training.charts` as embedded SVGs; the page loads nothing from the
network and runs no script. The sections are laid out first with a placeholder per chart; the
charts are then drawn by two forked worker processes where the platform allows (drawing is
nearly all of the report's cost, and each chart is independent), and put in place.
"""

from __future__ import annotations

import html
import logging
import multiprocessing
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scoring.bundle import Bundle
from training import charts
from training import rfm as rfm_rule

log = logging.getLogger(__name__)

REPORTS_DIR = "reports"
#: processes drawing the charts (at most the machine's cores)
CHART_WORKERS = 2

#: the charts of the report being rendered: (draw, alt text, caption); read by forked workers
_PENDING: list[tuple[Callable[[], str], str, str]] = []

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1b1f24;
background:#f6f7f9}
header{background:#1f3a5f;color:#fff;padding:18px 32px}
header h1{margin:0 0 6px;font-size:22px}
header p{margin:2px 0;opacity:.9;font-size:13px}
nav{background:#fff;border-bottom:1px solid #dde1e6;padding:8px 32px;position:sticky;top:0}
nav a{margin-right:16px;color:#1f3a5f;text-decoration:none;font-size:14px}
main{padding:8px 32px 48px;max-width:1200px}
section{background:#fff;border:1px solid #dde1e6;border-radius:8px;padding:12px 22px;margin:18px 0}
h2{font-size:19px;color:#1f3a5f}
h3{font-size:15px;margin-top:22px}
.scroll{overflow-x:auto}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #dde1e6;padding:4px 8px;text-align:right}
th{background:#eef1f5}
td.text,th.text{text-align:left}
tr.served td,tr.chosen td{background:#fff4e5;font-weight:600}
.charts{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
figure{margin:8px 0}
figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:12px;color:#555;max-width:640px}
.note{color:#555;font-size:13px}
.badge{background:#d62728;color:#fff;border-radius:4px;padding:1px 6px;font-size:11px}
code{background:#eef1f5;padding:1px 4px;border-radius:3px}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    if isinstance(value, float | np.floating):
        v = float(value)
        if not np.isfinite(v):
            return "n/a"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.{digits}f}"
    return _e(value)


def _table(
    header: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    text_columns: Sequence[int] = (0,),
    row_class: Sequence[str] | None = None,
) -> str:
    def cell(tag: str, j: int, v: Any, raw: bool = False) -> str:
        cls = ' class="text"' if j in text_columns else ""
        return f"<{tag}{cls}>{v if raw else _num(v)}</{tag}>"

    head = "".join(cell("th", j, _e(h), raw=True) for j, h in enumerate(header))
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{row_class[i]}"' if row_class and row_class[i] else ""
        body.append(f"<tr{cls}>" + "".join(cell("td", j, v) for j, v in enumerate(row)) + "</tr>")
    return (
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _figure(uri: str, alt: str, caption: str = "") -> str:
    cap = f"<figcaption>{_e(caption)}</figcaption>" if caption else ""
    return f'<figure><img class="chart" src="{uri}" alt="{_e(alt)}">{cap}</figure>'


def _chart(build: Callable[[], str], alt: str, caption: str = "") -> str:
    """A placeholder for a chart; :func:`_draw_charts` draws it once every section is laid out."""
    _PENDING.append((build, alt, caption))
    return _placeholder(len(_PENDING) - 1)


def _placeholder(index: int) -> str:
    return f"\x00chart-{index}\x00"


def _draw(index: int) -> str:
    """Chart ``index`` as a figure, or a note saying why it could not be drawn."""
    build, alt, caption = _PENDING[index]
    try:
        return _figure(build(), alt, caption)
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        # a report must still be written
        log.warning("report: chart %r not drawn: %s", alt, exc)
        return f'<p class="note">Chart "{_e(alt)}" could not be drawn: {_e(exc)}</p>'


def _draw_charts() -> list[str]:
    """Every pending chart, drawn by forked workers (they inherit the pending list) or here."""
    count = len(_PENDING)
    workers = min(CHART_WORKERS, os.cpu_count() or 1, count)
    if workers > 1 and "fork" in multiprocessing.get_all_start_methods():
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            return pool.map(_draw, range(count), chunksize=1)
    return [_draw(i) for i in range(count)]


# ---- sections -----------------------------------------------------------------------------------
def _k_section(manifest: dict[str, Any]) -> str:
    sel = manifest.get("k_selection") or {}
    table = sel.get("table") or []
    chosen = sel.get("chosen_k")
    out = ['<section id="k"><h2>How many segments: k</h2>']
    out.append(f"<p><b>k = {_e(chosen)}</b>: {_e(sel.get('reasoning', ''))}.</p>")
    if manifest.get("served_clustering") == "rfm":
        out.append("</section>")
        return "".join(out)
    out.append(
        f'<p class="note">The rule: {_e(sel.get("rule", ""))}. K-Means was fitted for '
        f"every k on {_num(sel.get('search_rows'))} rows; silhouette on "
        f"{_num(sel.get('silhouette_rows'))}.</p>"
    )
    if table:
        out.append('<div class="charts">')
        out.append(
            _chart(
                lambda: charts.elbow(table, sel.get("knee"), chosen),
                "elbow curve",
                "Inertia falls as k grows; the knee (dashed) is where adding segments "
                "stops paying off. The circle marks the chosen k.",
            )
        )
        out.append("</div>")
        out.append(
            _chart(
                lambda: charts.k_scores(table, chosen),
                "scores by k",
                "Silhouette, Calinski-Harabasz and Davies-Bouldin for every k searched.",
            )
        )
        rows = [
            [r["k"], r["inertia"], r["silhouette"], r["calinski_harabasz"], r["davies_bouldin"]]
            for r in table
        ]
        out.append(
            _table(
                ["k", "inertia", "silhouette", "Calinski-Harabasz", "Davies-Bouldin"],
                rows,
                text_columns=(),
                row_class=["chosen" if r["k"] == chosen else "" for r in table],
            )
        )
    stab = manifest.get("stability") or {}
    if stab.get("bootstraps"):
        out.append(
            f"<p>Stability: adjusted Rand index between the final K-Means and "
            f"{stab['bootstraps']} bootstrap refits: mean {_num(stab.get('ari_mean'))}, "
            f"min {_num(stab.get('ari_min'))}.</p>"
        )
    truth = (manifest.get("metrics") or {}).get("segmentation", {}).get("truth_ari")
    if truth is not None:
        out.append(f"<p>Agreement with the planted segments: ARI {_num(truth)}.</p>")
    out.append("</section>")
    return "".join(out)


def _population_mean(profiles: list[dict], feature: str) -> float | None:
    sizes = np.array([p["size"] for p in profiles], dtype=np.float64)
    values = np.array([p["mean"].get(feature, np.nan) for p in profiles], dtype=np.float64)
    ok = np.isfinite(values)
    if not ok.any() or sizes[ok].sum() <= 0:
        return None
    return float((values[ok] * sizes[ok]).sum() / sizes[ok].sum())


def _segments_section(bundle: Bundle, evidence: dict[str, Any]) -> str:
    profiles = bundle.profiles
    names = [p["name"] for p in profiles]
    out = ['<section id="segments"><h2>The segments</h2><div class="charts">']
    out.append(
        _chart(lambda: charts.segment_sizes(names, [p["size"] for p in profiles]), "segment sizes")
    )
    if "map" in evidence:
        atypical = sum(evidence["map"]["atypical"])
        out.append(
            _chart(
                lambda: charts.segment_map(evidence["map"], names),
                "segment map",
                f"A sample of customers on the first two principal components. "
                f"Crosses: segment centres; red rings: atypical customers ({atypical} in "
                f"the sample), farther from their centre than "
                f"{_num(100 * bundle.manifest.get('config', {}).get('segmentation', {}).get('outlier_quantile', 0.99), 0)}% "
                f"of their segment.",
            )
        )
    if "dendrogram" in evidence:
        out.append(
            _chart(
                lambda: charts.dendrogram(evidence["dendrogram"]),
                "Ward dendrogram",
                "Ward hierarchical clustering of a sample, cut (dashed) where it "
                "leaves k groups: branches of one colour belong to one group.",
            )
        )
    out.append("</div>")
    if "zscores" in evidence:
        z = evidence["zscores"]
        out.append(
            _chart(
                lambda: charts.heatmap(
                    np.asarray(z["values"]),
                    [f"{s}: {n}" for s, n in enumerate(names)],
                    z["features"],
                    "What sets each segment apart (mean z-score)",
                    diverging=True,
                    colorbar="standard deviations from the mean",
                ),
                "standardized centroids heatmap",
                "Each segment's mean of every clustering feature, in standard deviations from "
                "the population (after the log transform where one applies).",
            )
        )
    if not evidence:
        out.append(
            '<p class="note">This bundle carries no evidence.json (written before the '
            "report had charts): map, dendrogram and heatmap are not available.</p>"
        )
    features = list(profiles[0]["mean"].keys()) if profiles else []
    out.append("<h3>Profiles in original units (mean per segment, population last)</h3>")
    rows = []
    for p in profiles:
        rows.append(
            [f"{p['segment_id']}: {p['name']}", p["size"], 100 * p["share"]]
            + [p["mean"].get(f) for f in features]
        )
    rows.append(
        ["population", sum(p["size"] for p in profiles), 100.0]
        + [_population_mean(profiles, f) for f in features]
    )
    out.append(_table(["segment", "customers", "share %", *features], rows))
    out.append("<h3>Descriptions and default campaigns</h3>")
    out.append(
        _table(
            ["segment", "description", "default campaigns", "outlier threshold"],
            [
                [
                    f"{p['segment_id']}: {p['name']}",
                    p.get("description", ""),
                    ", ".join(p.get("default_campaigns", [])) or "none",
                    p.get("outlier_threshold"),
                ]
                for p in profiles
            ],
            text_columns=(0, 1, 2),
        )
    )
    out.append("</section>")
    return "".join(out)


def _comparison_section(comparison: dict[str, Any] | None) -> str:
    out = ['<section id="comparison"><h2>Algorithm comparison</h2>']
    if not comparison:
        out.append(
            '<p class="note">No comparison was run for this bundle '
            "(<code>[comparison] enabled = false</code>, or a bundle from before it "
            "existed).</p></section>"
        )
        return "".join(out)
    methods = comparison["methods"]
    out.append(
        f"<p>Every method clustered the same {_num(comparison['sample_rows'])} customers "
        f"(a seeded sample of {_num(comparison['rows'])}) in {_e(comparison['space'])}, "
        f"with k = {comparison['k']} where a method takes k. Stability is the mean "
        f"adjusted Rand index between the fit and {comparison['seeds']} refits on 80% "
        f"sub-samples with other seeds. <span class='badge'>served</span> marks the "
        f"method the service answers with.</p>"
    )
    ok = [m for m in methods if not m.get("error")]
    if ok:
        out.append(_chart(lambda: charts.comparison(ok), "algorithm comparison"))
    rows = []
    for m in methods:
        label = m["label"] + (" (served)" if m.get("served") else "")
        rows.append(
            [
                label,
                m.get("clusters"),
                m.get("silhouette"),
                m.get("calinski_harabasz"),
                m.get("davies_bouldin"),
                m.get("size_balance"),
                None if m.get("noise_share") is None else 100 * m["noise_share"],
                m.get("stability_ari"),
                m.get("fit_seconds"),
                m.get("assigns_new_customers"),
                m.get("error") or m.get("note", ""),
            ]
        )
    out.append(
        _table(
            [
                "method",
                "clusters",
                "silhouette",
                "Calinski-Harabasz",
                "Davies-Bouldin",
                "size balance",
                "noise %",
                "stability (ARI)",
                "fit s",
                "assigns new customers",
                "note",
            ],
            rows,
            text_columns=(0, 10),
            row_class=["served" if m.get("served") else "" for m in methods],
        )
    )
    out.append(
        '<p class="note">Size balance: entropy of the cluster shares over log(clusters), '
        "1 = equal sizes. Silhouette, CH and DB leave noise points out. Methods that "
        "cannot assign a new customer (DBSCAN, HDBSCAN, Ward, spectral) are compared, "
        "not served.</p>"
    )
    out.append(_outliers(comparison.get("outliers") or {}, comparison))
    out.append("</section>")
    return "".join(out)


def _outliers(outliers: dict[str, Any], comparison: dict[str, Any]) -> str:
    out = ['<h3 id="outliers">Outliers (density-based methods)</h3>']
    if not outliers:
        return out[0] + '<p class="note">No density-based method ran.</p>'
    labels = {m["method"]: m["label"] for m in comparison["methods"]}
    for key, o in outliers.items():
        out.append(
            f"<p><b>{_e(labels.get(key, key))}</b>: {o['count']:,} noise points, "
            f"{100 * o['share']:.1f}% of the sample."
        )
        if o["ids"]:
            out.append(
                " Customer ids: "
                + ", ".join(f"<code>{_e(i)}</code>" for i in o["ids"])
                + ("…" if o["count"] > len(o["ids"]) else "")
            )
        out.append("</p>")
        if o["features"]:
            out.append(
                _table(
                    [
                        "feature that sets them apart",
                        "mean |z-score|",
                        "their median",
                        "population median",
                    ],
                    [
                        [f["feature"], f["mean_abs_z"], f["outlier_median"], f["population_median"]]
                        for f in o["features"]
                    ],
                )
            )
    return "".join(out)


def _response_section(bundle: Bundle) -> str:
    metrics = bundle.manifest.get("metrics") or {}
    m = metrics.get("response_model")
    out = ['<section id="response"><h2>Response model</h2>']
    if not m:
        out.append(
            f"<p>No response model: "
            f"{_e(metrics.get('response_model_skipped') or 'no response history')}.</p>"
        )
        out.append("</section>")
        return "".join(out)
    out.append(
        f"<p>LightGBM over customer features, segment and campaign. Held-out: "
        f"{_num(m.get('n_valid_customers'))} customers ({_num(m.get('n_valid_rows'))} rows)"
        f"; AUC {_num(m.get('auc'))}, log loss {_num(m.get('log_loss'), 4)}, Brier "
        f"{_num(m.get('brier'), 4)}, base rate {_num(m.get('base_rate'), 4)}; best round "
        f"{_num(m.get('best_iteration'))}.</p><div class='charts'>"
    )
    if m.get("roc"):
        out.append(_chart(lambda: charts.roc(m["roc"], m.get("auc")), "ROC curve"))
    if m.get("calibration"):
        out.append(_chart(lambda: charts.calibration(m["calibration"]), "calibration curve"))
    gains = m.get("importance")
    if not gains and bundle.response_model is not None:
        gains = dict(
            zip(
                bundle.schema.response_model_columns,
                bundle.response_model.feature_importance("gain").tolist(),
                strict=False,
            )
        )
    if gains:
        out.append(_chart(lambda: charts.importance(gains), "feature importance"))
    out.append("</div>")
    campaigns = [c.id for c in bundle.campaigns]
    rates = np.array(
        [[p.get("response_rate", {}).get(c, np.nan) for c in campaigns] for p in bundle.profiles],
        dtype=np.float64,
    )
    if campaigns and np.isfinite(rates).any():
        out.append(
            _chart(
                lambda: charts.heatmap(
                    rates,
                    [f"{p['segment_id']}: {p['name']}" for p in bundle.profiles],
                    campaigns,
                    "Historical response rate by segment and campaign",
                    diverging=False,
                    fmt="{:.1%}",
                    colorbar="response rate",
                ),
                "response rate heatmap",
            )
        )
    undefined = m.get("auc_undefined", {})
    out.append(
        _table(
            ["campaign", "held-out AUC", "note"],
            [[c, a, undefined.get(c, "")] for c, a in (m.get("auc_per_campaign") or {}).items()],
            text_columns=(0, 2),
        )
    )
    out.append("</section>")
    return "".join(out)


def _extra_section(bundle: Bundle) -> str:
    """Uplift (Qini), lifetime value and migration figures, when the bundle has them.

    The shapes are the ones training writes: ``metrics.uplift.per_campaign[id].qini`` (Qini
    coefficients of ranking by uplift and by response), each profile's ``clv`` (mean, total,
    share) and ``resegmentation.migration.counts`` (previous segment x new segment).
    """
    manifest = bundle.manifest
    parts = []
    uplift = ((manifest.get("metrics") or {}).get("uplift") or {}).get("per_campaign") or {}
    qini = {cid: e["qini"] for cid, e in uplift.items() if isinstance(e, dict) and "qini" in e}
    if qini:
        campaigns = list(qini)
        values = np.array(
            [[np.nan if qini[c].get(k) is None else qini[c][k] for k in ("uplift", "response")]
             for c in campaigns],
            dtype=np.float64,
        )  # fmt: skip
        parts.append(
            _chart(
                lambda: charts.heatmap(
                    values,
                    campaigns,
                    ["ranked by uplift", "ranked by response"],
                    "Qini coefficient by campaign (held-out)",
                    diverging=True,
                    fmt="{:.3f}",
                    colorbar="Qini coefficient",
                ),
                "Qini coefficients",
                "Area between each ranking's Qini curve and random targeting, per campaign: "
                "higher finds more of the customers the campaign actually moves.",
            )
        )
    profiles = bundle.profiles
    if profiles and all(isinstance(p.get("clv"), dict) for p in profiles):
        names = [f"{p['segment_id']}: {p['name']}" for p in profiles]
        means = [float(p["clv"].get("mean") or 0.0) for p in profiles]
        parts.append(
            _chart(
                lambda: charts.bars(names, means, "Lifetime value per customer, by segment", "CLV"),
                "lifetime value by segment",
            )
        )
        parts.append(
            _table(
                ["segment", "mean CLV", "total CLV", "share of total %"],
                [
                    [
                        n,
                        p["clv"].get("mean"),
                        p["clv"].get("total"),
                        100 * (p["clv"].get("share") or 0),
                    ]
                    for n, p in zip(names, profiles, strict=True)
                ],
            )
        )
    migration = (manifest.get("resegmentation") or {}).get("migration") or {}
    counts = migration.get("counts") if isinstance(migration, dict) else None
    if counts:
        matrix = np.asarray(counts, dtype=np.float64)
        retention = migration.get("retention")
        parts.append(
            _chart(
                lambda: charts.heatmap(
                    matrix,
                    [f"previous {i}" for i in range(matrix.shape[0])],
                    [f"{p['segment_id']}: {p['name']}" for p in profiles],
                    "Segment migration (customers in both snapshots)",
                    diverging=False,
                    fmt="{:.0f}",
                    colorbar="customers",
                ),
                "segment migration",
                f"Retention (customers who stayed in their matched segment): {_num(retention)}.",
            )
        )
    if not parts:
        return ""
    return (
        '<section id="extra"><h2>Uplift, lifetime value, migration</h2>'
        + "".join(parts)
        + "</section>"
    )


def _rfm_section(bundle: Bundle) -> str:
    """The RFM rule, customers by (R, F) cell and by group, each segment's scores."""
    rfm = bundle.manifest.get("rfm")
    if not rfm:
        return ""
    feats, edges = rfm["features"], rfm["edges"]
    total = sum(rfm["customers"].values()) or 1
    out = ['<section id="rfm"><h2>RFM scores and groups</h2>']
    out.append(
        "<p>Quintile scores 1-5 against the training population's edges (R reversed: 5 = most "
        "recent); a value on an edge takes the lower quintile and equal values share a score. "
        "The group comes from R and F by the published R/F grid (<code>scoring/rfm.py</code>)."
        + (" <b>The segments are the RFM groups.</b>" if rfm.get("segments") else "")
        + "</p>"
    )
    out.append(
        _table(
            ["score", "feature", "edges (20/40/60/80%)", "customers with 1 / 2 / 3 / 4 / 5"],
            [
                [
                    role[0].upper(),
                    feats[role],
                    ", ".join(f"{e:.4g}" for e in edges[role]),
                    " / ".join(str(c) for c in rfm["score_counts"][role]),
                ]
                for role in ("recency", "frequency", "monetary")
            ],
            text_columns=(0, 1, 2, 3),
        )
    )
    cells = rfm.get("cells")
    if cells:
        matrix = np.asarray(cells, dtype=np.float64)[::-1]
        out.append(
            _chart(
                lambda: charts.heatmap(
                    matrix,
                    [f"R {r}" for r in range(5, 0, -1)],
                    [f"F {f}" for f in range(1, 6)],
                    "Customers by recency and frequency score",
                    diverging=False,
                    fmt="{:.0f}",
                    colorbar="customers",
                ),
                "customers by R and F score",
                "Each cell belongs to one RFM group (Champions top right, Lost bottom left).",
            )
        )
    out.append(
        _table(
            ["RFM group", "customers", "share %"],
            [[g, c, 100 * c / total] for g, c in rfm["customers"].items()],
        )
    )
    profiles = [p for p in bundle.profiles if "rfm" in p]
    if profiles and not rfm.get("segments"):
        out.append(
            _table(
                ["segment", *rfm_rule.SCORE_COLUMNS],
                [[f"{p['segment_id']}: {p['name']}", *rfm_rule.score_cells(p)] for p in profiles],
                text_columns=(0, 4),
            )
        )
    out.append("</section>")
    return "".join(out)


def _stages_section(manifest: dict[str, Any]) -> str:
    timings = manifest.get("timings") or {}
    rows = [[k, v] for k, v in timings.items()]
    return '<section id="run"><h2>The run</h2>' + _table(["stage", "seconds"], rows) + "</section>"


def render_html(bundle: Bundle) -> str:
    """The self-contained HTML report of ``bundle``."""
    manifest = bundle.manifest
    evidence = bundle.evidence or {}
    comparison = manifest.get("comparison") or evidence.get("comparison")
    fp = manifest.get("data_fingerprint") or {}
    title = f"Segmentation report: {manifest.get('name', '')} {bundle.version}"
    served = manifest.get("served_clustering", "kmeans")
    _PENDING.clear()
    body = [
        f"<header><h1>{_e(title)}</h1>",
        f"<p>created {_e(manifest.get('created_at'))} · {_num(fp.get('rows'))} customers · "
        f"k = {_e(manifest.get('segments', {}).get('k'))} · served clustering: "
        f"{_e(served)} · code revision {_e(manifest.get('code_revision') or 'unknown')}</p>",
        f"<p>data SHA-256 {_e(str(fp.get('sha256', ''))[:16])}…</p></header>",
        '<nav><a href="#k">k</a><a href="#segments">segments</a>'
        '<a href="#rfm">rfm</a><a href="#comparison">comparison</a><a href="#outliers">outliers</a>'
        '<a href="#response">response model</a><a href="#run">run</a></nav><main>',
        _k_section(manifest),
        _segments_section(bundle, evidence),
        _rfm_section(bundle),
        _comparison_section(comparison),
        _response_section(bundle),
        _extra_section(bundle),
        _stages_section(manifest),
        "</main>",
    ]
    try:
        page = "".join(body)
        for i, drawn in enumerate(_draw_charts()):
            page = page.replace(_placeholder(i), drawn, 1)
    finally:
        _PENDING.clear()
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{_e(title)}"
        f"</title><style>{STYLE}</style></head><body>{page}</body></html>\n"
    )


def report_path(root: str | Path, version: str) -> Path:
    """Where the HTML report of ``version`` lives under the bundle root."""
    return Path(root) / REPORTS_DIR / f"{version}.html"


def write_html_report(bundle: Bundle, root: str | Path) -> Path:
    """Render the report of ``bundle`` to ``<root>/reports/<version>.html`` (atomically)."""
    path = report_path(root, bundle.version)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(render_html(bundle), encoding="utf-8")
    tmp.replace(path)
    return path
