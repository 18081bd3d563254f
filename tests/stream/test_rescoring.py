"""The job's scoring step: the shared core on rolling features, following `current`."""

from __future__ import annotations

import json

import pytest
from bundle_builder import build_bundle

from scoring import online
from scoring.activity import Activity, parse_event
from scoring.bundle import BundleError, set_current
from scoring.engine import ScoringEngine
from stream.rescoring import Rescorer

T0 = 1_780_000_000.0


def _activity(n=5, amount=120.0) -> Activity:
    activity = Activity()
    for i in range(n):
        event = {"customer_id": "c1", "event_time": T0 + i * 3600, "amount": amount}
        activity.add(parse_event(json.dumps({**event, "product": f"p{i}", "channel": "mobile"})))
    return activity


class Clock:
    """A settable monotonic clock."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_record_is_what_the_scoring_core_says(fresh_bundle_root):
    rescorer = Rescorer(fresh_bundle_root, "p")
    activity = _activity()
    update = rescorer.score("c1", activity)
    engine = ScoringEngine(rescorer.engine.bundle)
    features = activity.features(engine.schema.input_names)
    expected = engine.recommend_one(features, top_k=3)
    assert update.segment_id == expected["segment_id"]
    assert update.seq == 5
    assert update.key == online.record_key("p", engine.schema, "c1")
    stored = online.decode_record(update.fields, engine.schema)
    assert not stored.problems
    assert stored.features == pytest.approx(features)
    scored = stored.last_scored()
    assert scored["campaigns"] == [c["campaign_id"] for c in expected["campaigns"]]
    assert scored["model_version"] == "v1"
    assert update.change["to"] == str(expected["segment_id"])


def test_a_moved_current_is_followed_and_a_bad_bundle_refused(fresh_bundle_root):
    clock = Clock()
    rescorer = Rescorer(fresh_bundle_root, "p", poll_seconds=5, clock=clock)
    build_bundle(fresh_bundle_root, n=1500, seed=2, version="v2")  # moves current
    assert not rescorer.maybe_reload()  # not yet time to look
    clock.now = 6
    assert rescorer.maybe_reload()
    assert rescorer.version == "v2"
    assert rescorer.score("c1", _activity()).fields[online.MODEL_VERSION] == "v2"

    build_bundle(fresh_bundle_root, n=1500, seed=3, version="v3")
    (fresh_bundle_root / "v3" / "profiles.json").write_text("[]")  # tampered: hash mismatch
    clock.now = 12
    assert not rescorer.maybe_reload()
    assert rescorer.version == "v2"
    set_current(fresh_bundle_root, "v1")
    clock.now = 18
    assert rescorer.maybe_reload() and rescorer.version == "v1"


def test_a_bundle_needing_inputs_events_cannot_give_is_refused(fresh_bundle_root):
    # An input the events do not define (the manifest is not hashed: no signing key here).
    path = fresh_bundle_root / "v1" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["feature_schema"]["inputs"][-1]["name"] = "Income"
    path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="Income"):
        Rescorer(fresh_bundle_root, "p")
