"""Transactions benchmark: raw rows -> per-customer features, and the CLV fit on those customers.

A synthetic transaction table (one customer per ten rows on average, two years of dates, 3%
returns) is written to Parquet first (not timed). Then one child process reads it, cleans it and
builds the features (``training.transactions``), and fits BG/NBD and Gamma-Gamma on the customers
(``training.clv``) and values them (``scoring.clv``); each step is timed inside the child and the
child's peak resident memory is measured from outside.

    python -m bench.transactions [--smoke | --quick | --full] [--results DIR]

Targets (issue 10): 10,000,000 rows -> features within 60 s and 4 GB; BG/NBD + Gamma-Gamma fitted
on 1,000,000 customers within 30 s.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import (
    PYTHON,
    child_env,
    fmt,
    machine_info,
    markdown_table,
    mode_parser,
    publish,
    run_child,
)

MODES = {"smoke": 20_000, "quick": 1_000_000, "full": 10_000_000}
TARGET_ROWS, TARGET_FEATURES_S, TARGET_PEAK_MB = 10_000_000, 60.0, 4096.0
TARGET_FIT_S = 30.0

#: the child: generate (not timed), then read -> clean -> features -> CLV fit -> valuation
CHILD = r"""
import json, sys, time
import numpy as np, pandas as pd
rows, path = int(sys.argv[1]), sys.argv[2]
rng = np.random.default_rng(0)
customers = rng.integers(0, max(rows // 10, 1), rows)
pd.DataFrame({
    "customer_id": np.char.add("C", customers.astype(str)),
    "date": (pd.Timestamp("2023-01-01")
             + pd.to_timedelta(rng.integers(0, 730, rows), "D")).strftime("%Y-%m-%d"),
    "amount": np.round(rng.gamma(2.0, 25.0, rows) * np.where(rng.random(rows) < 0.03, -1, 1), 2),
}).to_parquet(path, index=False)
del customers

from training.config import TransactionsConfig
from training.load import read_table
from training.transactions import clean_transactions, customer_features, snapshot_date
from training.clv import fit_bgnbd, fit_gamma_gamma
from scoring.clv import BGNBDParams, CLVModel, GammaGammaParams, bgnbd_inputs, customer_value
out = {}
t0 = time.perf_counter()
tx = read_table(path, text_columns=("customer_id",))
t1 = time.perf_counter()
clean, summary = clean_transactions(tx, TransactionsConfig(path=path))
t2 = time.perf_counter()
features = customer_features(clean, snapshot_date(clean, None))
t3 = time.perf_counter()
del tx, clean
out.update(read_s=t1 - t0, clean_s=t2 - t1, features_s=t3 - t2, to_features_s=t3 - t0,
           customers=len(features))
freq = features["frequency"].to_numpy(float)
x, t_x, T = bgnbd_inputs(freq, features["recency_days"], features["tenure_days"], 7.0)
t4 = time.perf_counter()
bg = fit_bgnbd(x, t_x, T)
t5 = time.perf_counter()
repeat = freq >= 2
gg = fit_gamma_gamma(freq[repeat], features["monetary_avg"].to_numpy(float)[repeat])
t6 = time.perf_counter()
model = CLVModel(BGNBDParams(**bg.params), GammaGammaParams(**gg.params))
customer_value(model, freq, features["recency_days"].to_numpy(float),
               features["tenure_days"].to_numpy(float), features["monetary_avg"].to_numpy(float))
t7 = time.perf_counter()
out.update(bgnbd_s=t5 - t4, gamma_gamma_s=t6 - t5, fit_s=t6 - t4, valuation_s=t7 - t6,
           notes=bg.notes + gg.notes)
print("RESULT " + json.dumps(out))
"""


def run(rows: int, scratch: Path) -> dict[str, Any]:
    """One child run on ``rows`` generated transactions; its figures and peak memory."""
    child = run_child(
        [PYTHON, "-c", CHILD, str(rows), str(scratch / "transactions.parquet")],
        env=child_env(OMP_WAIT_POLICY="PASSIVE"),
        timeout=3600,
    ).check("transactions benchmark")
    line = next(x for x in child.stdout.splitlines() if x.startswith("RESULT "))
    return {"rows": rows, "wall_s": child.wall_s, "max_rss_mb": child.max_rss_mb} | json.loads(
        line[len("RESULT ") :]
    )


def markdown(result: dict[str, Any]) -> str:
    """The benchmark's table: seconds per step, peak memory, and the fits' boundary notes."""
    figures = result["figures"]
    table = markdown_table(
        ["rows", "customers", "read s", "clean s", "features s", "to features s", "BG/NBD s",
         "Gamma-Gamma s", "fit s", "valuation s", "peak MB"],
        [[fmt(figures["rows"]), fmt(figures["customers"]), fmt(figures["read_s"], 1),
          fmt(figures["clean_s"], 1), fmt(figures["features_s"], 1),
          fmt(figures["to_features_s"], 1), fmt(figures.get("bgnbd_s"), 1),
          fmt(figures.get("gamma_gamma_s"), 1), fmt(figures["fit_s"], 1),
          fmt(figures["valuation_s"], 1), fmt(figures["max_rss_mb"])]],
    )  # fmt: skip
    notes = figures.get("notes") or []
    if notes:
        table += "\n\nWhat the fits reported (synthetic purchases are uniform in time: no "
        table += "drop-out, no heterogeneity):\n\n" + "\n".join(f"- {n}" for n in notes)
    return table


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark in the chosen mode and publish its results."""
    argv = sys.argv[1:] if argv is None else argv
    ap = mode_parser(__doc__, list(MODES))
    ap.add_argument("--results", type=Path, default=None, help="folder for transactions.json")
    args = ap.parse_args(argv)
    rows = MODES[args.mode or "quick"]
    with tempfile.TemporaryDirectory(prefix="bench-tx-") as scratch:
        figures = run(rows, Path(scratch))
    full = rows == TARGET_ROWS
    result = {
        "machine": machine_info("bench.transactions", argv),
        "figures": figures,
        "targets": [
            {
                "issue": "10",
                "name": "10M transaction rows -> features (s)",
                "target": f"<= {TARGET_FEATURES_S:g}",
                "measured": figures["to_features_s"] if full else None,
                "met": figures["to_features_s"] <= TARGET_FEATURES_S if full else None,
            },
            {
                "issue": "10",
                "name": "10M transaction rows -> features, peak memory (MB)",
                "target": f"<= {TARGET_PEAK_MB:,.0f}",
                "measured": figures["max_rss_mb"] if full else None,
                "met": figures["max_rss_mb"] <= TARGET_PEAK_MB if full else None,
            },
            {
                "issue": "10",
                "name": "BG/NBD + Gamma-Gamma fit, ~1M customers (s)",
                "target": f"<= {TARGET_FIT_S:g}",
                "measured": figures["fit_s"] if full else None,
                "met": figures["fit_s"] <= TARGET_FIT_S if full else None,
            },
        ],
    }
    table = markdown(result)
    publish("transactions", result, table, args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
