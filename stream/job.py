"""The PyFlink job: transaction events -> rolling features in Flink state -> scoring core -> Redis.

    events (JSON lines in a monitored folder)
      -> parse and check each line (scoring.activity.parse_event); refused -> dead letters
      -> key by customer
      -> fold into the customer's Activity (Flink ValueState, checkpointed); late -> dead letters
      -> rescore the customer with the shared scoring core (stream.rescoring.Rescorer)
      -> write features, segment, top campaigns, times to Redis; a segment change -> Redis Stream

Run it on Flink's local mini-cluster (what the tests do) or submit the same file to a cluster::

    .venv-stream/bin/python -m stream.job --source data/events --model-root model_artifacts
    flink run -py stream/job.py -pyfs stream,scoring -- --source s3://bucket/events ...

**Source.** :func:`events_source` is Flink's file source over ``--source``, monitored
continuously (new files are picked up within ``--monitor-interval-ms``; files whose names start
with ``.`` or ``_`` are ignored until renamed, so write a file under a hidden name and rename it
when complete). With the Kafka connector jar on the class path (``--jars``), the source is a
one-line swap in :func:`events_source`: return
``KafkaSource.builder().set_bootstrap_servers(...).set_topics("events")
.set_value_only_deserializer(SimpleStringSchema()).build()`` instead; the rest of the job reads
lines and does not change.

**Delivery.** Checkpoints every ``--checkpoint-interval-ms`` (exactly-once mode for Flink state)
are kept in ``--checkpoints`` after the job stops; ``--restore latest`` restarts from the newest.
The file source's read positions are part of the checkpoint, so after a crash the events since the
last checkpoint are read again; the Redis writes are idempotent (stream/sink.py), so the stored
features count every event exactly once.

**Time.** Features use event time (the event's ``event_time``, never the arrival time). An event
more than ``--allowed-lateness-hours`` older than the customer's latest event is late and goes
to the dead letters; one further than ``--max-future-hours`` ahead of the wall clock is refused.

**Bundles.** Each task loads the bundle ``current`` names once (verified) and checks every
``--bundle-poll-seconds`` whether ``current`` moved; a new bundle is swapped in between two
events, with every customer's Flink state kept.
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import sys
import time
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger("stream")

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_PREFIX = "segsvc"


def build_parser() -> argparse.ArgumentParser:
    """The job's options (every one has a default except the source)."""
    p = argparse.ArgumentParser(
        prog="python -m stream.job",
        description="Fold transaction events into per-customer features, rescore, write Redis.",
    )
    p.add_argument("--source", required=True, help="folder of JSON-lines event files (monitored)")
    p.add_argument("--model-root", default="model_artifacts", help="bundle root with `current`")
    p.add_argument(
        "--redis-url", default=None, help="default $REDIS_URL, else " + DEFAULT_REDIS_URL
    )
    p.add_argument("--prefix", default=None, help="key prefix: the service's CACHE_PREFIX")
    p.add_argument(
        "--checkpoints", default=".run/stream-checkpoints", help="checkpoint folder (kept)"
    )
    p.add_argument("--checkpoint-interval-ms", type=int, default=2000)
    p.add_argument(
        "--restore",
        default=None,
        help="a checkpoint (chk-N folder) or savepoint to start from; `latest` = newest kept",
    )
    p.add_argument("--parallelism", type=int, default=1)
    p.add_argument("--monitor-interval-ms", type=int, default=1000)
    p.add_argument(
        "--window-days", type=int, default=None, help="rolling window (default: all events)"
    )
    p.add_argument("--allowed-lateness-hours", type=float, default=72.0)
    p.add_argument("--max-future-hours", type=float, default=24.0)
    p.add_argument("--bundle-poll-seconds", type=float, default=5.0)
    p.add_argument(
        "--hmac-key-env", default="BUNDLE_HMAC_KEY", help="variable holding the signing key"
    )
    p.add_argument(
        "--python-executable",
        default=sys.executable,
        help="interpreter of the Python workers (default: this one; on a cluster, the "
        "workers' path to an environment with stream/requirements.txt)",
    )
    return p


def latest_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The newest completed checkpoint (a ``chk-N`` folder with ``_metadata``) under ``folder``."""
    found = [
        p
        for p in Path(folder).glob("*/chk-*")
        if (p / "_metadata").is_file() and p.name[4:].isdigit()
    ]
    return max(found, key=lambda p: (p.stat().st_mtime, int(p.name[4:])), default=None)


def _settings(args: argparse.Namespace) -> dict[str, str]:
    return {
        "redis_url": args.redis_url or os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL,
        "prefix": args.prefix or os.environ.get("CACHE_PREFIX") or DEFAULT_PREFIX,
        "model_root": str(Path(args.model_root).resolve()),
        "hmac_key": os.environ.get(args.hmac_key_env, "") if args.hmac_key_env else "",
    }


def events_source(args: argparse.Namespace):
    """Where events come from: the continuously monitored folder (swap for Kafka here)."""
    from pyflink.common import Duration
    from pyflink.datastream.connectors.file_system import FileSource, StreamFormat

    return (
        FileSource.for_record_stream_format(
            StreamFormat.text_line_format(), str(Path(args.source).resolve())
        )
        .monitor_continuously(Duration.of_millis(args.monitor_interval_ms))
        .build()
    )


def build_environment(args: argparse.Namespace):
    """The execution environment: checkpointing, retention, restore point, Python workers."""
    from pyflink.common import Configuration
    from pyflink.datastream import CheckpointingMode, StreamExecutionEnvironment

    config = Configuration()
    checkpoints = Path(args.checkpoints).resolve()
    checkpoints.mkdir(parents=True, exist_ok=True)
    config.set_string("execution.checkpointing.storage", "filesystem")
    config.set_string("execution.checkpointing.dir", checkpoints.as_uri())
    config.set_string(
        "execution.checkpointing.externalized-checkpoint-retention", "RETAIN_ON_CANCELLATION"
    )
    config.set_string("execution.checkpointing.num-retained", "3")
    restore = args.restore
    if restore == "latest":
        found = latest_checkpoint(checkpoints)
        restore = str(found) if found else None
        log.info("restoring from %s", restore or "nothing (no checkpoint kept yet)")
    if restore:
        config.set_string("execution.state-recovery.path", Path(restore).resolve().as_uri())
    # The Python workers run this interpreter (the stream venv), whatever `python` is on PATH.
    config.set_string("python.executable", args.python_executable)
    config.set_string("python.client.executable", sys.executable)
    # Small bundles: an event reaches Redis within a few milliseconds, not at a 1 s bundle end.
    config.set_string("python.fn-execution.bundle.size", "100")
    config.set_string("python.fn-execution.bundle.time", "50")
    env = StreamExecutionEnvironment.get_execution_environment(config)
    env.set_parallelism(args.parallelism)
    env.enable_checkpointing(args.checkpoint_interval_ms, CheckpointingMode.EXACTLY_ONCE)
    return env


def build_job(env, args: argparse.Namespace) -> None:
    """Source -> parse -> key by customer -> fold, score, write."""
    from pyflink.common import Types, WatermarkStrategy

    settings = _settings(args)
    lines = env.from_source(events_source(args), WatermarkStrategy.no_watermarks(), "events")
    events = lines.flat_map(
        _parse_function(settings, args.max_future_hours * 3600),
        output_type=Types.PICKLED_BYTE_ARRAY(),
    ).name("parse")
    events.key_by(lambda e: e.customer_id, key_type=Types.STRING()).process(
        _fold_function(
            settings,
            window_days=args.window_days,
            allowed_lateness=args.allowed_lateness_hours * 3600,
            poll_seconds=args.bundle_poll_seconds,
        )
    ).name("fold-score-write")


def _parse_function(settings: dict[str, str], max_future: float):
    from pyflink.datastream import FlatMapFunction

    from scoring import activity

    class ParseEvents(FlatMapFunction):
        """JSON line -> Event; a refused line goes to the dead letters with its reason."""

        def open(self, runtime_context) -> None:
            from stream.sink import RedisSink

            self.sink = RedisSink.from_url(settings["redis_url"], settings["prefix"])

        def flat_map(self, line: str):
            if not line.strip():
                return
            try:
                # Event time may lag the wall clock, never lead it by more than max_future.
                yield activity.parse_event(line, now=time.time(), max_future=max_future)
            except activity.EventError as exc:
                self.sink.dead_letter(exc.reason, str(exc), line)

        def close(self) -> None:
            self.sink.close()

    return ParseEvents()


def _fold_function(
    settings: dict[str, str], *, window_days: int | None, allowed_lateness: float, poll_seconds
):
    from pyflink.common import Types
    from pyflink.datastream import KeyedProcessFunction
    from pyflink.datastream.state import ValueStateDescriptor

    from scoring.activity import Activity, EventError

    class FoldScoreWrite(KeyedProcessFunction):
        """Keyed by customer: fold the event into the state, rescore, write Redis."""

        def open(self, runtime_context) -> None:
            from stream.rescoring import Rescorer
            from stream.sink import RedisSink

            self.state = runtime_context.get_state(
                ValueStateDescriptor("activity", Types.PICKLED_BYTE_ARRAY())
            )
            self.sink = RedisSink.from_url(settings["redis_url"], settings["prefix"])
            key = settings["hmac_key"].encode() if settings["hmac_key"] else None
            # Loaded once per task, verified; followed when `current` moves.
            self.rescorer = Rescorer(
                settings["model_root"],
                settings["prefix"],
                hmac_key=key,
                poll_seconds=poll_seconds,
            )

        def process_element(self, event, ctx):
            raw = self.state.value()
            state = (
                pickle.loads(raw) if raw is not None else Activity(window_days, allowed_lateness)
            )
            try:
                state.add(event)
            except EventError as exc:
                self.sink.dead_letter(exc.reason, str(exc), _event_line(event))
                return
            self.state.update(pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL))
            if not state.has_purchase:
                return
            self.rescorer.maybe_reload()
            update = self.rescorer.score(event.customer_id, state)
            self.sink.write(update.key, update.seq, update.fields, update.change)
            return iter(())

        def close(self) -> None:
            self.sink.close()

    return FoldScoreWrite()


def _event_line(event) -> str:
    import json
    from dataclasses import asdict

    return json.dumps(asdict(event))


def main(argv: Sequence[str] | None = None) -> int:
    """Build and run the job (blocks: the source is unbounded)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    root = Path(__file__).resolve().parents[1]
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    env = build_environment(args)
    # Ship our packages to the Python workers (local mini-cluster and a real cluster alike).
    env.add_python_file(str(root / "scoring"))
    env.add_python_file(str(root / "stream"))
    build_job(env, args)
    env.execute("segment-stream")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
