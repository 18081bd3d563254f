"""The training report: a Markdown file beside the bundle and the terminal summary.

The report lives at ``<root>/reports/<version>.md``, outside the bundle folder, because every
file inside a bundle must be listed (and hashed) in its manifest.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from training import rfm as rfm_rule

if TYPE_CHECKING:
    from training.result import TrainResult

REPORTS_DIR = "reports"


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return lines


def render_report(result: TrainResult) -> str:
    """The Markdown report of a training run."""
    manifest = result.bundle.manifest
    selection = result.segmentation.selection
    stability = result.segmentation.stability
    seg_metrics = manifest.get("metrics", {}).get("segmentation", {})
    fp = manifest.get("data_fingerprint", {})
    out = [
        f"# Training report: {manifest.get('name', '')} `{result.bundle.version}`",
        "",
        f"- bundle: `{result.path}`",
        f"- created: {manifest.get('created_at')}",
        f"- data: {fp.get('rows')} rows, SHA-256 `{str(fp.get('sha256', ''))[:16]}…`",
        f"- code revision: {manifest.get('code_revision') or 'unknown'}",
        "",
        "## Segmentation",
        "",
        f"**k = {selection.chosen}**: {selection.reasoning}.",
        "",
        f"PCA keeps {seg_metrics.get('pca_components')} components "
        f"({100 * float(seg_metrics.get('pca_explained_variance', 0.0)):.1f}% of the variance). "
        + (
            f"k search on {selection.search_rows} rows, silhouette on {selection.silhouette_rows}."
            if selection.table
            else "No k search: the segments are the RFM groups."
        ),
        "",
    ]
    rows = [
        [
            f"**{r['k']}**" if r["k"] == selection.chosen else r["k"],
            f"{r['inertia']:.4g}",
            r["silhouette"],
            f"{r['calinski_harabasz']:.1f}",
            r["davies_bouldin"],
            f"{100 * r['min_share']:.2f}%" + (" (too small)" if r.get("too_small") else "")
            if "min_share" in r
            else "n/a",
        ]
        for r in selection.table
    ]
    out += _table(
        ["k", "inertia", "silhouette", "Calinski-Harabasz", "Davies-Bouldin", "smallest segment"],
        rows,
    )
    out.append("")
    if stability.get("bootstraps"):
        out.append(
            f"Stability: adjusted Rand index between the final model and {stability['bootstraps']} "
            f"bootstrap refits: mean {stability['ari_mean']:.3f}, min {stability['ari_min']:.3f}."
        )
    if result.truth_ari is not None:
        out.append(f"Agreement with the planted segments: ARI {result.truth_ari:.3f}.")
    out += ["", "## Segments", ""]
    seg_rows = [
        [
            p["segment_id"],
            p["name"],
            p["size"],
            f"{100 * p['share']:.1f}%",
            p["description"],
            ", ".join(p["default_campaigns"]),
            p["outlier_threshold"],
        ]
        for p in result.bundle.profiles
    ]
    out += _table(
        ["id", "name", "size", "share", "description", "default campaigns", "outlier threshold"],
        seg_rows,
    )
    out += rfm_section(manifest.get("rfm"), result.bundle.profiles)
    out += _clv_section(manifest.get("clv"), result.bundle.profiles)
    out += _resegmentation_section(manifest.get("resegmentation"))
    out += ["", "## Response model", ""]
    if result.response is None:
        skipped = manifest.get("metrics", {}).get("response_model_skipped")
        out.append(f"No response model: {skipped or 'no response history, or disabled'}.")
    else:
        m = result.response.metrics
        out += [
            f"Held-out customers: {m['n_valid_customers']} ({m['n_valid_rows']} rows); "
            f"trained on {m['n_train_customers']} customers ({m['n_train_rows']} rows); "
            f"best round {m['best_iteration']}.",
            "",
        ]
        if m.get("size_selection", {}).get("enabled"):
            out += [f"Size selection: {m['size_selection']['traded']}.", ""]
        out += [
            f"- AUC (all campaigns pooled): {_fmt(m['auc'])}",
            f"- log loss: {_fmt(m['log_loss'], 4)}",
            f"- Brier score: {_fmt(m['brier'], 4)}",
            f"- base rate: {_fmt(m['base_rate'], 4)}",
            "",
        ]
        undefined = m.get("auc_undefined", {})
        if "*" in undefined:
            out += [f"Pooled AUC undefined: {undefined['*']}.", ""]
        out += _table(
            ["campaign", "AUC", "note"],
            [[c, a, undefined.get(c, "")] for c, a in m["auc_per_campaign"].items()],
        )
        out += ["", "Calibration (held-out rows in 10 equal-count bins of the prediction):", ""]
        out += _table(
            ["rows", "mean predicted", "observed rate"],
            [[b["n"], b["mean_predicted"], b["observed_rate"]] for b in m["calibration"]],
        )
    out += uplift_section(manifest)
    out += ["", "## Stages", ""]
    out += _table(
        ["stage", "seconds", "peak RSS (MiB)"],
        [[s.name, f"{s.seconds:.2f}", f"{s.peak_rss_mb:.0f}"] for s in result.stages],
    )
    return "\n".join(out) + "\n"


def rfm_section(rfm: dict[str, Any] | None, profiles: list[dict[str, Any]]) -> list[str]:
    """The RFM part of the report: the rule, customers per group, each segment's scores."""
    if not rfm:
        return []
    feats, edges = rfm["features"], rfm["edges"]
    total = sum(rfm["customers"].values()) or 1
    out = [
        "",
        "## RFM",
        "",
        "Quintile scores 1-5 against the training population's edges (R reversed: 5 = most "
        "recent); a value on an edge takes the lower quintile, equal values share a score. "
        "Groups from the R/F grid (scoring/rfm.py)."
        + (" **The segments are the RFM groups.**" if rfm.get("segments") else ""),
        "",
    ]
    out += _table(
        ["score", "feature", "edges (20/40/60/80%)", "customers with score 1..5"],
        [
            [
                role[0].upper(),
                f"`{feats[role]}`",
                ", ".join(f"{e:.4g}" for e in edges[role]),
                " / ".join(str(c) for c in rfm["score_counts"][role]),
            ]
            for role in ("recency", "frequency", "monetary")
        ],
    )
    out += [""]
    out += _table(
        ["RFM group", "customers", "share"],
        [[g, c, f"{100 * c / total:.1f}%"] for g, c in rfm["customers"].items()],
    )
    if not rfm.get("segments"):
        out += ["", "Each segment's mean scores and its largest RFM groups:", ""]
        out += _table(
            ["segment", *rfm_rule.SCORE_COLUMNS],
            [[p["name"], *rfm_rule.score_cells(p)] for p in profiles if "rfm" in p],
        )
    return out


def _clv_section(clv: dict[str, Any] | None, profiles: list[dict[str, Any]]) -> list[str]:
    """The lifetime-value part of the report (empty without ``[clv]``)."""
    if not clv:
        return []
    model = clv["model"]
    bg, gg = clv["bgnbd"], clv["gamma_gamma"]
    out = [
        "",
        "## Lifetime value",
        "",
        f"BG/NBD ({bg['n_customers']} customers, log-likelihood {_fmt(bg['log_likelihood'], 1)}): "
        + ", ".join(f"{k} = {v:.4g}" for k, v in bg["params"].items())
        + f". Gamma-Gamma ({gg['n_customers']} repeat buyers): "
        + ", ".join(f"{k} = {v:.4g}" for k, v in gg["params"].items())
        + f". Horizon {model['horizon_months']} months, monthly discount "
        f"{100 * model['discount_rate']:g}%, period {model['period_days']:g} days.",
        "",
    ]
    out += [f"- note: {note}" for note in clv.get("notes", [])]
    out += _table(
        ["segment", "mean CLV", "total CLV", "share of value"],
        [
            [p["name"], f"{p['clv']['mean']:.2f}", f"{p['clv']['total']:.0f}",
             f"{100 * p['clv']['share']:.1f}%"]
            for p in profiles
            if "clv" in p
        ],
    )  # fmt: skip
    return out


def uplift_section(manifest: dict[str, Any]) -> list[str]:
    """The uplift part of the report: model evaluation and the measured lift by segment."""
    metrics = manifest.get("metrics", {})
    out = ["", "## Uplift (control arm)", ""]
    uplift = metrics.get("uplift")
    if not uplift:
        reason = metrics.get("uplift_skipped") or "no control arm in the response history"
        return [*out, f"No uplift model: {reason}. Campaigns are ranked by response."]
    out += [
        "Campaigns are ranked by expected gain: (probability with the offer - probability "
        "without it) x value - cost. Held-out customers; Qini coefficient (1 = perfect, 0 = "
        "random) and the measured lift among the top 10/20/30% when ranking by predicted uplift "
        "vs by response probability:",
        "",
    ]
    rows = []
    for cid, e in uplift["per_campaign"].items():
        if "qini" not in e:
            rows.append([cid, e["n_treated"], e["n_control"], None, None, None, None, None, None])
            continue
        at = e["uplift_at"]
        rows.append(
            [
                cid,
                e["n_treated"],
                e["n_control"],
                e["observed_uplift"],
                e["predicted_uplift"],
                e["qini"]["uplift"],
                e["qini"]["response"],
                at["10%"]["uplift"],
                at["10%"]["response"],
            ]
        )
    summary = uplift["summary"]
    rows.append(
        [
            "**mean**",
            "",
            "",
            None,
            None,
            summary["qini"]["uplift"],
            summary["qini"]["response"],
            summary["uplift_at_10%"]["uplift"],
            summary["uplift_at_10%"]["response"],
        ]
    )
    out += _table(
        [
            "campaign",
            "treated",
            "control",
            "observed lift",
            "predicted lift",
            "Qini (uplift)",
            "Qini (response)",
            "lift@10% (uplift)",
            "lift@10% (response)",
        ],
        rows,
    )
    measured = uplift.get("measured_lift", {})
    if measured:
        out += [
            "",
            "Measured lift by campaign and segment (all history: treated minus control "
            "response rate, 95% interval):",
            "",
        ]
        lift_rows = []
        for cid, entries in measured.items():
            for e in entries:
                interval = e.get("interval")
                lift_rows.append(
                    [
                        cid,
                        e["segment"],
                        e["n_treated"],
                        e["n_control"],
                        e.get("lift"),
                        None if interval is None else f"[{interval[0]:.3f}, {interval[1]:.3f}]",
                    ]
                )
        out += _table(
            ["campaign", "segment", "treated", "control", "lift", "95% interval"], lift_rows
        )
    return out


def resegmentation_lines(reseg: dict[str, Any] | None) -> list[str]:
    """What re-segmenting against the previous bundle found, a few lines (empty without one)."""
    if not reseg:
        return []
    matching = reseg["matching"]
    lines = [f"previous bundle {reseg['previous']}: segments matched on "
             f"{', '.join(matching['features'])}"]  # fmt: skip
    for pair in matching["pairs"]:
        moved = "" if pair["previous_id"] == pair["new_id"] else f" (was id {pair['previous_id']})"
        lines.append(
            f"  {pair['new_id']:>2} = {pair['previous_name']}{moved}, centroid distance "
            f"{pair['distance']:.3f}"
        )
    for new in matching["new_segments"]:
        lines.append(f"  {new:>2}   new segment")
    for gone in matching["vanished_segments"]:
        lines.append(f"  previous segment {gone['previous_id']} ({gone['name']}) vanished")
    migration = reseg.get("migration")
    if migration:
        retention = migration["retention"]
        lines.append(
            f"migration: {migration['customers_in_both']:,} customers in both snapshots, "
            f"{100 * retention:.1f}% stayed in their segment; {migration['customers_new']:,} new, "
            f"{migration['customers_gone']:,} gone"
            if retention is not None
            else "migration: no customer in both snapshots"
        )
    if reseg.get("psi"):
        top = sorted(reseg["psi"].items(), key=lambda kv: -kv[1])[:3]
        lines.append("drift (PSI): " + ", ".join(f"{f} {v:.3f}" for f, v in top))
    gate = reseg["gate"]
    if gate["passed"]:
        lines.append("promotion gate: passed; current moved to this bundle")
    elif gate["forced"]:
        lines.append(
            "promotion gate: refused, promoted anyway (--force): " + "; ".join(gate["tripped"])
        )
    else:
        lines.append(
            "promotion gate: REFUSED, current not moved (--force promotes): "
            + "; ".join(gate["tripped"])
        )
    return lines


def _resegmentation_section(reseg: dict[str, Any] | None) -> list[str]:
    """The re-segmentation part of the report: the summary lines and the migration matrix."""
    if not reseg:
        return []
    out = ["", "## Re-segmentation", ""]
    out += [f"    {line}" for line in resegmentation_lines(reseg)]
    migration = reseg.get("migration")
    if migration and migration["counts"]:
        k = len(migration["counts"][0])
        out += ["", "Migration (rows: previous segment id, columns: new segment id):", ""]
        out += _table(
            ["previous \\ new", *[str(j) for j in range(k)]],
            [[i, *row] for i, row in enumerate(migration["counts"])],
        )
    if reseg.get("psi"):
        out += ["", "Drift per feature (PSI against the previous bundle's deciles):", ""]
        out += _table(["feature", "PSI"], [[f, v] for f, v in reseg["psi"].items()])
    return out


def write_report(result: TrainResult, root: str | Path) -> Path:
    """Write the report to ``<root>/reports/<version>.md`` and return its path."""
    folder = Path(root) / REPORTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{result.bundle.version}.md"
    path.write_text(render_report(result), encoding="utf-8")
    return path


def summary(result: TrainResult) -> str:
    """The few lines printed on the terminal after training."""
    selection = result.segmentation.selection
    lines = [f"k = {selection.chosen}: {selection.reasoning}"]
    if result.truth_ari is not None:
        lines.append(f"agreement with planted segments: ARI {result.truth_ari:.3f}")
    lines.append("segments:")
    width = max(len(p["name"]) for p in result.bundle.profiles)
    for p in result.bundle.profiles:
        lines.append(
            f"  {p['segment_id']:>2}  {p['name']:<{width}}  {p['size']:>9,}  "
            f"{100 * p['share']:5.1f}%  {p['description']}"
        )
    clv = result.bundle.manifest.get("clv")
    if clv:
        lines.append(
            f"lifetime value over {clv['model']['horizon_months']} months: total "
            f"{clv['total_value']:,.0f}; by segment "
            + ", ".join(
                f"{p['name']} {100 * p['clv']['share']:.0f}% (mean {p['clv']['mean']:,.1f})"
                for p in result.bundle.profiles
            )
        )
    if result.response is None:
        skipped = result.bundle.manifest.get("metrics", {}).get("response_model_skipped")
        lines.append(f"response model: none ({skipped or 'no response history'})")
    else:
        m = result.response.metrics
        lines.append(
            f"response model: held-out AUC {_fmt(m['auc'])}, log loss {_fmt(m['log_loss'], 4)}, "
            f"{m['n_valid_customers']:,} held-out customers, best round {m['best_iteration']}"
        )
        if m.get("size_selection", {}).get("enabled"):
            lines.append(f"response model size: {m['size_selection']['traded']}")
    uplift = result.bundle.manifest.get("metrics", {}).get("uplift")
    if uplift:
        q = uplift["summary"]["qini"]
        lines.append(
            f"ranking: uplift (mean held-out Qini {_fmt(q['uplift'])} vs "
            f"{_fmt(q['response'])} for the response ranking)"
        )
    elif result.response is not None:
        reason = result.bundle.manifest.get("metrics", {}).get("uplift_skipped")
        lines.append(f"ranking: response ({reason})")
    lines += resegmentation_lines(result.bundle.manifest.get("resegmentation"))
    for warning in result.bundle.manifest.get("warnings", []):
        lines.append(f"warning: {warning}")
    lines.append(f"bundle: {result.path}")
    if result.report_path is not None:
        lines.append(f"report: {result.report_path}")
    html_path = getattr(result, "html_report_path", None)
    if html_path is not None:
        lines.append(f"HTML report: {html_path}")
    lines.append(f"total time: {result.total_seconds:.1f} s")
    return "\n".join(lines)
