"""Training with RFM: edges from the training population, the RFM groups as segments, the RFM
part of profiles, manifest and report, and the refusals before fitting."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rfm_demo import CLV_COLUMNS, rfm_demo_config, write_rfm_demo

from scoring.bundle import load_current
from scoring.engine import ScoringEngine
from scoring.rfm import GROUPS, quintile_edges
from training.config import ClvConfig, ConfigError, RfmConfig, load_config
from training.engines.local import score_frame
from training.pipeline import identity_matching, train


def test_an_rfm_bundle_serves_the_eleven_groups(rfm_bundle):
    root, data = rfm_bundle
    bundle = load_current(root)
    manifest = bundle.manifest
    assert manifest["served_clustering"] == "rfm"
    assert bundle.segment_names == list(GROUPS)
    assert [p["name"] for p in bundle.profiles] == list(GROUPS)
    customers = pd.read_parquet(data / "customers.parquet")
    # the edges are the quintiles of the training population (no feature here has gaps)
    for role, column in (("recency", "recency_days"), ("frequency", "frequency"),
                         ("monetary", "total_spend")):  # fmt: skip
        expected = quintile_edges(customers[column].to_numpy(np.float64))
        assert manifest["rfm"]["edges"][role] == pytest.approx(expected, abs=0, rel=1e-15)
    # every customer is in exactly the group the rule gives; sizes add up, empty groups stay
    engine = ScoringEngine(bundle)
    served = engine.assign(engine.batch_from_frame(customers)).segment
    sizes = np.bincount(served, minlength=len(GROUPS)).tolist()
    assert sizes == [p["size"] for p in bundle.profiles]
    assert sum(sizes) == len(customers)
    assert manifest["rfm"]["customers"] == dict(zip(GROUPS, sizes, strict=True))
    assert len(bundle.profiles) == 11  # groups without customers are still segments
    for profile in bundle.profiles:
        if profile["size"]:
            assert profile["rfm"]["groups"] == {profile["name"]: 1.0}
    # the customers' (R, F) cells add up to the table
    assert np.sum(manifest["rfm"]["cells"]) == len(customers)


def test_rfm_groups_order_customers_by_value(rfm_bundle):
    bundle = load_current(rfm_bundle[0])
    clv = {p["name"]: p["clv"]["mean"] for p in bundle.profiles if p["size"]}
    # a check the groups mean what they say on these data: the best beat the lapsed
    assert clv["Champions"] > clv["Hibernating"]
    assert clv["Loyal"] > clv["Lost"]
    by_recency = {p["name"]: p["rfm"]["recency"] for p in bundle.profiles if p["size"]}
    assert by_recency["Champions"] == 5 and by_recency["Lost"] == 1


def test_campaigns_may_name_rfm_groups(rfm_bundle):
    from rfm_demo import WIN_BACK_GROUPS

    bundle = load_current(rfm_bundle[0])
    engine = ScoringEngine(bundle)
    j = engine.campaign_ids.index("win_back")
    eligible = [GROUPS[s] for s in np.flatnonzero(engine.tables.eligible[:, j])]
    assert eligible == [g for g in GROUPS if g in WIN_BACK_GROUPS]
    assert not any("names no segment" in w for w in bundle.manifest["warnings"])


def test_the_report_shows_the_rfm_groups(rfm_bundle):
    root, _ = rfm_bundle
    bundle = load_current(root)
    md = (root / "reports" / f"{bundle.version}.md").read_text()
    assert "## RFM" in md and "The segments are the RFM groups" in md
    html = (root / "reports" / f"{bundle.version}.html").read_text()
    assert 'id="rfm"' in html and 'alt="customers by R and F score"' in html


def test_a_kmeans_bundle_gets_rfm_scores_in_profiles_and_answers(tmp_path):
    data, root = tmp_path / "data", tmp_path / "bundles"
    write_rfm_demo(data, n=1200, seed=3)
    config = rfm_demo_config(data, root, method="kmeans", weight_gains=False)
    config = dataclasses.replace(
        config,
        segmentation=dataclasses.replace(config.segmentation, k=4),
        comparison=dataclasses.replace(config.comparison, enabled=False),
        output=dataclasses.replace(config.output, report=True),
    )
    result = train(config, environ={})
    bundle = load_current(root)
    assert bundle.manifest["served_clustering"] == "kmeans"
    assert not bundle.manifest["rfm"]["segments"]
    for profile in bundle.profiles:
        groups = profile["rfm"]["groups"]
        assert sum(groups.values()) == pytest.approx(1.0)
        assert set(groups) <= set(GROUPS)
        assert 1 <= profile["rfm"]["recency"] <= 5
    customers = pd.read_parquet(data / "customers.parquet")
    engine = ScoringEngine(bundle)
    head = customers.head(40)
    answers = engine.predict_segment(engine.batch_from_frame(head))
    # the documented rule, written out here: 1 + edges below the value; R reversed
    expected = {}
    for role, column in (("recency", "recency_days"), ("frequency", "frequency"),
                         ("monetary", "total_spend")):  # fmt: skip
        edges = np.quantile(customers[column].to_numpy(np.float64), [0.2, 0.4, 0.6, 0.8])
        score = 1 + (head[column].to_numpy(np.float64)[:, None] > edges).sum(axis=1)
        expected[role] = 6 - score if role == "recency" else score
    for i, answer in enumerate(answers):
        assert answer["rfm"]["recency"] == expected["recency"][i]
        assert answer["rfm"]["frequency"] == expected["frequency"][i]
        assert answer["rfm"]["monetary"] == expected["monetary"][i]
        assert answer["rfm"]["group"] in GROUPS
    assert "## RFM" in result.report_path.read_text()
    assert "weight_gains" in bundle.manifest["clv"] and not bundle.manifest["clv"]["weight_gains"]


def _demo(tmp_path, **changes):
    write_rfm_demo(tmp_path / "data", n=300, seed=1)
    config = rfm_demo_config(tmp_path / "data", tmp_path / "out")
    return dataclasses.replace(config, **changes)


def _reload(config):
    """Run the cross-field checks the loader runs (``load_config`` -> ``_check``)."""
    from training.config import _check

    _check(config)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"rfm": RfmConfig(recency="days_since")}, "rfm.recency: 'days_since' is not a numeric"),
        ({"rfm": RfmConfig(recency="recency_days", frequency="frequency")},
         "rfm.monetary: 'monetary_total' is not a numeric feature"),
    ],
)  # fmt: skip
def test_missing_rfm_features_are_refused_before_fitting(tmp_path, changes, message):
    config = _demo(tmp_path, **changes)
    with pytest.raises(ConfigError, match=message):
        _reload(config)
    assert not (tmp_path / "out").exists()


def test_rfm_refusals_name_the_key_value_and_what_is_allowed(tmp_path):
    config = _demo(tmp_path)
    seg = config.segmentation
    with pytest.raises(ConfigError, match=r"segmentation.model: 'gaussian_mixture' cannot serve"):
        _reload(
            dataclasses.replace(
                config, segmentation=dataclasses.replace(seg, model="gaussian_mixture")
            )
        )
    with pytest.raises(ConfigError, match=r'segmentation.k: k=5 with method = "rfm"'):
        _reload(dataclasses.replace(config, segmentation=dataclasses.replace(seg, k=5)))
    with pytest.raises(ConfigError, match=r"clv.weight_gains: needs clv.enabled"):
        _reload(dataclasses.replace(config, clv=ClvConfig(enabled=False, weight_gains=True)))
    feats = dataclasses.replace(
        config.features, numeric=tuple(f for f in config.features.numeric if f != "tenure_days")
    )
    with pytest.raises(ConfigError, match=r"tenure_days not in features.numeric"):
        _reload(dataclasses.replace(config, features=feats))


def test_config_files_name_the_method_and_columns(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text(
        '[data]\ncustomers = "x.csv"\n[features]\nnumeric = ["r", "f", "m"]\n'
        '[segmentation]\nmethod = "rfm"\n[rfm]\nrecency = "r"\nfrequency = "f"\nmonetary = "m"\n'
    )
    config = load_config(toml)
    assert config.segmentation.method == "rfm" and config.rfm.monetary == "m"
    toml.write_text('[data]\ncustomers = "x.csv"\n[segmentation]\nmethod = "quintiles"\n')
    with pytest.raises(ConfigError, match=r'segmentation.method.*"kmeans", "rfm"'):
        load_config(toml)
    toml.write_text(
        '[data]\ncustomers = "x.csv"\n[features]\nnumeric = ["a"]\n[segmentation]\nmethod = "rfm"\n'
    )
    with pytest.raises(ConfigError, match=r"rfm.recency: 'recency_days' is not a numeric feature"):
        load_config(toml)


def test_rfm_groups_follow_only_an_rfm_bundle(rfm_bundle, tiny_bundle):
    previous = load_current(rfm_bundle[0])
    matching = identity_matching(previous, len(GROUPS))
    assert matching.previous_of == {g: g for g in range(len(GROUPS))}
    assert matching.names[0] == "Champions"
    with pytest.raises(ConfigError, match=r"is not an RFM bundle"):
        identity_matching(tiny_bundle, len(GROUPS))


def test_clv_columns_fixture_matches_the_clv_features():
    from scoring.clv import CLV_FEATURES

    assert tuple(CLV_COLUMNS) == CLV_FEATURES


@pytest.mark.realdata
def test_cdnow_rfm_groups_rank_customers_by_lifetime_value(shared_data, tmp_path):
    """CDNOW (one 1997-Q1 cohort, as of 1998-07-01): the RFM groups from the raw transactions,
    their lifetime values in the order their names promise, and the documented empty groups."""
    folder = shared_data / "cdnow_lifetimes"
    if not (folder / "CDNOW_master.txt").is_file():
        pytest.skip("CDNOW_master.txt is absent")
    config = load_config(
        Path(__file__).resolve().parents[2] / "examples" / "cdnow_rfm.toml",
        {"data_dir": str(folder), "output": str(tmp_path)},
    )
    config = dataclasses.replace(
        config,
        segmentation=dataclasses.replace(config.segmentation, method="rfm"),
        comparison=dataclasses.replace(config.comparison, enabled=False),
        output=dataclasses.replace(config.output, report=False),
    )
    result = train(config, environ={})
    profiles = {p["name"]: p for p in result.bundle.profiles}
    assert sum(p["size"] for p in profiles.values()) == 23_570
    rfm = result.bundle.manifest["rfm"]
    # about half the cohort bought on one day only: the F edges collapse, F = 2 stays empty
    assert rfm["edges"]["frequency"][:2] == [1.0, 1.0]
    assert rfm["score_counts"]["frequency"][1] == 0
    # one cohort first bought in 1997-Q1: nobody recent has bought only once
    assert profiles["New"]["size"] == 0 and profiles["Promising"]["size"] == 0
    assert any(
        "no training customer in New, Promising" in w for w in result.bundle.manifest["warnings"]
    )
    mean_clv = {name: p["clv"]["mean"] for name, p in profiles.items() if p["size"] >= 100}
    assert max(mean_clv, key=mean_clv.get) == "Champions"
    assert mean_clv["Champions"] > 10 * mean_clv["Lost"]
    assert mean_clv["Loyal"] > mean_clv["Hibernating"]


def _records(engine, frame):
    return [
        {k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()}
        for row in frame[engine.schema.input_names].to_dict("records")
    ]


@pytest.fixture(scope="module")
def served(rfm_bundle):
    root, data = rfm_bundle
    bundle = load_current(root)
    return bundle, ScoringEngine(bundle), pd.read_parquet(data / "customers.parquet")


def test_training_score_gives_the_served_answer(served):
    _, engine, customers = served
    frame = customers.head(300)
    scored = score_frame(engine, frame)
    answers = engine.recommend(engine.batch_from_records(_records(engine, frame)))
    for row, answer in zip(scored.to_dict("records"), answers, strict=True):
        assert row["segment_name"] == answer["segment_name"] == row["rfm_group"]
        assert row["rfm_recency"] == answer["rfm"]["recency"]
        assert row["gain_weight"] == answer["customer_value"]["weight"]
        assert row["clv"] == answer["customer_value"]["clv"]
        if answer["campaigns"]:
            assert row["best_campaign"] == answer["campaigns"][0]["campaign_id"]
            assert row["best_expected_gain"] == answer["campaigns"][0]["expected_gain"]
        else:
            assert pd.isna(row["best_campaign"])


def test_served_values_match_the_training_profiles(served):
    bundle, engine, customers = served
    scored = score_frame(engine, customers)
    for profile in bundle.profiles:
        mine = scored[scored["segment_id"] == profile["segment_id"]]
        assert len(mine) == profile["size"]
        if profile["size"]:
            assert mine["clv"].mean() == pytest.approx(profile["clv"]["mean"], rel=1e-9)
            assert mine["rfm_frequency"].mean() == pytest.approx(profile["rfm"]["frequency"])
