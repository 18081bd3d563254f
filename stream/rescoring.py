"""The job's scoring step: a customer's rolling features -> the shared scoring core -> a record.

One :class:`Rescorer` per Flink task: it loads the bundle ``current`` names under the model root
(verified by :func:`scoring.bundle.load_current`, like the service, before anything is
unpickled), builds the :class:`~scoring.engine.ScoringEngine` once, and checks at most every
``poll_seconds`` whether ``current`` moved. A new bundle is swapped in between two events; the
customers' rolling state lives in Flink, not here, so a reload loses nothing. A bundle that fails
verification is refused and logged, and the previous one keeps scoring.

It also refuses, at load time, a bundle whose schema names an input that events cannot produce
(:data:`scoring.activity.FEATURES`): such a bundle cannot be served from the stream.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from scoring import online
from scoring.activity import Activity, missing_definitions
from scoring.bundle import BundleError, load_bundle, resolve
from scoring.engine import ScoringEngine

log = logging.getLogger(__name__)

TOP_CAMPAIGNS = 3


@dataclass(frozen=True)
class Update:
    """One customer's record to write, its sequence number and its segment-change entry."""

    key: str
    seq: int
    fields: dict[str, str]
    change: dict[str, str]
    segment_id: int


class Rescorer:
    """Scores customers with the bundle ``current`` names, following it when it moves."""

    def __init__(
        self,
        model_root: str | Path,
        prefix: str,
        *,
        hmac_key: bytes | None = None,
        poll_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.model_root = Path(model_root)
        self.prefix = prefix
        self.hmac_key = hmac_key
        self.poll_seconds = poll_seconds
        self.clock = clock
        self.wall_clock = wall_clock
        self.reloads = 0
        self._next_poll = clock() + poll_seconds
        self.path = resolve(self.model_root)
        self.engine = self._engine(self.path)

    def _engine(self, path: Path) -> ScoringEngine:
        bundle = load_bundle(path, hmac_key=self.hmac_key)
        missing = missing_definitions(bundle.schema.input_names)
        if missing:
            raise BundleError(
                f"{path}: the stream cannot compute input(s) {', '.join(missing)} from events"
            )
        engine = ScoringEngine(bundle)
        self._names = list(bundle.schema.input_names)
        self._key_prefix = online.key_prefix(self.prefix, bundle.schema)
        log.info("stream scoring with bundle %s", engine.version)
        return engine

    @property
    def version(self) -> str:
        """The model version now scoring."""
        return self.engine.version

    def maybe_reload(self) -> bool:
        """Follow ``current`` if it moved (checked at most every ``poll_seconds``)."""
        now = self.clock()
        if now < self._next_poll:
            return False
        self._next_poll = now + self.poll_seconds
        try:
            path = resolve(self.model_root)
        except BundleError as exc:
            log.error("cannot resolve the current bundle: %s", exc)
            return False
        if path == self.path:
            return False
        try:
            engine = self._engine(path)
        except BundleError as exc:
            log.error("bundle %s refused, still scoring with %s: %s", path, self.version, exc)
            self.path = path  # do not retry the same refused folder on every poll
            return False
        self.engine, self.path = engine, path
        self.reloads += 1
        return True

    def score(self, customer_id: str, activity: Activity) -> Update:
        """The record of one customer after its latest event."""
        engine = self.engine
        record = activity.features(self._names)
        if engine.has_response_model:
            result = engine.recommend_one(record, top_k=TOP_CAMPAIGNS)
            campaigns = [c["campaign_id"] for c in result["campaigns"]]
        else:
            result = engine.predict_segment_one(record)
            campaigns = list(result["recommended_campaigns"])[:TOP_CAMPAIGNS]
        segment_id = int(result["segment_id"])
        event_time = float(activity.last_time or 0.0)
        fields = online.encode_record(record, engine.schema, updated_at=self.wall_clock())
        fields.update(
            {
                online.SEGMENT_ID: str(segment_id),
                online.SEGMENT_NAME: result["segment_name"],
                online.CAMPAIGNS: json.dumps(campaigns),
                online.MODEL_VERSION: engine.version,
                online.SCORED_AT: online.format_number(self.wall_clock()),
                online.EVENT_TIME: online.format_number(event_time),
                online.AS_OF: str(activity.as_of),
            }
        )
        change = {
            "customer_id": customer_id,
            "to": str(segment_id),
            "to_name": result["segment_name"],
            "model_version": engine.version,
            "event_time": online.format_number(event_time),
        }
        return Update(self._key_prefix + customer_id, activity.folded, fields, change, segment_id)
