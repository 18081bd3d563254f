"""Campaign rules in the pool file: read, checked before fitting, stored in the bundle."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from scoring.campaigns import PoolSettings
from training.config import load_config
from training.generate import write_demo
from training.load import read_campaign_pool, read_pool_settings
from training.prepare import prepare
from training.validate import TableError

ROOT = Path(__file__).resolve().parents[2]


def _pool(tmp_path, campaigns, **settings):
    path = tmp_path / "pool.json"
    path.write_text(json.dumps({"campaigns": campaigns, **settings}))
    return path


def test_rules_are_read_parsed_and_the_pool_settings_kept(tmp_path):
    path = _pool(
        tmp_path,
        [
            {
                "id": "vip",
                "name": "VIP",
                "value": 100,
                "channel": "email",
                "channels": ["push"],
                "conditions": ["total_spend >= 1000", "mobile_usage >= 0.5 or order_count > 3"],
                "start": "2026-12-01",
                "end": "2026-12-31",
                "cost": 0.25,
                "daily_cap": 1000,
                "per_customer_day": 1,
                "per_customer_week": 3,
                "holdout_share": 0.1,
            }
        ],
        salt="spring-2026",
        holdout_share=0.02,
    )
    (campaign,) = read_campaign_pool(path)
    assert campaign.conditions[0]["tree"] == {
        "feature": "total_spend",
        "cmp": ">=",
        "value": 1000.0,
    }
    assert campaign.reaches("push") and campaign.reaches("email") and not campaign.reaches("sms")
    assert campaign.cost == 0.25 and campaign.holdout_share == 0.1
    assert read_pool_settings(path) == PoolSettings(salt="spring-2026", holdout_share=0.02)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"conditions": ["total_spend >>= 3"]}, "campaign 'x': condition 'total_spend >>= 3'"),
        (
            {"conditions": ["len(total_spend) > 3"]},
            "campaign 'x': condition .* needs a feature name",
        ),
        ({"start": "2026-13-01"}, "campaign 'x': start '2026-13-01' is not a date"),
        ({"start": "2026-12-02", "end": "2026-12-01"}, "end 2026-12-01 is before start"),
        ({"cost": -1}, "cost -1 should be a number >= 0"),
        ({"daily_cap": 2.5}, "daily_cap 2.5 should be a whole number"),
        ({"holdout_share": 1.0}, r"holdout_share 1.0 should be in \[0, 1\)"),
    ],
)
def test_a_bad_rule_names_the_campaign_and_the_rule(tmp_path, entry, message):
    path = _pool(tmp_path, [{"id": "x", "name": "X", "value": 1, **entry}])
    with pytest.raises(TableError, match=message):
        read_campaign_pool(path)


def test_a_condition_on_an_unknown_feature_stops_training_before_fitting(tmp_path):
    data = tmp_path / "data"
    write_demo(data, n_customers=600, seed=3)
    pool = json.loads((data / "campaigns.json").read_text())
    pool[1]["conditions"] = ["income > 3"]
    (data / "campaigns.json").write_text(json.dumps({"campaigns": pool, "salt": "abc"}))
    config = load_config(ROOT / "examples" / "demo.toml", {"data_dir": str(data)})
    with pytest.raises(
        TableError, match="campaign 'bill_payment_discount': condition 'income > 3'"
    ):
        prepare(config)
    pool[1]["conditions"] = ["mobile_usage >= 0.5"]
    (data / "campaigns.json").write_text(json.dumps({"campaigns": pool, "salt": "abc"}))
    prepared = prepare(config)
    assert prepared.pool.salt == "abc"
    assert dataclasses.asdict(prepared.pool) == {"salt": "abc", "holdout_share": 0.0}
