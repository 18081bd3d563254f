"""Segment names: archetypes from roles, descriptive fallback, uniqueness, overrides."""

from __future__ import annotations

import json

import numpy as np
import pytest

from training.naming import (
    apply_overrides,
    describe,
    feature_role,
    load_names_file,
    name_segments,
    segment_zscores,
)

DEMO = [
    "total_spend",
    "order_count",
    "days_since_last_purchase",
    "unique_products",
    "discount_usage",
    "return_rate",
    "mobile_usage",
]

#: mean z-scores of five demo-like segments (rows) on DEMO (columns)
DEMO_Z = np.array(
    [
        [2.0, 1.8, -1.5, 1.9, -1.2, -0.9, 1.3],  # VIP
        [0.6, 0.6, -0.6, 0.5, -0.4, -0.5, -0.3],  # loyal
        [0.0, 0.4, -0.3, 0.3, 1.7, 1.6, 1.0],  # bargain
        [-1.2, -1.3, 0.0, -1.1, -0.2, -0.6, 0.2],  # new & occasional
        [-0.3, -0.5, 1.8, -0.5, -0.6, 0.1, -1.5],  # dormant
    ]
)


@pytest.mark.parametrize(
    ("feature", "role"),
    [
        ("total_spend", "spend"),
        ("MntWines", "spend"),
        ("order_count", "frequency"),
        ("NumWebPurchases", "frequency"),
        ("days_since_last_purchase", "recency"),
        ("Recency", "recency"),
        ("recency_days", "recency"),
        ("discount_usage", "discount"),
        ("return_rate", "returns"),
        ("mobile_usage", "mobile"),
        ("CREDIT_LIMIT", None),
    ],
)
def test_feature_roles_from_names(feature, role):
    assert feature_role(feature) == role


def test_demo_segments_get_their_archetypes():
    names = [n.name for n in name_segments(DEMO, DEMO_Z)]
    assert names == [
        "VIP Champions",
        "Loyal Regulars",
        "Bargain Hunters",
        "New & Occasional",
        "Dormant",
    ]


def test_names_are_deterministic():
    assert name_segments(DEMO, DEMO_Z) == name_segments(DEMO, DEMO_Z.copy())


def test_two_vip_like_segments_get_distinct_names():
    z = np.vstack([DEMO_Z[0], DEMO_Z[0] * 0.8, DEMO_Z[4]])
    names = [n.name for n in name_segments(DEMO, z)]
    assert len(set(names)) == 3
    assert names[0] == "VIP Champions"  # the stronger match keeps the archetype
    assert names[2] == "Dormant"


def test_unknown_table_is_named_by_distinguishing_features():
    features = ["PURCHASES", "CASH_ADVANCE", "CREDIT_LIMIT"]
    z = np.array([[1.5, -0.9, 0.1], [-0.4, 1.2, 0.3], [0.0, 0.1, -0.05]])
    named = name_segments(features, z)
    assert named[0].name == "High PURCHASES, Low CASH_ADVANCE"
    assert named[1].name == "High CASH_ADVANCE, Low PURCHASES"
    assert named[2].name == "Average Customers"
    assert all(n.archetype is None for n in named)


def test_identical_profiles_still_get_unique_names():
    features = ["a", "b"]
    z = np.array([[1.0, -1.0], [1.0, -1.0], [1.0, -1.0]])
    names = [n.name for n in name_segments(features, z)]
    assert len(set(names)) == 3


def test_description_uses_role_words_and_feature_names():
    assert describe(DEMO, DEMO_Z[4]).startswith("long inactive")
    assert describe(["CREDIT_LIMIT"], np.array([1.0])) == "high CREDIT_LIMIT"
    assert describe(["x"], np.array([0.01])) == "close to the population average"


def test_overrides_by_id_and_by_generated_name():
    named = name_segments(DEMO, DEMO_Z, {"0": "Stars", "Dormant": "Sleepers"})
    assert named[0].name == "Stars"
    assert named[4].name == "Sleepers"
    assert named[1].name == "Loyal Regulars"
    assert named[0].description == name_segments(DEMO, DEMO_Z)[0].description


def test_overrides_that_clash_or_miss_are_errors():
    named = name_segments(DEMO, DEMO_Z)
    with pytest.raises(ValueError, match="unique"):
        apply_overrides(named, {"0": "Dormant"})
    with pytest.raises(ValueError, match="neither a segment id"):
        apply_overrides(named, {"Nobody": "X"})
    with pytest.raises(ValueError, match="non-empty"):
        apply_overrides(named, {"1": "  "})


def test_names_file_in_toml_and_json(tmp_path):
    toml = tmp_path / "names.toml"
    toml.write_text('0 = "Stars"\n"Dormant" = "Sleepers"\n')
    assert load_names_file(toml) == {"0": "Stars", "Dormant": "Sleepers"}
    js = tmp_path / "names.json"
    js.write_text(json.dumps({"names": {"1": "Regulars"}}))
    assert load_names_file(js) == {"1": "Regulars"}
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="mapping"):
        load_names_file(bad)
    with pytest.raises(ValueError, match="cannot read"):
        load_names_file(tmp_path / "absent.toml")


def test_segment_zscores_are_group_means():
    Z = np.array([[1.0, 2.0], [3.0, 4.0], [10.0, 0.0]])
    labels = np.array([0, 0, 1])
    np.testing.assert_allclose(segment_zscores(Z, labels, 3), [[2.0, 3.0], [10.0, 0.0], [0, 0]])
