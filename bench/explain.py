"""Explain: path attribution vs exact TreeSHAP on one bundle, cost per offer and agreement.

For generated customers x every campaign of the bundle (the model rows ``explain`` explains),
both methods of :meth:`scoring.propensity.PropensityModel.contributions` are timed, interleaved
over rounds (3 rows a call, as a one-customer answer with three offers; and 1,000 rows a call),
and compared row by row: does path attribution name the same top feature as TreeSHAP, how many
of TreeSHAP's top three are among its top three, and Spearman's rank correlation of the two
vectors' magnitudes. Also checked: path contributions + expected value = raw score.

    python -m bench.explain --model-root DIR [--customers 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from bench.common import demo_customers, machine_info
from scoring.bundle import load_current
from scoring.engine import EXPLAIN_TOP, ScoringEngine


def model_rows(engine: ScoringEngine, n: int, seed: int = 5) -> np.ndarray:
    """Rows of ``n`` generated customers x every campaign (shape of the bundle's inputs)."""
    shape = "production" if len(engine.tables.input_names) > 7 else "demo"
    frame = demo_customers(n, seed=seed, shape=shape)
    batch = engine.batch_from_frame(frame)
    seg = engine.assign(batch).segment
    m = len(engine.campaigns)
    customer, campaign = np.repeat(np.arange(n), m), np.tile(np.arange(m), n)
    return engine.model_rows(batch, seg, customer, campaign)


def agreement(path: np.ndarray, exact: np.ndarray) -> dict[str, float]:
    """How path attribution's ranking of features agrees with TreeSHAP's, row by row."""
    top_p = np.argsort(-np.abs(path), axis=1, kind="stable")[:, :EXPLAIN_TOP]
    top_e = np.argsort(-np.abs(exact), axis=1, kind="stable")[:, :EXPLAIN_TOP]
    overlap = [len(set(a) & set(b)) / EXPLAIN_TOP for a, b in zip(top_p, top_e, strict=True)]
    rho = [spearmanr(np.abs(a), np.abs(b)).statistic for a, b in zip(path, exact, strict=True)]
    sign = np.sign(path[np.arange(len(path)), top_e[:, 0]]) == np.sign(
        exact[np.arange(len(exact)), top_e[:, 0]]
    )
    return {
        "rows": int(path.shape[0]),
        "top1_same": float(np.mean(top_p[:, 0] == top_e[:, 0])),
        "top3_overlap": float(np.mean(overlap)),
        "top3_same_order": float(np.mean(np.all(top_p == top_e, axis=1))),
        "spearman_median": float(np.nanmedian(rho)),
        "treeshap_top1_sign_same": float(np.mean(sign)),
    }


def timing(engine: ScoringEngine, rows: np.ndarray, rounds: int) -> dict[str, Any]:
    """Microseconds per call (3 rows) and per row (1,000 rows), both methods interleaved."""
    model = engine.model
    three, many = rows[:3], rows[:1000]
    calls = {
        ("path", 3): 300,
        ("treeshap", 3): 10,
        ("path", len(many)): 20,
        ("treeshap", len(many)): 1,
    }
    got: dict[str, list[float]] = {f"{m} x{n}": [] for m, n in calls}
    for r in range(rounds):
        order = list(calls.items())
        for (method, n), reps in order if r % 2 == 0 else order[::-1]:
            block = three if n == 3 else many
            model.contributions(block, method)
            t0 = time.perf_counter()
            for _ in range(reps):
                model.contributions(block, method)
            got[f"{method} x{n}"].append((time.perf_counter() - t0) / reps * 1e6)
    med = {k: float(np.median(v)) for k, v in got.items()}
    return {
        "us_per_call_3_rows": {m: med[f"{m} x3"] for m in ("path", "treeshap")},
        "us_per_row_1000_rows": {
            m: med[f"{m} x{len(many)}"] / len(many) for m in ("path", "treeshap")
        },
        "treeshap_over_path_3_rows": med["treeshap x3"] / med["path x3"],
        "rounds": got,
    }


def main(argv: list[str] | None = None) -> int:
    """Measure one bundle and print (and optionally write) the figures as JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-root", type=Path, required=True)
    p.add_argument("--customers", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", type=Path, help="also write the JSON here")
    args = p.parse_args(argv)
    engine = ScoringEngine(load_current(args.model_root))
    rows = model_rows(engine, args.customers)
    booster = engine.model.booster
    path = engine.model.contributions(rows, "path")
    exact = engine.model.contributions(rows, "treeshap")
    raw = booster.predict(rows, raw_score=True)
    result = {
        "bundle": str(args.model_root),
        "trees": booster.num_trees(),
        "features": booster.num_feature(),
        "sum_error_max": float(
            np.max(np.abs(path.sum(axis=1) + engine.model.attribution.expected_value - raw))
        ),
        "agreement": agreement(path, exact),
        "timing": timing(engine, rows, args.rounds),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "machine": machine_info("bench.explain", argv if argv is not None else sys.argv[1:]),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
