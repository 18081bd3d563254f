"""Uplift ranking against the alternatives, on generated customers whose truth is known.

The demo generator plants sure things, persuadables and do-not-disturbs and keeps the true
probabilities with and without each campaign. A bundle trained on one generated history is
applied to *new* generated customers (another seed); each policy's true gain over sending
nothing is then exact: the mean over customers of (p_with - p_without) x value of the campaign it
picks. The IPW estimate from the new customers' own randomized history is checked against it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from scoring.bundle import load_current
from scoring.engine import ScoringEngine
from training.cli import main
from training.config import load_config
from training.generate import generate_demo, write_demo
from training.pipeline import train
from training.policy_value import evaluate_policies, load_experiment, policy_choices

ROOT = Path(__file__).resolve().parents[2]
DEMO_CONFIG = ROOT / "examples" / "demo.toml"
TRAIN_CUSTOMERS = 12_000
EXPERIMENT_CUSTOMERS = 12_000
#: the uplift ranking must earn at least this much more than the response ranking (relative)
MARGIN_OVER_RESPONSE = 0.30


@pytest.fixture(scope="module")
def bundle_root(tmp_path_factory):
    data = tmp_path_factory.mktemp("policy-train")
    write_demo(data, n_customers=TRAIN_CUSTOMERS, seed=21)
    root = tmp_path_factory.mktemp("policy-bundles")
    train(load_config(DEMO_CONFIG, {"data_dir": str(data), "output": str(root)}), environ={})
    return root


@pytest.fixture(scope="module")
def engine(bundle_root):
    return ScoringEngine(load_current(bundle_root))


@pytest.fixture(scope="module")
def experiment_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("policy-experiment")
    write_demo(out, n_customers=EXPERIMENT_CUSTOMERS, seed=22)
    return out


def _true_gains(engine, experiment_dir):
    demo = generate_demo(EXPERIMENT_CUSTOMERS, seed=22)
    values = np.array([c.value for c in engine.campaigns])
    assert [c.id for c in engine.campaigns] == [c.id for c in demo.campaigns]
    gain = demo.truth.uplift * values
    choices = policy_choices(engine, demo.customers)
    rows = np.arange(len(gain))
    out = {
        name: float(np.where(c >= 0, gain[rows, np.maximum(c, 0)], 0.0).mean())
        for name, c in choices.items()
        if name != "eligible"
    }
    out["best_single"] = float(gain.mean(axis=0).max())
    out["random"] = float(gain.mean())
    return out


def test_uplift_ranking_earns_clearly_more_than_the_alternatives(engine, experiment_dir):
    truth = _true_gains(engine, experiment_dir)
    # stated margins, on the exact planted probabilities of 12,000 new customers
    assert truth["uplift"] >= (1 + MARGIN_OVER_RESPONSE) * truth["response"], truth
    assert truth["uplift"] >= 1.3 * truth["best_single"], truth
    assert truth["uplift"] >= 2.0 * truth["random"], truth
    assert truth["response"] > 0


def test_ipw_estimates_agree_with_the_truth(engine, experiment_dir):
    truth = _true_gains(engine, experiment_dir)
    config = load_config(DEMO_CONFIG, {"data_dir": str(experiment_dir)})
    result = evaluate_policies(engine, load_experiment(config, engine), bootstrap=100, seed=1)
    policies = result["policies"]
    assert policies["nobody"]["gain_per_customer"] == 0.0
    for name in ("uplift", "response", "random"):
        lo, hi = policies[name]["gain_interval"]
        # the interval is wide for the response policy (its big-value picks are rare arms);
        # allow a little slack for the one-in-twenty miss of a 95% interval
        slack = 0.15 * (hi - lo)
        assert lo - slack <= truth[name] <= hi + slack, (name, truth[name], lo, hi)
    lo, _ = result["comparisons"]["uplift_minus_random"]["interval"]
    assert lo > 0
    assert result["common_control"] is False


def test_evaluate_policy_command_prints_and_writes_the_table(
    bundle_root, experiment_dir, tmp_path, capsys
):
    out = tmp_path / "policy.json"
    code = main(
        [
            "-q",
            "evaluate-policy",
            "--bundle",
            str(bundle_root),
            "--experiment",
            str(DEMO_CONFIG),
            "--data-dir",
            str(experiment_dir),
            "--bootstrap",
            "30",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "ranking: uplift" in printed
    for name in ("uplift", "response", "best_single", "random", "nobody"):
        assert name in printed
    result = json.loads(out.read_text())
    assert set(result["policies"]) == {"uplift", "response", "best_single", "random", "nobody"}


def test_one_table_experiment_reports_response_rates(engine, experiment_dir, tmp_path, capsys):
    """A Hillstrom-like table: one row per customer, arm and outcome columns, a no-contact arm."""
    demo = generate_demo(3000, seed=23)
    rng = np.random.default_rng(0)
    m = len(demo.campaigns)
    arm = rng.integers(-1, m, len(demo.customers))  # -1: no e-mail
    j = np.maximum(arm, 0)
    rows = np.arange(len(arm))
    p = np.where(arm >= 0, demo.truth.treated[rows, j], demo.truth.control[rows, 0])
    table = demo.customers.assign(
        arm=np.where(arm >= 0, np.array([c.id for c in demo.campaigns])[j], "No contact"),
        visit=(rng.random(len(arm)) < p).astype(int),
    )
    path = tmp_path / "experiment.csv"
    table.to_csv(path, index=False)
    code = main(
        [
            "-q",
            "evaluate-policy",
            "--bundle",
            str(engine.bundle.path),
            "--experiment",
            str(path),
            "--id-column",
            "customer_id",
            "--campaign-column",
            "arm",
            "--responded-column",
            "visit",
            "--control-value",
            "No contact",
            "--bootstrap",
            "20",
            "--json",
            str(tmp_path / "r.json"),
        ]
    )
    assert code == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["common_control"] is True
    nobody = result["policies"]["nobody"]["response_rate"]
    control_rate = table.loc[arm < 0, "visit"].mean()
    assert nobody == pytest.approx(control_rate)
    assert "response rate" in capsys.readouterr().out


def test_an_experiment_without_a_control_arm_is_refused(engine, tmp_path, capsys):
    demo = generate_demo(500, seed=24)
    table = demo.customers.assign(arm="cashback", visit=0)
    path = tmp_path / "no-control.csv"
    table.to_csv(path, index=False)
    code = main(
        [
            "-q",
            "evaluate-policy",
            "--bundle",
            str(engine.bundle.path),
            "--experiment",
            str(path),
            "--campaign-column",
            "arm",
            "--responded-column",
            "visit",
        ]
    )
    assert code == 2
    assert "no control rows" in capsys.readouterr().err
