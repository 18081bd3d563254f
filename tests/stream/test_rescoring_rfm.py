"""The stream job's scoring step on an RFM bundle with CLV-weighted gains: the served answer."""

from __future__ import annotations

import json

from scoring import online
from scoring.activity import Activity, parse_event
from stream.rescoring import Rescorer


def test_the_stream_job_scores_rfm_groups_and_weighted_gains(rfm_bundle):
    rescorer = Rescorer(rfm_bundle[0], "rfm-test")
    engine = rescorer.engine
    t0 = 1_780_000_000.0
    for n, spacing in ((1, 1), (12, 2), (30, 1)):
        activity = Activity()
        for i in range(n):
            event = {"customer_id": "c1", "event_time": t0 + i * spacing * 86400.0,
                     "amount": 40.0 + i, "product": f"p{i % 4}", "channel": "mobile"}  # fmt: skip
            activity.add(parse_event(json.dumps(event)))
        update = rescorer.score("c1", activity)
        features = activity.features(engine.schema.input_names)
        expected = engine.recommend_one(features, top_k=3)
        assert (
            update.fields[online.SEGMENT_NAME]
            == expected["segment_name"]
            == expected["rfm"]["group"]
        )
        assert json.loads(update.fields[online.CAMPAIGNS]) == [
            c["campaign_id"] for c in expected["campaigns"]
        ]
