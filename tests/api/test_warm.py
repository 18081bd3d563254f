"""api/warm.py: a new worker answers sample requests in-process before it says it is ready,
counting nothing and sending nothing, and a warm-up that fails stops nothing."""

from __future__ import annotations

import logging

from api import model
from api.extensions import get_services
from api.metrics import Metrics
from api.settings import Settings
from api.warm import warm_up
from tests.api.conftest import SCORING


class RecordingRedis:
    """Records every command; answers like an empty Redis."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __getattr__(self, name: str):
        def command(*args, **kwargs):
            self.calls.append(name)
            return None

        return command


def test_the_warm_up_runs_before_the_worker_says_it_is_ready(
    tiny_bundle_root, tmp_path, monkeypatch
):
    monkeypatch.setattr(model, "_preloaded", None)
    roster = tmp_path / "workers"
    settings = Settings.load(
        {"MODEL_ROOT": str(tiny_bundle_root), "MODEL_VERSION": "", "WORKER_ROSTER": str(roster)},
        environ={},
    )
    state = model.ModelState(settings, Metrics())
    seen = []
    state.start(
        warm_up=lambda loaded: seen.append(
            (loaded.version, state.current, list(roster.glob("*.json")))
        )
    )
    ((version, current, published),) = seen
    assert current is None and published == []  # not serving, nothing in the roster yet
    assert state.current.version == version and state.ready
    assert list(roster.glob("*.json"))  # ready once warmed


def test_a_warm_up_counts_nothing_sends_nothing_and_leaves_the_app_as_built(
    make_app, read_metric, demo_request
):
    redis = RecordingRedis()
    app = make_app(REDIS_CLIENT=redis)
    services = get_services(app)
    before = services.metrics.exposition()
    redis.calls.clear()
    warm_up(app, services.model.current)
    assert redis.calls == []
    assert services.metrics.exposition() == before
    assert (
        read_metric(
            app, "segsvc_http_requests_total", endpoint="/healthz", method="GET", status="200"
        )
        == 0
    )
    # Flask still takes hooks, as on an app that answered nothing
    app.before_request(lambda: None)
    response = app.test_client().post("/recommend", json=demo_request, headers=SCORING)
    assert response.status_code == 200
    assert (
        read_metric(
            app, "segsvc_http_requests_total", endpoint="/recommend", method="POST", status="200"
        )
        == 1
    )


def test_a_warm_up_that_fails_is_logged_and_stops_nothing(app, caplog):
    loaded = get_services(app).model.current

    class Broken:
        version = loaded.version

        @property
        def engine(self):
            raise RuntimeError("broken engine")

        schemas = loaded.schemas

    with caplog.at_level(logging.WARNING, logger="api.warm"):
        warm_up(app, Broken())
    assert "warm-up of bundle" in caplog.text and "broken engine" in caplog.text
    assert app.observe is not None  # the metrics observer is attached as before
