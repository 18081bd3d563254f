"""The worker roster and the recycling guard: never more than one worker away at a time."""

from __future__ import annotations

from api.fleet import Roster


def _ready(roster: Roster, *pids: int) -> None:
    for pid in pids:
        roster.publish(pid, ready=True, version="v1", folder="v1")


def test_one_worker_retires_at_a_time_and_only_when_the_others_are_ready(tmp_path):
    roster = Roster(tmp_path)
    _ready(roster, 101, 102)
    assert roster.claim_retirement(101, workers=2)
    # 101 is still finishing its requests: 102 must wait
    assert not roster.claim_retirement(102, workers=2)
    roster.remove(101)  # 101 exited (the master's child_exit)
    assert not roster.claim_retirement(102, workers=2)  # its replacement is not ready yet
    roster.publish(103, ready=False, version=None, folder=None)  # booting, bundle not loaded
    assert not roster.claim_retirement(102, workers=2)
    _ready(roster, 103)
    assert roster.claim_retirement(102, workers=2)
    assert [e["pid"] for e in roster.entries()] == [102, 103]


def test_a_worker_whose_peer_cannot_serve_does_not_retire(tmp_path):
    roster = Roster(tmp_path)
    _ready(roster, 201)
    roster.publish(202, ready=False, version=None, folder=None)
    assert not roster.claim_retirement(201, workers=2)
    assert not roster.claim_retirement(201, workers=3)


def test_a_single_worker_may_always_retire(tmp_path):
    roster = Roster(tmp_path)
    _ready(roster, 301)
    assert roster.claim_retirement(301, workers=1)
