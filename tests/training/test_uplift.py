"""Tests of the uplift stage: the metrics, the control model, and the tables it reads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from scoring.bundle import BundleError, load_bundle
from training.config import load_config
from training.generate import write_demo
from training.pipeline import train
from training.uplift import qini_coefficient, qini_curve, uplift_at_k
from training.validate import TableError

ROOT = Path(__file__).resolve().parents[2]
DEMO_CONFIG = ROOT / "examples" / "demo.toml"


# ---- metrics --------------------------------------------------------------------------------
def test_qini_of_the_perfect_ranking_is_one_and_of_its_reverse_is_negative():
    rng = np.random.default_rng(0)
    treated = rng.random(400) < 0.5
    y = (rng.random(400) < np.where(treated, 0.4, 0.1)).astype(float)
    perfect = y * treated - y * ~treated
    assert qini_coefficient(y, treated, perfect) == pytest.approx(1.0)
    assert qini_coefficient(y, treated, -perfect) < 0


def test_qini_of_a_score_without_information_is_near_zero():
    rng = np.random.default_rng(1)
    treated = rng.random(20_000) < 0.5
    y = (rng.random(20_000) < np.where(treated, 0.3, 0.2)).astype(float)
    assert abs(qini_coefficient(y, treated, rng.random(20_000))) < 0.1


def test_qini_curve_counts_treated_minus_scaled_control_responses():
    y = np.array([1, 0, 1, 1, 0, 0], dtype=float)
    treated = np.array([1, 1, 0, 1, 0, 0], dtype=bool)
    score = np.array([6, 5, 4, 3, 2, 1], dtype=float)
    x, q = qini_curve(y, treated, score)
    assert x.tolist() == [0, 1, 2, 3, 4, 5, 6]
    # at 3 customers: 1 treated response of 2 treated, 1 control response of 1 control -> 1 - 1*2/1
    assert q[3] == pytest.approx(-1.0)
    # at the end: 2 of 3 treated vs 1 of 3 control -> 2 - 1 = 1
    assert q[-1] == pytest.approx(1.0)


def test_qini_is_undefined_without_both_arms():
    assert qini_coefficient(np.ones(3), np.ones(3, bool), np.arange(3.0)) is None


def test_uplift_at_k_is_the_rate_difference_among_the_top_share():
    y = np.array([1, 1, 0, 0, 1, 0, 0, 0, 0, 0], dtype=float)
    treated = np.array([1, 1, 0, 0, 1, 0, 1, 0, 1, 0], dtype=bool)
    score = np.arange(10.0)[::-1]
    # top 40%: treated rows 0,1 respond (2/2), control rows 2,3 do not (0/2)
    assert uplift_at_k(y, treated, score, 0.4) == pytest.approx(1.0)
    assert uplift_at_k(y, treated, score, 1.0) == pytest.approx(3 / 5 - 0 / 5)


# ---- training -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("uplift-demo")
    write_demo(out, n_customers=8000, seed=7)
    return out


@pytest.fixture(scope="module")
def uplift_result(demo_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("uplift-bundles")
    config = load_config(DEMO_CONFIG, {"data_dir": str(demo_dir), "output": str(root), "k": 5})
    return train(config, environ={})


def test_a_control_arm_gives_an_uplift_bundle_with_its_evaluation(uplift_result):
    bundle = uplift_result.bundle
    manifest = bundle.manifest
    assert manifest["ranking"] == "uplift"
    assert manifest["has_control_model"] is True
    assert "control_model.joblib" in manifest["files"]
    assert (bundle.path / "control_model.txt").is_file()
    uplift = manifest["metrics"]["uplift"]
    assert uplift["control_model"]["campaign_specific"] is True
    assert set(uplift["per_campaign"]) == {c.id for c in bundle.campaigns}
    win_back = uplift["per_campaign"]["win_back"]
    assert win_back["n_treated"] > 100 and win_back["n_control"] > 100
    # the planted persuadables are found: a positive observed and predicted lift
    assert win_back["observed_uplift"] > 0.03
    assert win_back["predicted_uplift"] > 0.03
    summary = uplift["summary"]
    # on planted sure things and do-not-disturbs the uplift ranking beats the response ranking
    assert summary["qini"]["uplift"] > summary["qini"]["response"] + 0.03
    assert set(summary) == {"qini", "uplift_at_10%", "uplift_at_20%", "uplift_at_30%"}


def test_the_control_model_is_verified_before_loading(uplift_result, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(uplift_result.path, copy)
    loaded = load_bundle(copy)
    assert loaded.control_model is not None
    assert loaded.control_model.num_feature() == loaded.response_model.num_feature()
    with open(copy / "control_model.joblib", "ab") as fh:
        fh.write(b"tampered")
    with pytest.raises(BundleError, match=r"control_model\.joblib"):
        load_bundle(copy)


def test_the_control_model_is_compiled_hashed_and_checked_like_the_response_model(
    uplift_result, tmp_path
):
    import hashlib
    import shutil

    from scoring import compiled_trees
    from scoring.engine import ScoringEngine

    bundle = load_bundle(uplift_result.path)
    entry = bundle.manifest["compiled_control_model"]
    assert entry["file"] == compiled_trees.CONTROL_OBJECT_FILE
    assert {entry["file"], entry["sample"]} <= set(bundle.manifest["files"])
    assert bundle.compiled_control_status.compiled, bundle.compiled_control_status.reason
    # the served control probabilities are the compiled ones, equal to LightGBM's within 1e-9
    sample = np.load(bundle.path / entry["sample"])
    engine = ScoringEngine(bundle)
    assert engine._control.compiled is bundle.compiled_control_forest
    got = np.asarray(engine._control.predict_rows(sample.tolist()))
    assert np.max(np.abs(got - bundle.control_model.predict(sample))) <= compiled_trees.TOLERANCE
    # tampered native code is refused before it is loaded
    copy = tmp_path / "copy"
    shutil.copytree(uplift_result.path, copy)
    with open(copy / entry["file"], "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(BundleError, match=r"control_model\.o: SHA-256"):
        load_bundle(copy)
    # an artifact that does not reproduce LightGBM: the C API serves the control model instead
    shutil.copytree(uplift_result.path, tmp_path / "swapped")
    swapped = tmp_path / "swapped"
    (swapped / entry["file"]).write_bytes((swapped / compiled_trees.OBJECT_FILE).read_bytes())
    manifest = json.loads((swapped / "manifest.json").read_text())
    data = (swapped / entry["file"]).read_bytes()
    manifest["files"][entry["file"]] = {
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
    }
    (swapped / "manifest.json").write_text(json.dumps(manifest))
    fallback = load_bundle(swapped)
    assert fallback.compiled_control_forest is None
    assert not fallback.compiled_control_status.compiled
    assert fallback.compiled_status.compiled  # the response model's own artifact still serves


def test_without_a_treated_column_the_bundle_ranks_by_response(demo_dir, tmp_path):
    responses = pd.read_parquet(demo_dir / "responses.parquet")
    sent_only = tmp_path / "responses.parquet"
    responses[responses["treated"] == 1].drop(columns="treated").to_parquet(sent_only)
    config = load_config(
        DEMO_CONFIG,
        {"data_dir": str(demo_dir), "output": str(tmp_path / "out"), "k": 5},
    )
    import dataclasses

    config = dataclasses.replace(
        config,
        responses=dataclasses.replace(config.responses, path=str(sent_only), treated_column=None),
    )
    result = train(config, environ={})
    manifest = result.bundle.manifest
    assert manifest["ranking"] == "response"
    assert manifest["has_control_model"] is False
    assert "no control rows" in manifest["metrics"]["uplift_skipped"]


def _experiment_table(n: int, seed: int) -> pd.DataFrame:
    """A randomized e-mail test in one table: features, an arm column, a common outcome."""
    rng = np.random.default_rng(seed)
    recency = rng.integers(1, 13, n)
    history = rng.gamma(2.0, 150.0, n).round(2)
    mens = rng.integers(0, 2, n)
    arm = rng.choice(["Mens E-Mail", "Womens E-Mail", "No E-Mail"], n)
    base = 0.08 + 0.01 * (12 - recency) / 12
    effect = np.where(arm == "Mens E-Mail", 0.08 * mens, 0.0) + np.where(
        arm == "Womens E-Mail", 0.05 * (1 - mens), 0.0
    )
    visit = (rng.random(n) < base + effect).astype(int)
    return pd.DataFrame(
        {
            "recency": recency,
            "history": history,
            "mens": mens,
            "segment": arm,
            "visit": visit,
        }
    )


def _experiment_config(tmp_path: Path, table: Path, **responses) -> Path:
    pool = tmp_path / "pool.json"
    pool.write_text(
        json.dumps(
            [
                {"id": "mens_email", "name": "Men's e-mail", "value": 1.0, "channel": "email"},
                {"id": "womens_email", "name": "Women's e-mail", "value": 1.0, "channel": "email"},
            ]
        )
    )
    lines = [
        'name = "email-test"',
        "[data]",
        f'customers = "{table}"',
        'id_column = ""',
        "[features]",
        'numeric = ["recency", "history", "mens"]',
        "[campaigns]",
        f'pool = "{pool}"',
        "[responses]",
        'format = "long"',
        'campaign_column = "segment"',
        'responded_column = "visit"',
        'control_values = ["No E-Mail"]',
        '[responses.campaign_map]\n"Mens E-Mail" = "mens_email"\n"Womens E-Mail" = "womens_email"',
        "[segmentation]",
        "k = 2",
        "stability_bootstraps = 0",
        "[response_model]",
        "learning_rate = 0.1",
        "num_leaves = 7",
        "[output]",
        f'root = "{tmp_path / "bundles"}"',
    ]
    for key, value in responses.items():
        lines.insert(lines.index('format = "long"'), f"{key} = {json.dumps(value)}")
    path = tmp_path / "experiment.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_one_table_experiment_with_a_no_contact_arm_trains_an_uplift_model(tmp_path):
    table = tmp_path / "email.csv"
    _experiment_table(6000, seed=3).to_csv(table, index=False)
    result = train(load_config(_experiment_config(tmp_path, table)), environ={})
    manifest = result.bundle.manifest
    assert manifest["ranking"] == "uplift"
    uplift = manifest["metrics"]["uplift"]
    # the control rows name no campaign: one no-contact model for every campaign
    assert uplift["control_model"]["campaign_specific"] is False
    assert uplift["per_campaign"]["mens_email"]["n_control"] > 300
    assert uplift["per_campaign"]["mens_email"]["observed_uplift"] > 0.0


def test_a_row_marked_sent_without_a_campaign_is_refused(tmp_path):
    frame = _experiment_table(500, seed=4)
    frame["sent"] = 1
    frame.loc[frame["segment"] == "No E-Mail", "segment"] = None
    table = tmp_path / "email.csv"
    frame.to_csv(table, index=False)
    config = load_config(_experiment_config(tmp_path, table, treated_column="sent"))
    with pytest.raises(TableError, match=r"column 'segment': .* marked as sent but naming no"):
        train(config, environ={})


def test_the_report_has_the_uplift_table_and_measured_lift_by_segment(uplift_result):
    text = uplift_result.report_path.read_text()
    assert "## Uplift (control arm)" in text
    assert "| win_back |" in text
    assert "Measured lift by campaign and segment" in text
    measured = uplift_result.bundle.manifest["metrics"]["uplift"]["measured_lift"]
    rows = {e["segment"]: e for e in measured["win_back"]}
    assert len(rows) == 5
    for e in rows.values():
        lo, hi = e["interval"]
        assert lo <= e["lift"] <= hi


def test_an_uplift_bundle_ranks_by_gain_on_both_paths(uplift_result):
    from scoring.engine import ScoringEngine
    from training.generate import generate_demo

    engine = ScoringEngine(load_bundle(uplift_result.path))
    assert engine.ranking == "uplift" and engine.has_uplift_model
    customers = generate_demo(300, seed=99).customers
    records = [
        {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()}
        for r in customers.drop(columns="true_segment").to_dict(orient="records")
    ]
    batch = engine.recommend(
        engine.batch_from_records(records), customer_ids=[r["customer_id"] for r in records]
    )
    offered = 0
    for record, expected in zip(records, batch, strict=True):
        assert engine.recommend_one(record) == expected
        assert expected["ranking"] == "uplift"
        for item in expected["campaigns"]:
            offered += 1
            assert item["uplift"] == item["probability"] - item["probability_without"]
            assert item["expected_gain"] == pytest.approx(item["uplift"] * item["value"])
            assert item["expected_gain"] > 0
    assert offered > 0


def test_the_folded_feedback_is_the_next_trainings_uplift_history(
    demo_dir, tmp_path, redis_url, redis_prefix
):
    """The whole loop: sends, hold-outs and conversions reach the stream as the service writes
    them, ``feedback fold`` turns them into a history, and training reads it with a config only
    and learns the uplift the generator planted."""
    import dataclasses

    import redis

    from api.feedback import FeedbackStream
    from training.feedback import HISTORY_FILE, fold

    history = pd.read_parquet(demo_dir / "responses.parquet")
    history = history[history["campaign_id"].notna()]
    events = []
    for i, row in enumerate(history.itertuples(index=False)):
        base = {
            "customer_id": str(row.customer_id),
            "campaign_id": row.campaign_id,
            "timestamp": "2026-12-02T10:00:00Z",
            "model_version": "v0",
        }
        kind = "impression" if row.treated == 1 else "holdout"
        events.append({**base, "event_id": f"x{i}", "type": kind})
        if row.responded == 1:
            events.append({**base, "event_id": f"y{i}", "type": "conversion"})
    client = redis.Redis.from_url(redis_url)
    stream = f"{redis_prefix}:feedback"
    feedback = FeedbackStream(client, stream)
    for start in range(0, len(events), 5000):
        feedback.append(events[start : start + 5000])
    folded = tmp_path / "feedback"
    summary = fold(client, stream, folded, batch_size=5000)
    assert summary.history_rows == len(history)
    config = load_config(
        DEMO_CONFIG, {"data_dir": str(demo_dir), "output": str(tmp_path / "out"), "k": 5}
    )
    config = dataclasses.replace(
        config,
        responses=dataclasses.replace(
            config.responses, path=str(folded / HISTORY_FILE), treated_column="treated"
        ),
    )
    manifest = train(config, environ={}).bundle.manifest
    assert manifest["ranking"] == "uplift"
    win_back = manifest["metrics"]["uplift"]["per_campaign"]["win_back"]
    assert win_back["observed_uplift"] > 0.03 and win_back["predicted_uplift"] > 0.03
