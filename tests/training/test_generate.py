"""Tests of the demo data generator: determinism, domains, planted segments, response signal."""

from __future__ import annotations

import json

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score, roc_auc_score
from sklearn.preprocessing import StandardScaler

from training.generate import (
    CAMPAIGNS,
    CONTROL_SHARE,
    FEATURES,
    PRODUCTION_CAMPAIGNS,
    PRODUCTION_FEATURES,
    SEGMENTS,
    TRUTH_COLUMN,
    UPLIFT_LOGIT,
    generate_demo,
    write_demo,
)
from training.load import read_campaign_pool


@pytest.fixture(scope="module")
def demo():
    return generate_demo(6000, seed=3)


def test_same_seed_gives_identical_tables():
    a, b = generate_demo(1500, seed=11), generate_demo(1500, seed=11)
    pd.testing.assert_frame_equal(a.customers, b.customers)
    pd.testing.assert_frame_equal(a.responses, b.responses)
    assert a.campaigns == b.campaigns


def test_different_seeds_give_different_tables():
    a, b = generate_demo(1500, seed=11), generate_demo(1500, seed=12)
    assert not a.customers[list(FEATURES)].equals(b.customers[list(FEATURES)])
    assert not a.responses.equals(b.responses)


def test_customer_table_has_the_contract_columns_and_domains(demo):
    c = demo.customers
    assert list(c.columns) == ["customer_id", *FEATURES, TRUTH_COLUMN]
    assert c["customer_id"].is_unique
    assert len(c) == 6000
    for column in ("total_spend", "order_count", "days_since_last_purchase", "unique_products"):
        assert (c[column] >= 0).all(), column
    for column in ("discount_usage", "return_rate", "mobile_usage"):
        observed = c[column].dropna()
        assert observed.between(0, 1).all(), column
    # only the optional column has missing values
    assert c[list(FEATURES)].drop(columns="mobile_usage").notna().all().all()
    assert c["mobile_usage"].isna().any()
    # customers without orders spent nothing and bought no product
    none = c["order_count"] == 0
    assert (c.loc[none, "total_spend"] == 0).all()
    assert (c.loc[none, "unique_products"] == 0).all()
    assert (c["unique_products"] <= c["order_count"]).all()


def test_every_planted_segment_is_present_in_roughly_its_share(demo):
    shares = demo.customers[TRUTH_COLUMN].value_counts(normalize=True)
    assert set(shares.index) == {s.name for s in SEGMENTS}
    for spec in SEGMENTS:
        assert abs(shares[spec.name] - spec.share) < 0.03, spec.name


def test_total_spend_is_heavy_tailed(demo):
    spend = demo.customers["total_spend"]
    assert spend.mean() > 1.5 * spend.median()


def test_planted_segments_are_recovered_by_the_segmentation_recipe(demo):
    c = demo.customers
    X = c[list(FEATURES)].to_numpy(dtype=float)
    X[:, FEATURES.index("mobile_usage")] = np.nan_to_num(
        X[:, FEATURES.index("mobile_usage")], nan=np.nanmedian(X[:, FEATURES.index("mobile_usage")])
    )
    aov = np.divide(X[:, 0], X[:, 1], out=np.zeros(len(X)), where=X[:, 1] > 0)
    X = np.column_stack([X, aov])
    heavy = [0, 1, 2, 3, 7]
    X[:, heavy] = np.log1p(X[:, heavy])
    Z = PCA(0.9, random_state=0).fit_transform(StandardScaler().fit_transform(X))
    labels = KMeans(len(SEGMENTS), n_init=3, random_state=0).fit_predict(Z)
    assert adjusted_rand_score(c[TRUTH_COLUMN], labels) >= 0.9


def test_each_treated_customer_gets_three_to_five_distinct_offers(demo):
    sent = demo.responses[demo.responses["treated"] == 1]
    per_customer = sent.groupby("customer_id")["campaign_id"]
    assert per_customer.size().between(3, 5).all()
    assert (per_customer.nunique() == per_customer.size()).all()
    assert set(demo.responses["customer_id"]) <= set(demo.customers["customer_id"])
    assert set(sent["campaign_id"]) == {c.id for c in CAMPAIGNS}


def test_control_arm_is_a_random_quarter_with_every_campaign_recorded(demo):
    treated = demo.responses.groupby("customer_id")["treated"]
    # a customer is either in the control arm or treated, never both
    assert (treated.nunique() == 1).all()
    control_ids = set(demo.responses.loc[demo.responses["treated"] == 0, "customer_id"])
    assert abs(len(control_ids) / len(demo.customers) - CONTROL_SHARE) < 0.03
    control = demo.responses[demo.responses["customer_id"].isin(control_ids)]
    assert (control.groupby("customer_id").size() == len(CAMPAIGNS)).all()
    # randomized: the arm does not depend on the segment
    segment = demo.customers.set_index("customer_id")[TRUTH_COLUMN]
    share = segment.index.isin(list(control_ids))
    by_segment = pd.Series(share, index=segment.index).groupby(segment).mean()
    assert (by_segment - CONTROL_SHARE).abs().max() < 0.05, by_segment.to_dict()


def test_base_response_rates_are_between_two_and_twenty_percent(demo):
    sent = demo.responses[demo.responses["treated"] == 1]
    rates = sent.groupby("campaign_id")["responded"].mean()
    assert rates.between(0.02, 0.20).all(), rates.to_dict()


def _observed_uplift(demo, segment: str, campaign: str) -> float:
    rows = demo.responses.merge(demo.customers[["customer_id", TRUTH_COLUMN]], on="customer_id")
    rows = rows[(rows[TRUTH_COLUMN] == segment) & (rows["campaign_id"] == campaign)]
    rates = rows.groupby("treated")["responded"].mean()
    return float(rates.get(1, np.nan) - rates.get(0, np.nan))


def test_planted_uplift_types_show_in_the_randomized_history(demo):
    truth = demo.truth
    assert truth.treated.shape == truth.control.shape == (len(demo.customers), len(CAMPAIGNS))
    assert ((truth.treated > 0) & (truth.treated < 1)).all()
    j = {c.id: i for i, c in enumerate(CAMPAIGNS)}
    seg = demo.customers[TRUTH_COLUMN].to_numpy()
    # sure things: VIPs take wealth management whether or not they are sent it
    vip = seg == "vip_champions"
    assert UPLIFT_LOGIT["vip_champions"]["wealth_management"] == 0.0
    np.testing.assert_allclose(
        truth.treated[vip, j["wealth_management"]], truth.control[vip, j["wealth_management"]]
    )
    assert truth.treated[vip, j["wealth_management"]].mean() > 0.3
    # persuadables: the dormant answer the win-back offer only when they get it
    dormant = seg == "dormant"
    assert truth.uplift[dormant, j["win_back"]].mean() > 0.15
    assert _observed_uplift(demo, "dormant", "win_back") > 0.1
    # do-not-disturbs: a loan offer puts VIPs off
    assert (truth.uplift[vip, j["personal_loan"]] < 0).all()
    # the observed VIP wealth-management lift is near zero although its response rate is high
    assert abs(_observed_uplift(demo, "vip_champions", "wealth_management")) < 0.08


def test_responses_carry_learnable_signal(demo):
    rows = demo.responses[demo.responses["treated"] == 1].merge(demo.customers, on="customer_id")
    rows["campaign"] = rows["campaign_id"].astype("category")
    columns = [*FEATURES, "campaign"]
    held_out = rows["customer_id"].isin(demo.customers["customer_id"].iloc[::5])
    model = lgb.LGBMClassifier(n_estimators=150, learning_rate=0.05, num_leaves=15, verbose=-1)
    model.fit(rows.loc[~held_out, columns], rows.loc[~held_out, "responded"])
    proba = model.predict_proba(rows.loc[held_out, columns])[:, 1]
    assert roc_auc_score(rows.loc[held_out, "responded"], proba) > 0.75


def test_write_demo_writes_readable_files(tmp_path):
    paths = write_demo(tmp_path / "demo", n_customers=800, seed=5)
    customers = pd.read_parquet(paths["customers"])
    responses = pd.read_parquet(paths["responses"])
    assert len(customers) == 800
    assert list(responses.columns) == ["customer_id", "campaign_id", "responded", "treated"]
    pool = read_campaign_pool(paths["campaigns"])
    assert [c.id for c in pool] == [c.id for c in CAMPAIGNS]
    assert all(c.eligible_segments is None for c in pool)
    assert all(5 <= c.value <= 120 for c in pool)
    assert json.loads(paths["campaigns"].read_text())[0]["channel"]


def test_too_few_customers_is_refused():
    with pytest.raises(ValueError, match="n_customers=3 should be >= 5"):
        generate_demo(3)


def test_production_shape_has_twelve_features_and_six_campaigns():
    prod = generate_demo(3000, seed=4, shape="production")
    assert list(prod.customers.columns) == ["customer_id", *PRODUCTION_FEATURES, TRUTH_COLUMN]
    assert len(PRODUCTION_FEATURES) == 12
    assert [c.id for c in prod.campaigns] == [c.id for c in PRODUCTION_CAMPAIGNS]
    assert len(prod.campaigns) == 6
    c = prod.customers
    assert (c[["tenure_days", "sessions_per_month", "support_tickets"]] >= 0).all().all()
    assert c["card_share"].between(0, 1).all() and c["international_share"].between(0, 1).all()
    assert set(prod.responses["campaign_id"]) == {cp.id for cp in PRODUCTION_CAMPAIGNS}


def test_unknown_shape_is_refused():
    with pytest.raises(ValueError, match="shape='huge' should be one of demo, production"):
        generate_demo(100, shape="huge")


def test_partitioned_demo_streams_files_with_ids_running_on(tmp_path):
    from training.generate import write_demo_partitioned

    paths = write_demo_partitioned(tmp_path, n_customers=2_500, seed=4, rows_per_file=1_000)
    files = sorted(p.name for p in paths["customers"].iterdir())
    assert files == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    customers = pd.read_parquet(paths["customers"])
    responses = pd.read_parquet(paths["responses"])
    assert len(customers) == 2_500 and customers["customer_id"].is_unique
    assert set(responses["customer_id"]) <= set(customers["customer_id"])
    sizes = [len(pd.read_parquet(paths["customers"] / name)) for name in files]
    assert sizes == [1_000, 1_000, 500]
    # file i depends only on (seed, i): a rerun with more customers keeps the first files
    again = write_demo_partitioned(tmp_path / "b", n_customers=3_000, seed=4, rows_per_file=1_000)
    first = pd.read_parquet(again["customers"] / files[0])
    pd.testing.assert_frame_equal(first, pd.read_parquet(paths["customers"] / files[0]))
