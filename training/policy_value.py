"""What a targeting policy would have earned, estimated from a randomized experiment.

Given a bundle and a randomized table (customers, who was sent which campaign, who was held out,
and who responded), :func:`evaluate_policies` estimates by inverse propensity weighting (IPW) the
value of five policies on those customers: the bundle's **uplift** ranking (top-1 by expected
gain, nothing when no gain is positive), the **response** ranking (top-1 by probability x value
minus cost: today's ranking), the **best single campaign** for everyone, a **random** eligible
campaign, and **nobody**. Intervals are percentile bootstraps over customers; differences between
policies are bootstrapped on the same resamples (paired).

The estimator, per campaign ``j``: ``T_j`` the customers sent ``j`` (share ``e1_j``), ``C_j``
those held out of it (a control row for ``j``, or a control row naming no campaign; share
``e0_j``). A customer's contribution when the policy picks ``j`` is
``value_j * (1[T_j] y1 / e1_j - 1[C_j] y0 / e0_j) - cost_j``: unbiased for the gain over sending
nothing when the arms were assigned at random. When the control rows name no campaign (one
outcome for every arm, as in an e-mail test measuring visits) the absolute response rate of each
policy is reported too: ``1[arm = choice] y / share of that arm``.

The choices come from the scoring core (eligibility, probabilities, :mod:`scoring.policy`), so
the policies evaluated are the ones the service would run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scoring.engine import ScoringEngine
from scoring.policy import expected_gain
from training.config import TrainConfig, config_from_dict, load_config
from training.load import customer_ids, load_tables
from training.prepare import map_control_rows, split_control_rows
from training.validate import TableError, locate_responses, response_values

POLICIES = ("uplift", "response", "best_single", "random", "nobody")
NONE = -1


@dataclass(frozen=True)
class Experiment:
    """A randomized table located against a bundle's campaign pool."""

    #: the customer table as read (the bundle's feature columns among its columns)
    customers: pd.DataFrame
    #: (n, m) True where customer i was sent campaign j, and the outcome then
    sent: np.ndarray
    sent_outcome: np.ndarray
    #: (n, m) True where customer i was held out of campaign j, and the outcome then
    held: np.ndarray
    held_outcome: np.ndarray
    #: True when every control row names no campaign (one common outcome)
    common_control: bool


def experiment_config(
    path: str | Path,
    *,
    id_column: str = "",
    campaign_column: str = "campaign_id",
    responded_column: str = "responded",
    treated_column: str | None = None,
    control_values: tuple[str, ...] = (),
    campaign_map: dict[str, str] | None = None,
) -> TrainConfig:
    """A config reading a one-table experiment: features, arm and outcome in one file (a TOML
    training config is read with :func:`training.config.load_config` instead)."""
    if Path(path).suffix.lower() == ".toml":
        return load_config(path)
    responses: dict[str, Any] = {
        "format": "long",
        "campaign_column": campaign_column,
        "responded_column": responded_column,
        "control_values": list(control_values),
        "campaign_map": dict(campaign_map or {}),
    }
    if treated_column:
        responses["treated_column"] = treated_column
    raw = {"data": {"customers": str(path), "id_column": id_column}, "responses": responses}
    return config_from_dict(raw)


def load_experiment(config: TrainConfig, engine: ScoringEngine) -> Experiment:
    """Read the randomized table the config names and locate it against the bundle's pool."""
    if config.responses is None:
        raise TableError("the experiment has no response section (arm and outcome columns)")
    config = dataclasses.replace(config, campaigns=dataclasses.replace(config.campaigns, pool=None))
    loaded = load_tables(config)
    if loaded.responses is None:
        raise TableError("the experiment table has no response rows", column="responded")
    ids = pd.Index(customer_ids(loaded.customers, config))
    if not ids.is_unique:
        raise TableError("customer ids are not unique", column=config.data.id_column)
    missing = [c for c in engine.schema.input_names if c not in loaded.customers.columns]
    if missing:
        raise TableError(
            f"the experiment lacks the bundle's feature column(s) {', '.join(missing)}",
            column=missing[0],
        )
    n, m = len(ids), len(engine.campaigns)
    sent_rows, held_rows = split_control_rows(loaded.responses, config)
    sent = np.zeros((n, m), dtype=bool)
    sent_outcome = np.zeros((n, m), dtype=np.float64)
    if len(sent_rows):
        cust, camp = locate_responses(sent_rows, ids, engine.campaigns)
        y = response_values(
            sent_rows["responded"].reset_index(drop=True), config, config.responses.responded_column
        )
        sent[cust, camp] = True
        sent_outcome[cust, camp] = y
    held = np.zeros((n, m), dtype=bool)
    held_outcome = np.zeros((n, m), dtype=np.float64)
    common = True
    if held_rows is not None and len(held_rows):
        controls = map_control_rows(held_rows, ids, engine.campaigns, config)
        cust = controls["customer_idx"].to_numpy()
        camp = controls["campaign_idx"].to_numpy()
        y = controls["responded"].to_numpy().astype(np.float64)
        common = bool((camp < 0).all())
        every = camp < 0
        held[cust[every], :] = True
        held_outcome[cust[every], :] = y[every, None]
        held[cust[~every], camp[~every]] = True
        held_outcome[cust[~every], camp[~every]] = y[~every]
    if not held.any():
        raise TableError(
            "the experiment has no control rows: a policy's gain needs customers who were held "
            "out (responses.treated_column or responses.control_values)",
            column="responded",
        )
    return Experiment(loaded.customers, sent, sent_outcome, held, held_outcome, common)


def policy_choices(engine: ScoringEngine, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Campaign index (or -1: nothing) per customer for the model-driven policies, plus the
    eligibility mask under ``"eligible"``."""
    batch = engine.batch_from_frame(frame)
    a = engine.assign(batch)
    mask = engine.eligibility_mask(a.segment)
    values = np.array([c.value for c in engine.campaigns], dtype=np.float64)
    costs = np.array([getattr(c, "cost", 0.0) for c in engine.campaigns], dtype=np.float64)
    p1 = engine.propensities(batch, a.segment, mask)
    out = {"eligible": mask, "response": _top(expected_gain(p1, None, values, costs), mask)}
    if engine.has_uplift_model:
        p0 = engine.propensities(batch, a.segment, mask, control=True)
        out["uplift"] = _top(expected_gain(p1, p0, values, costs), mask)
    return out


def _top(gain: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The campaign with the largest positive gain per row, -1 where none is positive."""
    g = np.where(mask, gain, -np.inf)
    best = np.argmax(g, axis=1)
    return np.where(g[np.arange(len(best)), best] > 0, best, NONE)


def contributions(experiment: Experiment, values: np.ndarray, costs: np.ndarray) -> np.ndarray:
    """(n, m) IPW contribution to the gain over sending nothing, if customer i got campaign j."""
    e1 = experiment.sent.mean(axis=0)
    e0 = experiment.held.mean(axis=0)
    treated = np.divide(
        experiment.sent * experiment.sent_outcome,
        e1,
        out=np.zeros_like(experiment.sent_outcome),
        where=e1 > 0,
    )
    control = np.divide(
        experiment.held * experiment.held_outcome,
        e0,
        out=np.zeros_like(experiment.held_outcome),
        where=e0 > 0,
    )
    return (treated - control) * values - costs


def _pick(matrix: np.ndarray, choice: np.ndarray) -> np.ndarray:
    rows = np.arange(matrix.shape[0])
    return np.where(choice >= 0, matrix[rows, np.maximum(choice, 0)], 0.0)


def evaluate_policies(
    engine: ScoringEngine,
    experiment: Experiment,
    *,
    bootstrap: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """IPW value of each policy with bootstrap intervals, and paired differences."""
    values = np.array([c.value for c in engine.campaigns], dtype=np.float64)
    costs = np.array([getattr(c, "cost", 0.0) for c in engine.campaigns], dtype=np.float64)
    choices = policy_choices(engine, experiment.customers)
    mask = choices["eligible"]
    gain = contributions(experiment, values, costs)
    lift = contributions(experiment, np.ones_like(values), np.zeros_like(costs))
    n, m = gain.shape
    unavailable = np.array(
        [not (experiment.sent[:, j].any() and experiment.held[:, j].any()) for j in range(m)]
    )
    mean_gain = np.where(unavailable, -np.inf, np.where(mask, gain, 0.0).mean(axis=0))
    best = int(np.argmax(mean_gain))
    per_customer: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    picked: dict[str, np.ndarray] = {}
    for name in ("uplift", "response"):
        if name in choices:
            picked[name] = choices[name]
    picked["best_single"] = np.where(mask[:, best], best, NONE)
    picked["nobody"] = np.full(n, NONE)
    for name, choice in picked.items():
        per_customer[name] = (_pick(gain, choice), _pick(lift, choice))
    n_eligible = np.maximum(mask.sum(axis=1), 1)
    per_customer["random"] = (
        np.where(mask, gain, 0.0).sum(axis=1) / n_eligible,
        np.where(mask, lift, 0.0).sum(axis=1) / n_eligible,
    )
    rate = _response_rates(experiment, picked) if experiment.common_control else {}

    rng = np.random.default_rng(seed)
    samples = [rng.integers(0, n, n) for _ in range(bootstrap)]

    def interval(values_i: np.ndarray) -> list[float]:
        means = np.array([values_i[s].mean() for s in samples])
        return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]

    policies: dict[str, Any] = {}
    for name in POLICIES:
        if name not in per_customer:
            policies[name] = {"available": False, "reason": "the bundle has no uplift model"}
            continue
        g, inc = per_customer[name]
        entry = {
            "available": True,
            "gain_per_customer": float(g.mean()),
            "gain_interval": interval(g),
            "incremental_responses_per_1000": float(1000 * inc.mean()),
            "incremental_interval": [1000 * v for v in interval(inc)],
            "share_contacted": float(
                (picked[name] >= 0).mean() if name in picked else (mask.any(axis=1)).mean()
            ),
        }
        if name in rate:
            entry["response_rate"] = float(rate[name].mean())
            entry["response_rate_interval"] = interval(rate[name])
        policies[name] = entry
    comparisons = {}
    if "uplift" in per_customer:
        for other in ("response", "best_single", "random", "nobody"):
            diff = per_customer["uplift"][0] - per_customer[other][0]
            comparisons[f"uplift_minus_{other}"] = {
                "gain_per_customer": float(diff.mean()),
                "interval": interval(diff),
            }
    return {
        "customers": n,
        "bootstrap": bootstrap,
        "best_single_campaign": engine.campaigns[best].id,
        "common_control": experiment.common_control,
        "arm_shares": {
            c.id: {
                "sent": float(experiment.sent[:, j].mean()),
                "held_out": float(experiment.held[:, j].mean()),
            }
            for j, c in enumerate(engine.campaigns)
        },
        "policies": policies,
        "comparisons": comparisons,
    }


def _response_rates(experiment: Experiment, picked: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-customer IPW terms of the absolute response rate (common control outcome only)."""
    control = experiment.held[:, 0]
    e0 = control.mean()
    y0 = experiment.held_outcome[:, 0]
    e1 = experiment.sent.mean(axis=0)
    out = {}
    for name, choice in picked.items():
        j = np.maximum(choice, 0)
        rows = np.arange(len(choice))
        sent_term = np.divide(
            experiment.sent[rows, j] * experiment.sent_outcome[rows, j],
            e1[j],
            out=np.zeros(len(choice)),
            where=e1[j] > 0,
        )
        out[name] = np.where(choice >= 0, sent_term, control * y0 / e0)
    return out


def format_table(result: dict[str, Any]) -> str:
    """The policy values as a plain-text table."""
    lines = [
        f"{result['customers']} customers, {result['bootstrap']} bootstrap resamples; "
        f"best single campaign: {result['best_single_campaign']}",
        f"{'policy':<12} {'gain/customer':>14} {'95% interval':>22} {'extra resp/1000':>16}"
        f" {'contacted':>9}" + (f" {'response rate':>14}" if result["common_control"] else ""),
    ]
    for name, p in result["policies"].items():
        if not p["available"]:
            lines.append(f"{name:<12} n/a ({p['reason']})")
            continue
        lo, hi = p["gain_interval"]
        line = (
            f"{name:<12} {p['gain_per_customer']:>14.4f} {f'[{lo:.4f}, {hi:.4f}]':>22} "
            f"{p['incremental_responses_per_1000']:>16.1f} {p['share_contacted']:>9.1%}"
        )
        if "response_rate" in p:
            line += f" {p['response_rate']:>14.2%}"
        lines.append(line)
    for name, c in result["comparisons"].items():
        lo, hi = c["interval"]
        lines.append(f"{name}: {c['gain_per_customer']:+.4f} per customer [{lo:+.4f}, {hi:+.4f}]")
    return "\n".join(lines)
