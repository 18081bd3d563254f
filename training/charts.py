"""The report's charts, drawn with matplotlib and returned as SVG data URIs.

Each function takes plain data (from the manifest, ``evidence.json`` or the profiles) and
returns ``data:image/svg+xml;base64,...``, so the HTML report embeds every chart and opens
offline. matplotlib's object API (``Figure``, no ``pyplot``) keeps no global state between
charts, and matplotlib is imported on the first chart, not with the training pipeline (a run
without a report never pays for it). SVG with text left as text (``svg.fonttype = "none"``) renders in about half the time of
a PNG (no rasterising, no glyph outlines), stays sharp at any zoom, and is deterministic (no
date, fixed ids), so a rebuilt report equals the first.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: SVG output: text as text, ids from a fixed salt, no timestamp
SVG_SETTINGS = {"svg.fonttype": "none", "svg.hashsalt": "segment-report"}
#: matplotlib's "tab10" palette, as in the what-if page
PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip
ACCENT = "#d62728"


def _svg(fig: Figure) -> str:
    """The figure as an SVG data URI (one per chart)."""
    from matplotlib import rc_context

    buf = io.BytesIO()
    with rc_context(SVG_SETTINGS):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    return "data:image/svg+xml;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(width: float = 6.4, height: float = 3.6) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def _colour(segment: int) -> str:
    return PALETTE[segment % len(PALETTE)]


def elbow(table: list[dict], knee: int | None, chosen: int) -> str:
    """Inertia by k, with the knee and the chosen k marked."""
    ks = [int(r["k"]) for r in table]
    inertia = [float(r["inertia"]) for r in table]
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot(ks, inertia, marker="o", color="#1f77b4")
    if knee is not None:
        ax.axvline(knee, color="grey", linestyle="--", label=f"knee k={knee}")
    if chosen in ks:
        ax.plot(
            [chosen],
            [inertia[ks.index(chosen)]],
            "o",
            ms=12,
            mfc="none",
            mec=ACCENT,
            mew=2,
            label=f"chosen k={chosen}",
        )
    ax.set_xlabel("k (number of segments)")
    ax.set_ylabel("inertia (within-segment sum of squares)")
    ax.set_xticks(ks)
    ax.legend()
    ax.set_title("Elbow curve")
    return _svg(fig)


def k_scores(table: list[dict], chosen: int) -> str:
    """Silhouette, Calinski-Harabasz and Davies-Bouldin by k, the chosen k marked."""
    ks = [int(r["k"]) for r in table]
    fig = _figure(9.6, 3.0)
    for i, (key, title) in enumerate(
        [
            ("silhouette", "silhouette (higher is better)"),
            ("calinski_harabasz", "Calinski-Harabasz (higher is better)"),
            ("davies_bouldin", "Davies-Bouldin (lower is better)"),
        ]
    ):
        ax = fig.add_subplot(1, 3, i + 1)
        values = [float(r[key]) for r in table]
        ax.plot(ks, values, marker="o")
        if chosen in ks:
            ax.plot([chosen], [values[ks.index(chosen)]], "o", ms=11, mfc="none", mec=ACCENT, mew=2)
        ax.set_title(title, fontsize=9)
        ax.set_xticks(ks)
        ax.set_xlabel("k")
    fig.tight_layout()
    return _svg(fig)


def segment_map(evidence_map: dict, names: Sequence[str]) -> str:
    """A sample of customers on the first two principal components, coloured by segment."""
    x = np.asarray(evidence_map["x"])
    y = np.asarray(evidence_map["y"])
    seg = np.asarray(evidence_map["segment"], dtype=int)
    atyp = np.asarray(evidence_map["atypical"], dtype=bool)
    centers = np.asarray(evidence_map["centers"])
    explained = evidence_map.get("explained", [])
    fig = _figure(7.0, 5.0)
    ax = fig.add_subplot()
    for s, name in enumerate(names):
        m = seg == s
        ax.scatter(x[m], y[m], s=8, alpha=0.55, color=_colour(s), label=f"{s}: {name}")
    if atyp.any():
        ax.scatter(
            x[atyp],
            y[atyp],
            s=30,
            facecolors="none",
            edgecolors=ACCENT,
            linewidths=1.0,
            label="atypical",
        )
    ax.scatter(centers[:, 0], centers[:, 1], marker="X", s=160, color="black", label="centres")
    for s, (cx, cy) in enumerate(centers):
        ax.annotate(str(s), (cx, cy), xytext=(6, 6), textcoords="offset points", fontweight="bold")

    def axis(i: int) -> str:
        share = f" ({100 * explained[i]:.0f}% of variance)" if i < len(explained) else ""
        return f"PC{i + 1}{share}"

    ax.set_xlabel(axis(0))
    ax.set_ylabel(axis(1))
    ax.legend(fontsize=7, loc="best", markerscale=1.5)
    ax.set_title(f"Segment map ({x.size:,} customers sampled)")
    return _svg(fig)


def dendrogram(evidence_dendrogram: dict) -> str:
    """The Ward dendrogram of a sample, cut at the chosen k."""
    from scipy.cluster.hierarchy import dendrogram as draw

    Z = np.asarray(evidence_dendrogram["linkage"], dtype=np.float64)
    cut = float(evidence_dendrogram["cut_height"])
    fig = _figure(8.0, 3.8)
    ax = fig.add_subplot()
    draw(
        Z,
        ax=ax,
        truncate_mode="lastp",
        p=30,
        color_threshold=cut,
        no_labels=False,
        above_threshold_color="grey",
        leaf_font_size=7,
    )
    ax.axhline(cut, color=ACCENT, linestyle="--", label=f"cut at k={evidence_dendrogram['k']}")
    ax.set_ylabel("Ward merge distance")
    ax.set_xlabel(f"customers (sample of {evidence_dendrogram['rows']}; leaf labels: group sizes)")
    ax.legend()
    ax.set_title("Ward dendrogram")
    return _svg(fig)


def segment_sizes(names: Sequence[str], sizes: Sequence[int]) -> str:
    """Customers per segment."""
    fig = _figure(6.4, 0.5 + 0.45 * len(names))
    ax = fig.add_subplot()
    ypos = np.arange(len(names))
    ax.barh(ypos, sizes, color=[_colour(s) for s in range(len(names))])
    ax.set_yticks(ypos, [f"{s}: {n}" for s, n in enumerate(names)])
    ax.invert_yaxis()
    total = max(sum(sizes), 1)
    for i, v in enumerate(sizes):
        ax.annotate(
            f"{v:,} ({100 * v / total:.1f}%)",
            (v, i),
            xytext=(4, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
        )
    ax.set_xlabel("customers")
    ax.set_xlim(0, max(sizes) * 1.3 if sizes else 1)
    ax.set_title("Segment sizes")
    return _svg(fig)


def heatmap(
    values: np.ndarray,
    rows: Sequence[str],
    columns: Sequence[str],
    title: str,
    *,
    diverging: bool,
    fmt: str = "{:.2f}",
    colorbar: str = "",
) -> str:
    """A labelled heatmap with the value in each cell."""
    values = np.asarray(values, dtype=np.float64)
    fig = _figure(1.6 + 0.75 * len(columns), 1.2 + 0.45 * len(rows))
    ax = fig.add_subplot()
    if diverging:
        bound = float(np.nanmax(np.abs(values))) or 1.0
        im = ax.imshow(values, cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto")
    else:
        im = ax.imshow(values, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(columns)), columns, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    span = np.nanmax(values) - np.nanmin(values) if values.size else 0.0
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            v = values[i, j]
            if np.isnan(v):
                continue
            dark = (
                abs(v) > 0.6 * np.nanmax(np.abs(values))
                if diverging
                else (span > 0 and v < np.nanmin(values) + 0.5 * span)
            )
            ax.text(
                j,
                i,
                fmt.format(v),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if dark else "black",
            )
    fig.colorbar(im, ax=ax, label=colorbar, shrink=0.8)
    ax.set_title(title)
    return _svg(fig)


def comparison(methods: list[dict]) -> str:
    """Silhouette and stability of each clustering method, the served one highlighted."""
    labels = [m["label"] + (" (served)" if m.get("served") else "") for m in methods]
    fig = _figure(9.0, 0.8 + 0.42 * len(methods))
    for i, (key, title) in enumerate(
        [("silhouette", "silhouette (clustered rows)"), ("stability_ari", "stability (ARI)")]
    ):
        ax = fig.add_subplot(1, 2, i + 1)
        vals = [m.get(key) if m.get(key) is not None else np.nan for m in methods]
        colours = [ACCENT if m.get("served") else "#1f77b4" for m in methods]
        ypos = np.arange(len(methods))
        ax.barh(ypos, np.nan_to_num(vals, nan=0.0), color=colours)
        ax.set_yticks(ypos, labels if i == 0 else [""] * len(labels), fontsize=8)
        ax.invert_yaxis()
        for y, v in zip(ypos, vals, strict=True):
            ax.annotate(
                "n/a" if np.isnan(v) else f"{v:.2f}",
                (0 if np.isnan(v) else max(v, 0), y),
                xytext=(3, 0),
                textcoords="offset points",
                va="center",
                fontsize=7,
            )
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _svg(fig)


def roc(curve: dict, auc: float | None) -> str:
    """The held-out ROC curve of the response model."""
    fig = _figure(4.2, 4.0)
    ax = fig.add_subplot()
    ax.plot(curve["fpr"], curve["tpr"], label=f"AUC {auc:.3f}" if auc is not None else "model")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.set_title("ROC (held-out customers)")
    ax.legend(loc="lower right")
    return _svg(fig)


def calibration(bins: list[dict]) -> str:
    """Observed response rate against the mean prediction, per equal-count bin."""
    fig = _figure(4.2, 4.0)
    ax = fig.add_subplot()
    pred = [b["mean_predicted"] for b in bins]
    obs = [b["observed_rate"] for b in bins]
    top = max([*pred, *obs, 0.01]) * 1.05
    ax.plot([0, top], [0, top], linestyle="--", color="grey", label="perfect")
    ax.plot(pred, obs, marker="o", label="model")
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("observed response rate")
    ax.set_title("Calibration (held-out)")
    ax.legend(loc="upper left")
    return _svg(fig)


def importance(gains: dict[str, float], top: int = 15) -> str:
    """Total gain of each response-model feature, largest first."""
    items = sorted(gains.items(), key=lambda kv: -kv[1])[:top]
    fig = _figure(6.4, 0.6 + 0.32 * len(items))
    ax = fig.add_subplot()
    ypos = np.arange(len(items))
    ax.barh(ypos, [v for _, v in items], color="#2ca02c")
    ax.set_yticks(ypos, [k for k, _ in items], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("total gain")
    ax.set_title("Response model: feature importance")
    return _svg(fig)


def bars(labels: Sequence[str], values: Sequence[float], title: str, xlabel: str) -> str:
    """One horizontal bar per label (segment colours)."""
    fig = _figure(6.4, 0.6 + 0.42 * len(labels))
    ax = fig.add_subplot()
    ypos = np.arange(len(labels))
    ax.barh(ypos, values, color=[_colour(i) for i in range(len(labels))])
    ax.set_yticks(ypos, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    return _svg(fig)
