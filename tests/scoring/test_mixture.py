"""The Gaussian-mixture rule: sklearn's posterior, the same bits alone or in a batch, and served."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.mixture import GaussianMixture

from scoring.bundle import load_current
from scoring.engine import ScoringEngine
from scoring.mixture import MixtureRule


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(1)
    P = np.vstack([rng.normal(c, s, size=(300, 3)) for c, s in ((0, 0.5), (3, 1.0), (-3, 0.8))])
    return P, GaussianMixture(n_components=3, covariance_type="full", random_state=0).fit(P)


def test_memberships_are_sklearns_posterior(fitted):
    P, gmm = fitted
    rule = MixtureRule.from_estimator(gmm)
    segment, member = rule.segments(P)
    np.testing.assert_allclose(member, gmm.predict_proba(P), rtol=0, atol=1e-10)
    assert (segment == gmm.predict(P)).all()
    np.testing.assert_allclose(member.sum(axis=1), 1.0)


def test_one_row_gets_the_same_bits_as_in_a_batch(fitted):
    P, gmm = fitted
    rule = MixtureRule.from_estimator(gmm)
    batch = rule.memberships(P)
    for i in (0, 17, 450, 899):
        assert rule.memberships(P[i : i + 1])[0].tolist() == batch[i].tolist()


def test_only_full_covariances_are_accepted(fitted):
    P, _ = fitted
    diag = GaussianMixture(n_components=2, covariance_type="diag", random_state=0).fit(P)
    with pytest.raises(ValueError, match="covariance_type='diag', expected 'full'"):
        MixtureRule.from_estimator(diag)


def test_a_mixture_bundle_answers_with_memberships_on_both_paths(mixture_bundle, demo_customers):
    bundle = load_current(mixture_bundle[0])
    assert bundle.manifest["served_clustering"] == "gaussian_mixture"
    assert "mixture.joblib" in bundle.manifest["files"]
    engine = ScoringEngine(bundle)
    frame = demo_customers[0].head(50)
    records = [
        {k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()}
        for row in frame[engine.schema.input_names].to_dict("records")
    ]
    batch = engine.predict_segment(engine.batch_from_records(records))
    for record, answer in zip(records, batch, strict=True):
        member = answer["membership"]
        assert len(member) == bundle.n_segments
        assert sum(member) == pytest.approx(1.0)
        assert answer["segment_id"] == int(np.argmax(member))
        # the one-customer path is the same rule: equal to the bit
        assert engine.predict_segment_one(record) == answer
    ranked = engine.recommend(engine.batch_from_records(records[:5]))
    for record, answer in zip(records[:5], ranked, strict=True):
        assert answer["membership"] == engine.recommend_one(record)["membership"]


def test_training_labels_are_the_served_assignment(mixture_bundle):
    root, data = mixture_bundle
    bundle = load_current(root)
    engine = ScoringEngine(bundle)
    assert engine.tables.mixture is not None
    np.testing.assert_array_equal(engine.tables.centers, bundle.mixture.means_)
    # the profiles count the customers the served rule puts in each segment
    customers = pd.read_parquet(data / "customers.parquet")
    served = engine.assign(engine.batch_from_frame(customers)).segment
    sizes = np.bincount(served, minlength=bundle.n_segments).tolist()
    assert sizes == [p["size"] for p in bundle.profiles]
    comparison = bundle.manifest["comparison"]
    assert [m["method"] for m in comparison["methods"] if m["served"]] == ["gaussian_mixture"]


def test_a_kmeans_bundle_has_no_membership(tiny_bundle, demo_request):
    engine = ScoringEngine(tiny_bundle)
    assert engine.tables.mixture is None
    record = {k: v for k, v in demo_request.items() if k != "customer_id"}
    assert "membership" not in engine.predict_segment_one(record)
    assert "membership" not in engine.predict_segment(engine.batch_from_records([record]))[0]
