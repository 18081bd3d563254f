"""The command line: ``python -m training {train,generate,score,list,verify,report,features,
evaluate-policy,feedback}``.

Thin by design: each command parses its flags, calls the stages or the scoring core and prints
the result. Known failures (bad config, bad table, bad bundle, bad input file) print
``error: <message>`` on stderr and exit with status 2, without a traceback. Progress goes to
stderr through ``logging``; results go to stdout.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from scoring.bundle import BundleError, list_versions, load_bundle, resolve, verify
from training.config import TRANSACTION_FEATURES, ConfigError, load_config

if TYPE_CHECKING:
    import pandas as pd

# pandas, LightGBM and the stages are imported inside the commands that use them, so that
# ``--help`` and ``list`` answer at once.

log = logging.getLogger("training")

EXIT_ERROR = 2
#: retrain: the bundle is written but the promotion gate kept `current` on the previous one
EXIT_NOT_PROMOTED = 3
DEFAULT_ROOT = "model_artifacts"
DEFAULT_KEY_ENV = "BUNDLE_HMAC_KEY"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_CACHE_PREFIX = "segsvc"


class CommandError(Exception):
    """A command cannot run with the arguments or files it was given."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} should be >= 1")
    return value


def _key_from_env(name: str | None) -> bytes | None:
    value = os.environ.get(name, "") if name else ""
    return value.encode("utf-8") if value else None


def _add_engine(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--engine",
        choices=("local", "dask"),
        default="local",
        help="local: one process (default); dask: a Dask cluster, the input read in partitions",
    )
    parser.add_argument(
        "--scheduler",
        help="with --engine dask: address of a running scheduler (tcp://host:8786); default: "
        "a LocalCluster on this machine, stopped afterwards",
    )
    parser.add_argument(
        "--workers",
        type=_positive_int,
        help="with --engine dask: worker processes of the LocalCluster (default one per core); "
        "with --scheduler, wait until this many workers have joined",
    )


def _add_key_env(parser: argparse.ArgumentParser, what: str = "the signing key to verify") -> None:
    parser.add_argument(
        "--hmac-key-env",
        default=DEFAULT_KEY_ENV,
        help=f"environment variable with {what} (default {DEFAULT_KEY_ENV})",
    )


def _add_bundle(parser: argparse.ArgumentParser, use: str = "") -> None:
    """``--bundle`` and ``--hmac-key-env``: the bundle a command verifies and loads."""
    parser.add_argument(
        "--bundle",
        default=DEFAULT_ROOT,
        help=f"a bundle root (its current bundle) or a version folder{use} "
        "(default model_artifacts)",
    )
    _add_key_env(parser)


def _load_bundle(args: argparse.Namespace):
    """The bundle ``--bundle`` names, verified with the key ``--hmac-key-env`` names."""
    return load_bundle(bundle_path(args.bundle), hmac_key=_key_from_env(args.hmac_key_env))


def _add_redis(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--redis-url",
        default=None,
        help=f"Redis {what} (default: $REDIS_URL, else {DEFAULT_REDIS_URL})",
    )


def _redis_url(args: argparse.Namespace) -> str:
    return args.redis_url or os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL


def _cache_prefix() -> str:
    return os.environ.get("CACHE_PREFIX") or DEFAULT_CACHE_PREFIX


def _actions(
    sub: argparse._SubParsersAction, name: str, help: str, description: str
) -> argparse._SubParsersAction:
    """A command with actions of its own (``features load``, ``feedback fold``)."""
    group = sub.add_parser(name, help=help, description=description)
    return group.add_subparsers(dest=f"{name}_command", required=True, metavar="ACTION")


def _add_quiet(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: a subcommand's unset flag must not reset one given before the command
    parser.add_argument(
        "-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="log warnings only"
    )


def transaction_features_help() -> str:
    """The features a ``[data.transactions]`` config builds, one per line, for ``--help``."""
    lines = [
        "features built per customer from [data.transactions] (list them in features.numeric):"
    ]
    lines += [
        f"  {name:<18} {kind:<7} {text}" for name, (kind, text) in TRANSACTION_FEATURES.items()
    ]
    return "\n".join(lines)


def _add_training_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of every command that trains (train, retrain, snapshots)."""
    parser.add_argument("--config", required=True, help="TOML training config (see examples/)")
    parser.add_argument(
        "--output", help="bundle root folder (overrides output.root; default model_artifacts)"
    )
    parser.add_argument(
        "--data-dir",
        help="folder holding the input files named in the config (file names are kept)",
    )
    parser.add_argument(
        "--k", type=_positive_int, help="number of segments; skips the automatic choice of k"
    )
    parser.add_argument("--k-min", type=_positive_int, help="smallest k searched (default 2)")
    parser.add_argument("--k-max", type=_positive_int, help="largest k searched (default 10)")
    parser.add_argument(
        "--seed", type=int, help="random seed of the segmentation and the response model"
    )
    parser.add_argument("--name", help="name recorded in the manifest and the report")
    _add_quiet(parser)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command, with help for each option."""
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description="Train customer-segmentation and campaign-response bundles, and use them.",
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="log warnings only (default: progress at INFO)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser(
        "train",
        help="train a bundle from a config file",
        description="Train a bundle from a TOML config; flags override the file. Writes "
        "<output>/<version>/, points <output>/current at it and prints a summary.",
        epilog=transaction_features_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_training_flags(train)
    _add_engine(train)

    retrain = sub.add_parser(
        "retrain",
        help="train a new bundle whose segments keep a previous bundle's ids and names",
        description="Train as `train` does, then match the new segments to the previous "
        "bundle's (Hungarian assignment on centroid distance), keep their ids and names, and "
        "record the migration matrix, PSI per feature and share shifts in the manifest. "
        "`current` moves only if the promotion gate passes (exit status 3 otherwise: the "
        "bundle is written but not promoted) or with --force.",
        epilog=transaction_features_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_training_flags(retrain)
    retrain.add_argument(
        "--previous",
        help="previous bundle: a version under the output root, `current`, or a folder "
        "(overrides segmentation.previous; one of the two is required)",
    )
    retrain.add_argument(
        "--force", action="store_true", help="promote the new bundle even if the gate refuses"
    )

    snap = sub.add_parser(
        "snapshots",
        help="replay a transaction history into one bundle per month",
        description="For each month start from --start to --end, train a bundle from the "
        "transactions before it ([data.transactions] as_of = that day), each matched to the "
        "previous month's bundle (k fixed after the first month unless the config fixes it), "
        "then print how segment sizes and migrations evolved. Every month is promoted; the "
        "gate's verdict is printed and kept in each manifest.",
    )
    _add_training_flags(snap)
    snap.add_argument(
        "--every", choices=("month", "quarter"), default="month", help="snapshot spacing"
    )
    snap.add_argument(
        "--start", help="first snapshot date (default: a month start two months after the first)"
    )
    snap.add_argument("--end", help="last snapshot date (default: the day after the last)")

    gen = sub.add_parser(
        "generate",
        help="write the demo data (digital-wallet customers, campaigns, responses)",
        description="Write customers.parquet, campaigns.json and responses.parquet of the "
        "demo wallet; deterministic under --seed.",
    )
    gen.add_argument("--out", default="data/demo", help="output folder (default data/demo)")
    gen.add_argument(
        "--customers", type=_positive_int, default=75_000, help="number of customers (75000)"
    )
    gen.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    gen.add_argument(
        "--shape",
        choices=("demo", "production"),
        default="demo",
        help="demo: 7 features, 7 campaigns; production: 12 features, 6 campaigns, responses "
        "that need a production-sized model (train with examples/production.toml)",
    )
    gen.add_argument(
        "--rows-per-file",
        type=_positive_int,
        help="write customers.parquet/ and responses.parquet/ as folders of files of this many "
        "customers, generated one file at a time (for tables larger than memory; the Dask "
        "engine reads each file as a partition)",
    )
    _add_quiet(gen)

    score = sub.add_parser(
        "score",
        help="batch-score a customer file with a bundle",
        description="Assign every customer of a CSV/Parquet file to a segment and, when the "
        "bundle has a response model, score every eligible campaign. Output: the id column "
        "(if present), segment_id, segment_name, distance, atypical, best_campaign, "
        "best_expected_value and p_<campaign> per campaign (empty where not eligible); with a "
        "bundle trained with [clv] and a file holding frequency, recency_days, tenure_days and "
        "monetary_avg, also clv, p_alive and expected_purchases over the CLV horizon.",
    )
    _add_bundle(score)
    score.add_argument(
        "--input",
        required=True,
        help="customer file (.csv or .parquet); with --engine dask a folder or glob of Parquet files",
    )
    score.add_argument(
        "--output",
        required=True,
        help="result file (.csv or .parquet); with --engine dask a new folder that receives "
        "part-NNNNN.parquet, one per input partition",
    )
    score.add_argument(
        "--batch-size",
        type=_positive_int,
        default=100_000,
        help="customers scored per batch (default 100000)",
    )
    _add_engine(score)
    _add_quiet(score)

    lst = sub.add_parser(
        "list", help="list the bundle versions", description="List bundle versions under a root."
    )
    lst.add_argument(
        "--root", default=DEFAULT_ROOT, help="bundle root folder (default model_artifacts)"
    )
    _add_quiet(lst)

    ver = sub.add_parser(
        "verify",
        help="verify a bundle without loading it",
        description="Check a bundle's manifest, signature, file hashes and library versions.",
    )
    ver.add_argument("path", help="a bundle root (its current bundle) or a version folder")
    _add_key_env(ver, "the signing key; when set the signature must match")
    _add_quiet(ver)

    rep = sub.add_parser(
        "report",
        help="rebuild a bundle's HTML evidence report",
        description="Verify a bundle, then write its self-contained HTML report (charts, k "
        "evidence, algorithm comparison, outliers, response model) to "
        "<root>/reports/<version>.html and print the path.",
    )
    rep.add_argument(
        "version",
        nargs="?",
        default="current",
        help="bundle version under --root, 'current' (default), or a version folder",
    )
    rep.add_argument(
        "--root", default=DEFAULT_ROOT, help="bundle root folder (default model_artifacts)"
    )
    _add_key_env(rep)
    _add_quiet(rep)

    feats_sub = _actions(
        sub,
        "features",
        "the online feature store (Redis) read by requests by customer id",
        "Manage the customers' stored features that /predict-segment and /recommend read for "
        "a request carrying only a customer_id.",
    )
    load = feats_sub.add_parser(
        "load",
        help="bulk-write a customer table's features into Redis",
        description="Check a customer table (CSV or Parquet) against the bundle's feature "
        "schema, then write one Redis hash per customer under "
        "<prefix>:features:<schema id>:<customer id> (pipelined, with a progress bar). "
        "Nothing is written when a check fails.",
    )
    load.add_argument("--input", required=True, help="customer file (.csv or .parquet)")
    _add_bundle(load, " whose schema to write")
    _add_redis(load, "to write to")
    load.add_argument(
        "--prefix",
        default=None,
        help="key prefix, the service's CACHE_PREFIX (default: $CACHE_PREFIX, else segsvc)",
    )
    load.add_argument("--id-column", default=None, help="id column (default: the schema's)")
    load.add_argument(
        "--chunk", type=_positive_int, default=10_000, help="customers per round trip (10000)"
    )
    load.add_argument("--no-progress", action="store_true", help="no progress bar")
    build = feats_sub.add_parser(
        "build",
        help="build a customer table from transaction events (the stream job's definitions)",
        description="Fold JSON-lines transaction events (a file, or every *.jsonl file of a "
        "folder, in name order) into one row of features per customer, with the definitions "
        "the stream job uses (scoring/activity.py). Refused lines are counted by reason.",
    )
    build.add_argument("--events", required=True, help="events file or folder of *.jsonl files")
    build.add_argument("--output", required=True, help="customer table (.csv or .parquet)")
    build.add_argument(
        "--bundle",
        default=None,
        help="write the inputs of this bundle's schema (default: every feature events define)",
    )
    build.add_argument("--window-days", type=_positive_int, default=None)
    build.add_argument("--allowed-lateness-hours", type=float, default=72.0)
    _add_quiet(build)
    _add_quiet(load)

    ev = sub.add_parser(
        "evaluate-policy",
        help="estimate what the bundle's targeting earns on a randomized experiment",
        description="Inverse-propensity estimates, with bootstrap intervals, of the gain over "
        "sending nothing of five policies on a randomized table: the bundle's uplift ranking, "
        "its response ranking, the best single campaign, a random campaign and nobody. "
        "--experiment is a TOML training config (its [data] and [responses], with a control "
        "arm) or one CSV/Parquet table holding the features, the arm and the outcome.",
    )
    _add_bundle(ev)
    ev.add_argument("--experiment", required=True, help="TOML config or CSV/Parquet table")
    ev.add_argument("--data-dir", help="with a TOML config: folder of its input files")
    ev.add_argument("--id-column", default="", help="table: id column (default: row numbers)")
    ev.add_argument(
        "--campaign-column", default="campaign_id", help="table: arm column (campaign_id)"
    )
    ev.add_argument(
        "--responded-column", default="responded", help="table: outcome column (responded)"
    )
    ev.add_argument("--treated-column", help="table: 1 sent / 0 held out (optional)")
    ev.add_argument(
        "--control-value",
        action="append",
        default=[],
        help="table: arm value of the no-contact group (repeatable), e.g. 'No E-Mail'",
    )
    ev.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="ARM=CAMPAIGN",
        help="table: arm value -> campaign id of the bundle (repeatable)",
    )
    ev.add_argument(
        "--bootstrap", type=_positive_int, default=200, help="bootstrap resamples (200)"
    )
    ev.add_argument("--seed", type=int, default=0, help="bootstrap seed (0)")
    ev.add_argument("--json", help="also write the full result as JSON to this file")
    _add_quiet(ev)

    fb_sub = _actions(
        sub,
        "feedback",
        "fold the feedback stream into Parquet",
        "Feedback events (POST /feedback) live in a Redis Stream until folded.",
    )
    fold = fb_sub.add_parser(
        "fold",
        help="read the stream with a consumer group, write Parquet, acknowledge",
        description="Drain the feedback stream into <out>/events/part-*.parquet (temp file + "
        "rename, acknowledged only after the write, de-duplicated by event_id), then rebuild "
        "<out>/responses.parquet: one row per (customer, campaign) with responded and treated, "
        "a response history the next training reads.",
    )
    fold.add_argument("--out", required=True, help="output folder")
    _add_redis(fold, "holding the stream")
    fold.add_argument(
        "--stream",
        default=None,
        help="stream key (default: $CACHE_PREFIX:feedback, else segsvc:feedback)",
    )
    fold.add_argument("--group", default="fold", help="consumer group (default fold)")
    fold.add_argument("--consumer", default="fold", help="consumer name (default fold)")
    fold.add_argument(
        "--batch-size", type=_positive_int, default=1000, help="events per part (1000)"
    )
    fold.add_argument(
        "--outcome",
        default="conversion",
        choices=("conversion", "click"),
        help="event type counted as a response in responses.parquet (conversion)",
    )
    _add_quiet(fold)
    return parser


# ---- commands -------------------------------------------------------------------------------
def _training_overrides(args: argparse.Namespace) -> dict:
    return {
        "data_dir": args.data_dir,
        "output": args.output,
        "k": args.k,
        "k_min": args.k_min,
        "k_max": args.k_max,
        "seed": args.seed,
        "name": args.name,
        "previous": getattr(args, "previous", None),
    }


def cmd_train(args: argparse.Namespace) -> int:
    """Train a bundle and print its summary (exit 3 when the promotion gate refused it)."""
    from training.pipeline import train
    from training.report import summary

    config = load_config(args.config, _training_overrides(args))
    if args.command == "retrain" and not config.segmentation.previous:
        raise CommandError("retrain needs --previous or segmentation.previous in the config")
    if getattr(args, "engine", "local") == "dask":
        from training.engines.dask import connect
        from training.engines.dask import train as train_on_dask

        with connect(args.scheduler, args.workers) as (client, info):
            _dashboard_line(info)
            result = train_on_dask(config, client, info)
    else:
        result = train(config, force=getattr(args, "force", False))
    print(summary(result))
    return 0 if result.promoted else EXIT_NOT_PROMOTED


def cmd_snapshots(args: argparse.Namespace) -> int:
    """Replay a transaction history into one bundle per month and print how segments evolved."""
    from training.snapshots import replay, snapshot_table

    config = load_config(args.config, _training_overrides(args))
    rows = replay(config, every=args.every, start=args.start, end=args.end)
    print(snapshot_table(rows))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """Write the demo data."""
    from training.generate import write_demo

    if args.rows_per_file:
        if args.shape != "demo":
            raise CommandError("--rows-per-file writes the demo shape only (leave out --shape)")
        from training.generate import write_demo_partitioned

        paths = write_demo_partitioned(
            args.out, n_customers=args.customers, seed=args.seed, rows_per_file=args.rows_per_file
        )
    else:
        paths = write_demo(args.out, n_customers=args.customers, seed=args.seed, shape=args.shape)
    for role, path in paths.items():
        print(f"{role}: {path}")
    return 0


def bundle_path(location: str | os.PathLike) -> Path:
    """A version folder as given, or the bundle a root's ``current`` names."""
    path = Path(location)
    if (path / "manifest.json").is_file():
        return path
    if not path.is_dir():
        raise BundleError(f"{path}: no such bundle folder")
    return resolve(path)


def read_customers(path: Path, id_column: str | None = None) -> pd.DataFrame:
    """A CSV or Parquet customer file; ``id_column`` is read as text ("007" stays "007")."""
    import pandas as pd

    from scoring.ids import ids_as_text, read_options

    suffix = path.suffix.lower()
    if not path.is_file():
        raise CommandError(f"{path}: no such file")
    try:
        if suffix == ".parquet":
            frame = pd.read_parquet(path)
        elif suffix in (".csv", ".txt", ".tsv"):
            frame = pd.read_csv(path, sep=None, engine="python", **read_options(id_column))
        else:
            raise CommandError(f"{path}: unsupported file type {suffix!r} (use .csv or .parquet)")
    except (OSError, ValueError) as exc:
        raise CommandError(f"{path}: cannot read ({exc})") from None
    if id_column is not None and id_column in frame.columns:
        frame[id_column] = ids_as_text(frame[id_column])
    return frame


def write_frame(frame: pd.DataFrame, path: Path) -> None:
    """Write a CSV or Parquet file, by suffix."""
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise CommandError(f"{path}: unsupported file type {suffix!r} (use .csv or .parquet)")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)


def cmd_score(args: argparse.Namespace) -> int:
    """Batch-score a customer file (or, with ``--engine dask``, a partitioned dataset)."""
    bundle = _load_bundle(args)
    if args.engine == "dask":
        return _score_on_dask(args, bundle)
    from training.engines.local import score_table

    schema = bundle.schema
    frame = read_customers(Path(args.input), schema.id_column)
    missing = [c for c in schema.input_names + schema.categorical_names if c not in frame.columns]
    if missing:
        raise CommandError(f"{args.input}: missing columns {', '.join(missing)}")
    result = score_table(bundle, frame, args.batch_size)
    write_frame(result, Path(args.output))
    print(f"scored {len(result)} customers with bundle {bundle.version} -> {args.output}")
    return 0


def _dashboard_line(info) -> None:
    where = f"dashboard: {info.dashboard}" if info.dashboard else "no dashboard (install bokeh)"
    print(
        f"dask: {info.workers} worker(s), {info.threads} thread(s) at {info.scheduler}; {where}",
        file=sys.stderr,
        flush=True,
    )


def _score_on_dask(args: argparse.Namespace, bundle) -> int:
    from training.engines.dask import connect, score_dataset

    with connect(args.scheduler, args.workers) as (client, info):
        _dashboard_line(info)
        result = score_dataset(client, bundle, args.input, args.output, show_progress=True)
    print(
        f"scored {result.rows} customers in {result.partitions} partition(s) with bundle "
        f"{bundle.version} -> {result.output} ({result.seconds:.1f} s)"
    )
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """List bundle versions, marking the current one."""
    root = Path(args.root)
    versions = list_versions(root)
    if not versions:
        print(f"no bundles in {root}")
        return 0
    current = (root / "current").resolve().name if (root / "current").exists() else None
    for v in versions:
        print(f"{'*' if v == current else ' '} {v}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Verify a bundle's manifest, signature, hashes and library versions."""
    path = bundle_path(args.path)
    key = _key_from_env(args.hmac_key_env)
    manifest = verify(path, hmac_key=key)
    signed = "signature verified" if key else "signature not checked (no key set)"
    print(
        f"ok: {path} (version {manifest.get('version')}, k={manifest.get('segments', {}).get('k')}, "
        f"{len(manifest.get('files', {}))} files, {signed})"
    )
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    """``features load`` or ``features build``."""
    if args.features_command == "build":
        return _features_build(args)
    return _features_load(args)


def _features_build(args: argparse.Namespace) -> int:
    """Fold events into a customer table with the stream job's definitions."""
    import pandas as pd

    from scoring.activity import FEATURES, features_table, fold_events, missing_definitions

    names = list(FEATURES)
    if args.bundle:
        names = load_bundle(bundle_path(args.bundle)).schema.input_names
        missing = missing_definitions(names)
        if missing:
            raise CommandError(f"events define no feature {', '.join(missing)} of the bundle")
    source = Path(args.events)
    files = sorted(source.glob("*.jsonl")) if source.is_dir() else [source]
    if not files or not all(f.is_file() for f in files):
        raise CommandError(f"{source}: no event file (a .jsonl file or a folder of them)")

    def lines():
        for f in files:
            with open(f, encoding="utf-8", errors="replace") as fh:
                yield from fh

    result = fold_events(
        lines(), window_days=args.window_days, allowed_lateness=args.allowed_lateness_hours * 3600
    )
    ids, rows = features_table(result.activities, names)
    frame = pd.DataFrame(rows, columns=names)
    frame.insert(0, "customer_id", ids)
    write_frame(frame, Path(args.output))
    refused = ", ".join(f"{k} {v}" for k, v in sorted(result.refused.items())) or "none"
    print(
        f"built {len(frame)} customers from {len(files)} file(s) -> {args.output}; refused: {refused}"
    )
    return 0


def _features_load(args: argparse.Namespace) -> int:
    """Bulk-load a customer table's features into the online feature store."""
    from tqdm import tqdm

    from training.feature_store import RedisReplyError, id_column_of, load_features
    from training.validate import TableError

    bundle = _load_bundle(args)
    frame = read_customers(Path(args.input), args.id_column or bundle.schema.id_column)
    url = _redis_url(args)
    prefix = args.prefix or _cache_prefix()
    id_column = id_column_of(frame, bundle.schema, args.id_column)
    bar = tqdm(
        total=len(frame),
        unit=" customers",
        unit_scale=True,
        disable=args.no_progress or None,
        file=sys.stderr,
    )
    try:
        result = load_features(
            frame,
            bundle.schema,
            redis_url=url,
            prefix=prefix,
            id_column=id_column,
            chunk=args.chunk,
            progress=bar.update,
        )
    except TableError:
        raise
    except (OSError, RedisReplyError, ValueError) as exc:
        raise CommandError(f"Redis at {url.split('@')[-1]}: {exc}") from None
    finally:
        bar.close()
    print(
        f"loaded {result.customers} customers into {result.key_prefix}* "
        f"(schema {result.schema_id}, bundle {bundle.version}) in {result.seconds:.2f} s "
        f"({result.per_second:,.0f} customers/s)"
    )
    return 0


def cmd_evaluate_policy(args: argparse.Namespace) -> int:
    """Estimate the policies' value on a randomized experiment and print a table."""
    import json

    from scoring.engine import ScoringEngine
    from training.policy_value import (
        evaluate_policies,
        experiment_config,
        format_table,
        load_experiment,
    )

    mapping = {}
    for item in args.map:
        arm, sep, campaign = item.partition("=")
        if not sep or not arm or not campaign:
            raise CommandError(f"--map {item!r}: expected ARM=CAMPAIGN")
        mapping[arm] = campaign
    if Path(args.experiment).suffix.lower() == ".toml":
        config = load_config(args.experiment, {"data_dir": args.data_dir})
    else:
        config = experiment_config(
            args.experiment,
            id_column=args.id_column,
            campaign_column=args.campaign_column,
            responded_column=args.responded_column,
            treated_column=args.treated_column,
            control_values=tuple(args.control_value),
            campaign_map=mapping,
        )
    bundle = _load_bundle(args)
    engine = ScoringEngine(bundle)
    if not engine.has_response_model:
        raise CommandError(f"bundle {bundle.version} has no response model: nothing to rank")
    experiment = load_experiment(config, engine)
    result = evaluate_policies(engine, experiment, bootstrap=args.bootstrap, seed=args.seed)
    result["bundle"] = bundle.version
    print(f"bundle {bundle.version} (ranking: {bundle.manifest.get('ranking', 'response')})")
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


def cmd_feedback(args: argparse.Namespace) -> int:
    """Feedback actions (only ``fold`` so far)."""
    import redis

    from training.feedback import fold

    url = _redis_url(args)
    stream = args.stream or f"{_cache_prefix()}:feedback"
    client = redis.Redis.from_url(url, socket_timeout=30)
    try:
        result = fold(
            client,
            stream,
            args.out,
            group=args.group,
            consumer=args.consumer,
            batch_size=args.batch_size,
            outcome=args.outcome,
        )
    except redis.RedisError as exc:
        raise CommandError(f"redis at {url}: {exc}") from None
    print(
        f"read {result.read} events: wrote {result.written} in {result.parts} part(s), "
        f"skipped {result.duplicates} duplicate(s); history {result.history_rows} rows -> "
        f"{Path(args.out) / 'responses.parquet'}"
    )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Rebuild the HTML report of a bundle from the bundle alone."""
    from training.html_report import write_html_report

    given = Path(args.version)
    if (given / "manifest.json").is_file():
        path, root = given, given.parent
    else:
        root = Path(args.root)
        path = resolve(root, None if args.version == "current" else args.version)
    bundle = load_bundle(path, hmac_key=_key_from_env(args.hmac_key_env))
    print(write_html_report(bundle, root))
    return 0


COMMANDS = {
    "train": cmd_train,
    "retrain": cmd_train,
    "snapshots": cmd_snapshots,
    "generate": cmd_generate,
    "score": cmd_score,
    "list": cmd_list,
    "verify": cmd_verify,
    "report": cmd_report,
    "features": cmd_features,
    "evaluate-policy": cmd_evaluate_policy,
    "feedback": cmd_feedback,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; return the exit status (2 on a known error, printed without traceback)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    from scoring.engine import ScoringError
    from training.validate import TableError

    try:
        return COMMANDS[args.command](args)
    except (ConfigError, TableError, BundleError, ScoringError, CommandError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
