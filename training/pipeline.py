"""The training pipeline: prepare -> segment -> name -> profile -> response model -> export.

:func:`train` runs the stages in order, timing each and recording the process's peak memory
after it, and writes the bundle with :func:`scoring.bundle.write_bundle` (atomic: a run that
fails at any stage writes nothing and leaves ``current`` unchanged).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import resource
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import adjusted_rand_score

from scoring.bundle import (
    Bundle,
    BundleError,
    load_assignments,
    load_bundle,
    resolve,
    write_bundle,
)
from scoring.engine import ScoringEngine
from scoring.features import cluster_matrix
from training.clv import CLVFit, fit_clv, segment_values
from training.compare import compare_methods
from training.config import ConfigError, TrainConfig, config_to_dict, rfm_available
from training.evidence import build_evidence
from training.html_report import write_html_report
from training.naming import SegmentName, load_names_file, name_segments, segment_zscores
from training.prepare import prepare
from training.prepared import PreparedData
from training.profiles import build_profiles
from training.report import write_report
from training.resegment import (
    GateResult,
    Matching,
    feature_distribution,
    feature_psi,
    gate,
    match_segments,
    migration_matrix,
    share_shifts,
)
from training.response import (
    ResponseModel,
    compile_booster,
    compile_response_model,
    fit_response_model,
    skip_reason,
)
from training.result import StageRecord, TrainResult
from training.rfm import (
    fit_rule,
    group_names,
    manifest_entry,
    profile_scores,
    rfm_segmentation,
)
from training.segmentation import Segmentation, fit_segmentation, reorder_segmentation
from training.uplift import UpliftModel, fit_uplift_model
from training.uplift import skip_reason as uplift_skip_reason
from training.validate import eligibility_warnings

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def code_revision(root: Path = PROJECT_ROOT) -> str | None:
    """The git commit the code runs from, or None outside a repository (or without commits)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and len(sha) == 40 else None


def signing_key(config: TrainConfig, environ: Mapping[str, str]) -> bytes | None:
    """The HMAC key named by ``output.hmac_key_env``, or None when unset or empty."""
    value = environ.get(config.output.hmac_key_env, "") if config.output.hmac_key_env else ""
    return value.encode("utf-8") if value else None


def segment_names(
    X: np.ndarray,
    segmentation: Segmentation,
    features: list[str],
    names_file: str | None,
    rfm_groups: bool = False,
) -> list[SegmentName]:
    """Names from the segments' mean z-scores (or the RFM group names), overridden by the names
    file if given."""
    try:
        overrides = load_names_file(names_file) if names_file else None
        if rfm_groups:
            return group_names(overrides)
        Z = segmentation.scaler.transform(X)
        zscores = segment_zscores(Z, segmentation.labels, segmentation.k)
        return name_segments(features, zscores, overrides)
    except ValueError as exc:
        raise ConfigError(f"segmentation.names_file: {exc}") from None


def identity_matching(previous: Bundle, k: int) -> Matching:
    """RFM groups are the same segments in every bundle: group g matches group g."""
    if previous.manifest.get("served_clustering") != "rfm" or previous.n_segments != k:
        raise ConfigError(
            f"segmentation.previous: {previous.version} is not an RFM bundle "
            f"(served_clustering={previous.manifest.get('served_clustering')!r}); RFM groups "
            'can only follow a bundle trained with segmentation.method = "rfm"'
        )
    return Matching(
        order=np.arange(k),
        previous_of={g: g for g in range(k)},
        names={g: previous.segment_names[g] for g in range(k)},
        pairs=[
            {
                "previous_id": g,
                "previous_name": previous.segment_names[g],
                "new_id": g,
                "distance": 0.0,
            }
            for g in range(k)
        ],
        new=[],
        vanished=[],
        features=["rfm groups (identity)"],
    )


def build_manifest(
    config: TrainConfig,
    prepared: PreparedData,
    segmentation: Segmentation,
    response: ResponseModel | None,
    stages: list[StageRecord],
    truth_ari: float | None,
    warnings: tuple[str, ...] | list[str] = (),
    clv: CLVFit | None = None,
    uplift: UpliftModel | None = None,
    comparison: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest fields training adds to what the bundle writer fills in."""
    pca = segmentation.pca
    return {
        "name": config.name,
        "data_fingerprint": prepared.fingerprint,
        "config": config_to_dict(config),
        "code_revision": code_revision(),
        "k_selection": segmentation.selection.to_dict(),
        "stability": segmentation.stability,
        "comparison": comparison,
        "metrics": {
            "segmentation": {
                "k": segmentation.k,
                "pca_components": int(pca.n_components_),
                "pca_explained_variance": float(np.sum(pca.explained_variance_ratio_)),
                "sizes": np.bincount(segmentation.labels, minlength=segmentation.k).tolist(),
                "truth_ari": truth_ari,
            },
            "response_model": None if response is None else response.metrics,
            "response_model_skipped": None
            if response is not None
            else skip_reason(prepared, config.response_model),
            "uplift": None if uplift is None else uplift.metrics,
            "uplift_skipped": None
            if uplift is not None
            else (
                "no response model"
                if response is None
                else uplift_skip_reason(prepared, config.uplift)
            ),
        },
        "ranking": "uplift" if uplift is not None else "response",
        "pool": prepared.pool.to_dict(),
        "warnings": list(warnings),
        "transactions": prepared.transactions,
        "clv": None if clv is None else clv.to_dict(),
        # stage seconds, with the segmentation stage broken down as "segmentation/<part>"
        "timings": {s.name: round(s.seconds, 3) for s in stages}
        | {f"segmentation/{k}": v for k, v in segmentation.timings.items()},
        "peak_rss_mb": {s.name: round(s.peak_rss_mb, 1) for s in stages},
    }


def load_previous(config: TrainConfig, key: bytes | None) -> Bundle:
    """The bundle ``segmentation.previous`` names: a folder, or a version under output.root."""
    name = str(config.segmentation.previous)
    folder = Path(name).expanduser()
    try:
        if (folder / "manifest.json").is_file():
            return load_bundle(folder, hmac_key=key)
        return load_bundle(
            resolve(config.output.root, None if name == "current" else name), hmac_key=key
        )
    except BundleError as exc:
        raise ConfigError(f"segmentation.previous: {exc}") from None


def previous_labels(previous: Bundle, prepared: PreparedData) -> np.ndarray | None:
    """Each new customer's segment under the previous bundle (None when its inputs differ)."""
    needed = previous.schema.input_names + previous.schema.categorical_names
    missing = [c for c in needed if c not in prepared.customers.columns]
    if missing:
        log.info("no warm start: the previous bundle needs %s", ", ".join(missing))
        return None
    engine = ScoringEngine(previous)
    return engine.assign(engine.batch_from_frame(prepared.customers)).segment.astype(np.int64)


def keep_previous_names(names: list[SegmentName], previous: dict[int, str]) -> list[SegmentName]:
    """Matched segments take their previous name; a new segment's generated name that collides
    with a kept one gets " (new)"."""
    kept = set(previous.values())
    out = []
    for s, name in enumerate(names):
        if s in previous:
            out.append(dataclasses.replace(name, name=previous[s]))
        elif name.name in kept:
            out.append(dataclasses.replace(name, name=f"{name.name} (new)"))
        else:
            out.append(name)
    return out


def compare_with_previous(
    config: TrainConfig,
    prepared: PreparedData,
    segmentation: Segmentation,
    previous: Bundle,
    matching: Matching,
    key: bytes | None,
    force: bool,
) -> tuple[dict[str, Any], GateResult]:
    """Migration, PSI and share shifts against the previous bundle, and the gate's verdict."""
    seg = config.segmentation
    sizes = np.bincount(segmentation.labels, minlength=segmentation.k)
    assignments = load_assignments(previous.path, hmac_key=key)
    migration = None
    if assignments is not None:
        migration = migration_matrix(
            assignments[0],
            assignments[1],
            prepared.customers.index.to_numpy(),
            segmentation.labels,
            previous.n_segments,
            segmentation.k,
            matching.previous_of,
        )
    distribution = previous.manifest.get("feature_distribution") or {}
    psi_values = feature_psi(distribution, prepared.numeric, list(prepared.schema.numeric_names))
    shifts = share_shifts(previous, sizes, matching.previous_of)
    verdict = gate(
        psi_values,
        shifts,
        None if migration is None else migration["retention"],
        max_psi=seg.gate_max_psi,
        max_share_shift=seg.gate_max_share_shift,
        min_retention=seg.gate_min_retention,
        force=force,
        ignore=seg.gate_ignore,
    )
    report = {
        "previous": previous.version,
        "matching": matching.to_dict(),
        "migration": migration,
        "psi": psi_values,
        "share_shift": shifts,
        "gate": verdict.to_dict(),
    }
    return report, verdict


def train(
    config: TrainConfig,
    *,
    progress: Callable[[StageRecord], None] | None = None,
    environ: Mapping[str, str] | None = None,
    force: bool = False,
) -> TrainResult:
    """Train a bundle from ``config`` and write it under ``config.output.root``.

    With ``segmentation.previous`` the new segments are matched to that bundle's
    (:mod:`training.resegment`) and ``current`` moves only when the promotion gate passes or
    ``force`` is true. ``progress`` is called with each finished stage's record. The signing key is read from
    ``environ`` (default: the process environment) under ``config.output.hmac_key_env``.
    """
    stages: list[StageRecord] = []

    @contextmanager
    def stage(name: str) -> Iterator[None]:
        log.info("stage %s ...", name)
        start = time.perf_counter()
        yield
        record = StageRecord(name, time.perf_counter() - start, peak_rss_mb())
        stages.append(record)
        log.info(
            "stage %s done in %.1f s (peak RSS %.0f MiB)", name, record.seconds, record.peak_rss_mb
        )
        if progress is not None:
            progress(record)

    key = signing_key(config, os.environ if environ is None else environ)

    with stage("prepare"):
        prepared = prepare(config)
    previous = None
    warm_labels = None
    if config.segmentation.previous:
        previous = load_previous(config, key)
        warm_labels = previous_labels(previous, prepared)
    by_rfm = config.segmentation.method == "rfm"
    rule = None
    if by_rfm or rfm_available(config):
        # the quintile edges of the training population, stored so serving scores alike
        rule = fit_rule(
            prepared.numeric, list(prepared.schema.numeric_names), config.rfm, segments=by_rfm
        )
    with stage("segmentation"):
        X = cluster_matrix(prepared.numeric, prepared.schema)
        if by_rfm:
            segmentation = rfm_segmentation(X, prepared.numeric, rule, config.segmentation)
        else:
            segmentation = fit_segmentation(X, config.segmentation, warm_labels)
    matching = None
    if previous is not None and by_rfm:
        matching = identity_matching(previous, segmentation.k)
    elif previous is not None:
        with stage("matching"):
            try:
                matching = match_segments(
                    previous,
                    prepared.numeric,
                    list(prepared.schema.numeric_names),
                    list(prepared.schema.cluster_features),
                    segmentation.labels,
                    segmentation.k,
                    config.segmentation.match_distance,
                )
            except ValueError as exc:
                raise ConfigError(f"segmentation.previous: {exc}") from None
            segmentation = reorder_segmentation(segmentation, matching.order)
    with stage("comparison"):
        evidence = segmentation_evidence(X, prepared, segmentation, config)
    with stage("naming"):
        names = segment_names(
            X,
            segmentation,
            list(prepared.schema.cluster_features),
            config.segmentation.names_file,
            rfm_groups=by_rfm,
        )
        if matching is not None:
            names = keep_previous_names(names, matching.names)
        del X
        warnings = list(prepared.warnings) + list(segmentation.selection.warnings)
        for warning in eligibility_warnings(prepared.campaigns, [n.name for n in names]):
            log.warning("%s", warning)
            warnings.append(warning)
    with stage("profiles"):
        profiles = build_profiles(
            prepared.numeric,
            prepared.schema.numeric_names,
            segmentation.labels,
            names,
            prepared.campaigns,
            prepared.responses,
            segmentation.outlier_thresholds,
        )
        rfm_entry = None
        if rule is not None:
            scores = rule.scores(prepared.numeric)
            for profile, entry in zip(
                profiles, profile_scores(scores, segmentation.labels, segmentation.k), strict=True
            ):
                profile["rfm"] = entry
            rfm_entry = manifest_entry(rule, scores)
    clv = None
    if prepared.clv_features is not None:
        with stage("clv"):
            clv = fit_clv(
                prepared.clv_features,
                period_days=config.clv.period_days,
                horizon_months=config.clv.horizon_months,
                discount_rate=config.clv.discount_rate,
            )
            for profile, value in zip(
                profiles,
                segment_values(clv.values["clv"], segmentation.labels, segmentation.k),
                strict=True,
            ):
                profile["clv"] = value
            warnings += clv.notes
    with stage("response_model"):
        response = fit_response_model(prepared, segmentation.labels, config.response_model)
    uplift = None
    if response is not None and prepared.controls is not None:
        with stage("uplift"):
            uplift = fit_uplift_model(
                prepared,
                segmentation.labels,
                response,
                config.uplift,
                config.response_model,
                [n.name for n in names],
            )
    with stage("compile"):
        compiled = compile_response_model(response, config.response_model)
        compiled_control = (
            None
            if uplift is None
            else compile_booster(
                uplift.control, uplift.check_rows, config.response_model, "control model"
            )
        )

    truth_ari = None
    if prepared.truth is not None:
        # integer codes first: the ARI of a million string labels is several times slower
        truth_codes = pd.factorize(pd.Series(prepared.truth))[0]
        truth_ari = float(adjusted_rand_score(truth_codes, segmentation.labels))
        log.info("adjusted Rand index against the planted segments: %.3f", truth_ari)

    resegmentation = None
    gate_result = None
    if previous is not None and matching is not None:
        with stage("drift"):
            resegmentation, gate_result = compare_with_previous(
                config, prepared, segmentation, previous, matching, key, force
            )
            for line in gate_result.tripped:
                log.warning("promotion gate: %s", line)

    with stage("export"):
        manifest = build_manifest(
            config,
            prepared,
            segmentation,
            response,
            list(stages),
            truth_ari,
            warnings,
            clv,
            uplift,
            evidence["comparison"],
        )
        manifest["feature_distribution"] = feature_distribution(
            prepared.numeric, list(prepared.schema.numeric_names)
        )
        manifest["resegmentation"] = resegmentation
        manifest["rfm"] = rfm_entry
        if clv is not None:
            manifest["clv"]["weight_gains"] = False
            if config.clv.weight_gains:
                # the reference makes an average customer's weight 1 (scoring.clv.GainWeight)
                reference = float(np.mean(clv.values["clv"]))
                if reference > 0:
                    manifest["clv"].update(weight_gains=True, weight_reference=reference)
                else:
                    note = "clv.weight_gains: the mean CLV is 0, so gains are not weighted"
                    log.warning("%s", note)
                    manifest["warnings"].append(note)
        bundle = Bundle(
            schema=prepared.schema,
            imputer=prepared.imputer,
            scaler=segmentation.scaler,
            pca=segmentation.pca,
            kmeans=segmentation.kmeans,
            segment_names=[n.name for n in names],
            profiles=profiles,
            campaigns=list(prepared.campaigns),
            response_model=None if response is None else response.booster,
            control_model=None if uplift is None else uplift.control,
            compiled=compiled,
            compiled_control=compiled_control,
            mixture=segmentation.mixture,
            manifest=manifest,
            assignments=(prepared.customers.index.to_numpy(), segmentation.labels)
            if config.segmentation.keep_assignments
            else None,
            evidence=evidence,
        )
        promote = gate_result is None or gate_result.promote
        path = write_bundle(bundle, config.output.root, hmac_key=key, make_current=promote)
    log.info("bundle written to %s", path)
    result = TrainResult(
        bundle=bundle,
        path=path,
        segmentation=segmentation,
        names=names,
        response=response,
        uplift=uplift,
        stages=stages,
        truth_ari=truth_ari,
        clv=clv,
        gate=gate_result,
    )
    if config.output.report:
        with stage("report"):
            try:
                result.report_path = write_report(result, config.output.root)
                result.html_report_path = write_html_report(bundle, config.output.root)
            except OSError as exc:
                # the bundle is written and valid; a report that cannot be saved must not undo it
                log.warning("could not write the report: %s", exc)
    return result


def segmentation_evidence(
    X: np.ndarray, prepared: PreparedData, segmentation: Segmentation, config: TrainConfig
) -> dict[str, Any]:
    """The algorithm comparison and the report's chart data, from the cluster matrix ``X``."""
    schema = prepared.schema
    Z = segmentation.scaler.transform(X)
    labels = segmentation.labels
    return evidence_of_rows(
        segmentation.pca.transform(Z),
        Z,
        prepared.numeric[:, schema.cluster_index()],
        prepared.customers.index.to_numpy(),
        prepared.codes,
        labels,
        segmentation.distances > segmentation.outlier_thresholds[labels],
        segmentation.kmeans.cluster_centers_
        if segmentation.mixture is None
        else segmentation.mixture.means_,
        segmentation.pca.explained_variance_ratio_,
        schema,
        config,
    )


def evidence_of_rows(
    P: np.ndarray,
    Z: np.ndarray,
    raw: np.ndarray,
    ids: np.ndarray,
    codes: np.ndarray,
    labels: np.ndarray,
    atypical: np.ndarray,
    centers: np.ndarray,
    explained: np.ndarray,
    schema: Any,
    config: TrainConfig,
) -> dict[str, Any]:
    """The comparison stage on these rows: every row of the table (local engine) or the Dask
    engine's fixed sample. ``P``/``Z``/``raw`` are the rows in PCA space, standardized and in
    original units, ``codes`` all categorical codes, ``labels``/``atypical`` the served
    segmentation of the rows and ``centers`` its centres in PCA space."""
    features = list(schema.cluster_features)
    comparison = None
    if config.comparison.enabled:
        cat_names = schema.categorical_names
        chosen = (
            codes[:, [cat_names.index(c) for c in config.comparison.categorical]]
            if config.comparison.categorical
            else None
        )
        comparison = compare_methods(
            P,
            int(centers.shape[0]),
            config.comparison,
            seed=config.segmentation.seed,
            ids=ids,
            Z=Z,
            raw=raw,
            features=features,
            codes=chosen,
            served=config.segmentation.model if config.segmentation.method == "kmeans" else "rfm",
        )
    return build_evidence(
        P,
        Z,
        labels,
        atypical,
        centers,
        explained,
        features,
        config.segmentation.seed,
        comparison,
    )
