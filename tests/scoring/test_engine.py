"""The fused scoring engine agrees with the plain scikit-learn/LightGBM path and ranks correctly."""

from __future__ import annotations

import numpy as np
import pytest
from bundle_builder import build_bundle, synthetic_customers

from scoring.bundle import load_current
from scoring.engine import NoResponseModelError, ScoringEngine
from scoring.reference import reference_propensities, reference_segments


@pytest.fixture(scope="module")
def engine(tiny_bundle):
    return ScoringEngine(tiny_bundle)


def test_segments_and_probabilities_equal_reference(engine, tiny_bundle, demo_customers):
    frame, _ = demo_customers
    batch = engine.batch_from_frame(frame)
    a = engine.assign(batch)
    np.testing.assert_array_equal(a.segment, reference_segments(tiny_bundle, frame))
    prob = engine.propensities(batch, a.segment)
    ref = reference_propensities(tiny_bundle, frame, a.segment)
    np.testing.assert_allclose(prob, ref, rtol=0, atol=1e-12)


def test_records_and_frame_give_the_same_batch(engine, demo_customers):
    frame, _ = demo_customers
    records = frame.drop(columns="customer_id").to_dict("records")
    records = [{k: (None if v != v else v) for k, v in r.items()} for r in records]
    a = engine.batch_from_records(records)
    b = engine.batch_from_frame(frame)
    np.testing.assert_array_equal(a.numeric, b.numeric)


def test_missing_optional_input_is_imputed_with_training_median(engine, tiny_bundle, demo_request):
    record = {k: v for k, v in demo_request.items() if k not in ("customer_id", "mobile_usage")}
    batch = engine.batch_from_records([record])
    col = tiny_bundle.schema.input_names.index("mobile_usage")
    assert batch.numeric[0, col] == pytest.approx(tiny_bundle.imputer.statistics_[col])


def test_zero_orders_gives_fill_value_not_inf(engine, demo_request):
    record = dict(demo_request, order_count=0)
    del record["customer_id"]
    batch = engine.batch_from_records([record])
    assert np.isfinite(batch.numeric).all()
    assert batch.numeric[0, -1] == 0.0


def test_recommend_ranks_by_expected_value_and_respects_eligibility(engine, demo_customers):
    frame, _ = demo_customers
    batch = engine.batch_from_frame(frame)
    results = engine.recommend(batch)
    assert len(results) == len(frame)
    by_id = {c.id: c for c in engine.campaigns}
    for res in results:
        evs = [c["expected_value"] for c in res["campaigns"]]
        assert evs == sorted(evs, reverse=True)
        for c in res["campaigns"]:
            allowed = by_id[c["campaign_id"]].eligible_segments
            assert allowed is None or res["segment_name"] in allowed
            assert c["expected_value"] == pytest.approx(c["probability"] * c["value"])
    # every segment-restricted campaign is returned to its own segment somewhere
    returned = {(r["segment_name"], c["campaign_id"]) for r in results for c in r["campaigns"]}
    assert ("Dormant", "win_back") in returned
    assert not any(cid == "win_back" and seg != "Dormant" for seg, cid in returned)


def test_recommend_filters_channel_exclude_and_top_k(engine, demo_customers):
    frame, _ = demo_customers
    batch = engine.batch_from_frame(frame.head(50))
    for res in engine.recommend(batch, channel="push", exclude=["cashback"], top_k=1):
        assert len(res["campaigns"]) <= 1
        for c in res["campaigns"]:
            assert c["channel"] == "push" and c["campaign_id"] != "cashback"
            assert "channel 'push'" in c["eligibility"]


def test_explain_returns_top_contributions(engine, demo_customers):
    frame, _ = demo_customers
    res = engine.recommend(engine.batch_from_frame(frame.head(3)), explain=True, top_k=2)
    for r in res:
        for c in r["campaigns"]:
            contribs = c["contributions"]
            assert 1 <= len(contribs) <= 3
            mags = [abs(x["contribution"]) for x in contribs]
            assert mags == sorted(mags, reverse=True)


def test_atypical_flag_for_a_customer_unlike_every_segment(engine, demo_request):
    record = dict(demo_request, total_spend=5e7, order_count=1, unique_products=4000)
    del record["customer_id"]
    res = engine.predict_segment(engine.batch_from_records([record]))[0]
    assert res["atypical"] is True
    normal = engine.predict_segment(
        engine.batch_from_records([{k: v for k, v in demo_request.items() if k != "customer_id"}])
    )[0]
    assert normal["distance"] < res["distance"]


def test_segmentation_only_bundle_refuses_recommend(tmp_path):
    build_bundle(tmp_path, n=600, with_response_model=False)
    engine = ScoringEngine(load_current(tmp_path))
    batch = engine.batch_from_frame(synthetic_customers(5, 1)[0])
    assert len(engine.predict_segment(batch)) == 5
    with pytest.raises(NoResponseModelError):
        engine.recommend(batch)


def test_single_customer_fast_path_equals_reference(engine, tiny_bundle, demo_customers):
    # one customer -> a few rows -> LightGBM's single-row path; many -> the matrix path
    frame, _ = demo_customers
    for i in range(8):
        one = frame.iloc[[i]]
        batch = engine.batch_from_frame(one)
        seg = engine.assign(batch).segment
        np.testing.assert_allclose(
            engine.propensities(batch, seg),
            reference_propensities(tiny_bundle, one, seg),
            rtol=0,
            atol=1e-12,
        )


def test_treeshap_contributions_equal_lightgbm_pred_contrib(engine, tiny_bundle, demo_customers):
    frame, _ = demo_customers
    batch = engine.batch_from_frame(frame.head(40))
    seg = engine.assign(batch).segment
    customer = np.repeat(np.arange(40), 2)
    campaign = np.tile([0, 1], 40)
    rows = engine.model_rows(batch, seg, customer, campaign)
    expected = tiny_bundle.response_model.predict(rows, pred_contrib=True)[:, :-1]
    np.testing.assert_allclose(engine.model.contributions(rows, "treeshap"), expected, atol=1e-12)


def test_model_columns_stay_unique_when_a_feature_is_called_campaign(tiny_bundle):
    from dataclasses import replace

    schema = replace(tiny_bundle.schema, response_features=("campaign", "segment", "x"))
    cols = schema.response_model_columns
    assert cols == ["campaign", "segment", "x", "segment_", "campaign_"]


def _records(frame):
    return [
        {k: (None if v != v else v) for k, v in r.items()}
        for r in frame.drop(columns="customer_id").to_dict("records")
    ]


@pytest.mark.parametrize(
    "options",
    [{}, {"top_k": 2}, {"channel": "push"}, {"exclude": ["cashback", "wealth"], "top_k": 1}],
)
def test_one_customer_path_equals_batch_path(engine, demo_customers, options):
    frame, _ = demo_customers
    frame = frame.head(300).copy()
    frame.loc[frame.index[:20], "order_count"] = 0  # derived feature's fill value
    records = _records(frame)
    batch_results = engine.recommend(engine.batch_from_records(records), **options)
    for record, expected in zip(records, batch_results, strict=True):
        got = engine.recommend_one(record, **options)
        # equal to the bit (distance, probabilities), not merely close: the two paths do the
        # same operations in the same order
        assert got == expected
        seg = engine.predict_segment_one(record)
        policy = {"campaigns", "ranking", "held_out", "holdout_note", "reason"}
        assert seg == {k: v for k, v in got.items() if k not in policy}


def test_one_customer_explain(engine, demo_request):
    record = {k: v for k, v in demo_request.items() if k != "customer_id"}
    res = engine.recommend_one(record, explain=True, top_k=1)
    assert len(res["campaigns"]) == 1 and res["campaigns"][0]["contributions"]
    assert res["explain_method"] == "path"


@pytest.mark.parametrize("method", ["path", "treeshap"])
def test_one_customer_explain_equals_batch_path(tiny_bundle, demo_customers, method):
    engine = ScoringEngine(tiny_bundle, explain_method=method)
    frame, _ = demo_customers
    records = _records(frame.head(40))
    for options in ({"top_k": 2}, {"channel": "push"}):
        expected = engine.recommend(engine.batch_from_records(records), explain=True, **options)
        for record, want in zip(records, expected, strict=True):
            got = engine.recommend_one(record, explain=True, **options)
            assert got == want and got["explain_method"] == method
            for c in got["campaigns"]:
                assert 1 <= len(c["contributions"]) <= 3


def _renamed(bundle, frame, old: str, new: str):
    """The bundle and customers with feature ``old`` called ``new`` everywhere."""
    from dataclasses import replace

    def name(n: str) -> str:
        return new if n == old else n

    s = bundle.schema
    schema = replace(
        s,
        inputs=tuple(replace(f, name=name(f.name)) for f in s.inputs),
        derived=tuple(
            replace(d, numerator=name(d.numerator), denominator=name(d.denominator))
            for d in s.derived
        ),
        cluster_features=tuple(map(name, s.cluster_features)),
        log_features=tuple(map(name, s.log_features)),
        response_features=tuple(map(name, s.response_features)),
    )
    return replace(bundle, schema=schema), frame.rename(columns={old: new})


@pytest.mark.parametrize("feature", ["campaign", "segment"])
def test_a_feature_called_like_a_model_column_scores_everywhere(
    tiny_bundle, demo_customers, feature
):
    # regression: the reference path hard-coded "segment"/"campaign" and raised KeyError
    bundle, frame = _renamed(tiny_bundle, demo_customers[0], "order_count", feature)
    layout = bundle.schema.response_layout()
    assert layout.columns[layout.campaign_slot] == layout.campaign_column
    assert feature in layout.columns[layout.numeric_slots]
    engine = ScoringEngine(bundle)
    batch = engine.batch_from_frame(frame)
    a = engine.assign(batch)
    np.testing.assert_array_equal(a.segment, reference_segments(bundle, frame))
    np.testing.assert_allclose(
        engine.propensities(batch, a.segment),
        reference_propensities(bundle, frame, a.segment),
        rtol=0,
        atol=1e-12,
    )
    # and the renamed bundle scores exactly as the original
    original = ScoringEngine(tiny_bundle)
    np.testing.assert_array_equal(
        engine.propensities(batch, a.segment),
        original.propensities(original.batch_from_frame(demo_customers[0]), a.segment),
    )


def test_one_customer_and_batch_agree_to_the_bit_over_many_customers(engine):
    # regression: distance differed in the last bits between /recommend alone and in a batch
    frame, _ = synthetic_customers(3000, seed=7)
    records = _records(frame)
    batch = engine.predict_segment(engine.batch_from_records(records))
    for record, expected in zip(records, batch, strict=True):
        assert engine.predict_segment_one(record) == expected


def test_blocks_give_the_same_bits_as_one_pass(engine, demo_customers, monkeypatch):
    # the vectorised stages run block by block (scoring.engine.BLOCK); block edges must not
    # change a single bit, with every pair scored or only some
    frame, _ = demo_customers
    batch = engine.batch_from_frame(frame)
    whole = engine.assign(batch)
    n, m = len(batch), len(engine.campaigns)
    customer, campaign = np.nonzero(np.ones((n, m), dtype=bool))
    rows = engine.model_rows(batch, whole.segment, customer, campaign)
    expected = engine.model.predict(rows).reshape(n, m)
    mask = np.random.default_rng(3).random((n, m)) < 0.6
    monkeypatch.setattr("scoring.engine.BLOCK", 7)
    blocked = engine.assign(batch)
    for name in ("segment", "distance", "atypical"):
        np.testing.assert_array_equal(getattr(blocked, name), getattr(whole, name))
    np.testing.assert_array_equal(engine.propensities(batch, whole.segment), expected)
    np.testing.assert_array_equal(
        engine.propensities(batch, whole.segment, mask), np.where(mask, expected, np.nan)
    )
    layout = engine.tables.layout
    dense = layout.dense_rows(batch.numeric, batch.codes, whole.segment, m)
    np.testing.assert_array_equal(dense, rows)
    # campaign-major: row j * n + i is customer i with campaign j
    major = layout.dense_rows(batch.numeric, batch.codes, whole.segment, m, campaign_major=True)
    np.testing.assert_array_equal(
        major, rows.reshape(n, m, -1).transpose(1, 0, 2).reshape(n * m, -1)
    )
    # the engine walks either order to the same propensities
    for order in (True, False):
        monkeypatch.setattr(engine.model, "campaign_major", order)
        np.testing.assert_array_equal(engine.propensities(batch, whole.segment), expected)
        np.testing.assert_array_equal(
            engine.propensities(batch, whole.segment, mask), np.where(mask, expected, np.nan)
        )
