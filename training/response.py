"""Response model stage: LightGBM over (customer features, segment, campaign) rows.

One row per campaign offered to a customer, laid out by ``FeatureSchema.response_layout()``
(the layout serving reads): the response features, the categorical codes, the segment id and the
campaign's index in the pool; the last three kinds are declared categorical. Customers (never rows) are split into
training and held-out sets, so no customer is on both sides; early stopping watches the held-out
log loss, and the model is trimmed to its best iteration. Held-out metrics: pooled and
per-campaign AUC, log loss, Brier score, a 10-bin calibration table and the base rate.

Every recommended campaign walks every tree, so serving cost grows with rounds x leaves. With
``select_smallest`` (the default) training also fits half and a quarter of ``num_leaves``,
records the held-out AUC after every round of each, and keeps the smallest model (rounds x
leaves) whose AUC is within ``auc_tolerance`` of the best seen; ``metrics.size_selection`` in
the manifest says what it traded.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score, roc_curve

from scoring import compiled_trees
from scoring.compiled_trees import CompiledArtifact
from training.config import ResponseModelConfig
from training.prepared import PreparedData

log = logging.getLogger(__name__)

#: log progress every this many boosting rounds
PROGRESS_EVERY = 50
#: share of features sampled per tree
FEATURE_FRACTION = 0.9
CALIBRATION_BINS = 10
#: false-positive rates at which the held-out ROC curve is recorded (for the report's chart)
ROC_GRID = np.linspace(0.0, 1.0, 51)
#: held-out log-loss gain that counts as progress for early stopping. On a million demo customers
#: the last ~170 of 390 rounds gained 8e-5 in log loss and nothing in AUC (0.880 either way),
#: while costing 40% of the training time; the real tables stop at the same round either way.
EARLY_STOPPING_MIN_DELTA = 2e-5
#: below this many training rows LightGBM runs on one thread
SINGLE_THREAD_ROWS = 100_000
#: smallest leaf count the size selection tries
MIN_LEAVES = 4


@dataclass
class ResponseModel:
    """The fitted booster (trimmed to its best iteration) and its held-out metrics."""

    booster: lgb.Booster
    metrics: dict[str, Any]
    #: held-out rows (and copies with gaps) the compiled trees must reproduce
    check_rows: np.ndarray | None = None
    #: the model column of the campaign and the pool's size: the compiled trees then also score
    #: a customer for every campaign in one walk (scoring/tree_codegen.py)
    campaign_slot: int | None = None
    campaigns: int = 0


def compile_response_model(
    response: ResponseModel | None, config: ResponseModelConfig
) -> CompiledArtifact | None:
    """The response model compiled to native code for this machine, or None.

    None when disabled (``response_model.compile = false``), when there is no model, or when
    the tree compiler is missing or fails: the bundle is then served through LightGBM, which
    gives the same numbers more slowly, so training goes on with a warning.
    """
    if response is None:
        return None
    return compile_booster(
        response.booster,
        response.check_rows,
        config,
        "response model",
        campaign_slot=response.campaign_slot,
        campaigns=response.campaigns,
    )


def compile_booster(
    booster: lgb.Booster,
    check_rows: np.ndarray | None,
    config: ResponseModelConfig,
    what: str,
    *,
    campaign_slot: int | None = None,
    campaigns: int = 0,
) -> CompiledArtifact | None:
    """``booster`` compiled for this machine with its check sample ``check_rows``, or None
    (compiling disabled, or the compiler missing or failing: ``what`` is then served through
    LightGBM and the log says so). The response and the control model both come through here;
    ``campaign_slot`` and ``campaigns`` as in ``compiled_trees.compile_model``."""
    if not config.compile:
        return None
    rows = check_rows if check_rows is not None else np.empty((0, 0))
    try:
        artifact = compiled_trees.compile_model(
            booster.model_to_string(), rows, campaign_slot=campaign_slot, campaigns=campaigns
        )
    except Exception as exc:  # noqa: BLE001 -- an optional speed-up must not fail training
        log.warning("%s not compiled (%s); it will be served through LightGBM", what, exc)
        return None
    log.info(
        "%s compiled for %s (%s): %d KiB of native code",
        what,
        artifact.platform["triple"],
        artifact.platform["cpu"],
        len(artifact.object_code) // 1024,
    )
    return artifact


def response_matrix(
    prepared: PreparedData,
    labels: np.ndarray,
    rows: np.ndarray | None = None,
    responses: pd.DataFrame | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Model inputs and targets for the response rows (all, or the positions in ``rows``);
    ``responses`` replaces ``prepared.responses`` (the control rows, for the uplift stage)."""
    responses = prepared.responses if responses is None else responses
    cust = responses["customer_idx"].to_numpy()
    camp = responses["campaign_idx"].to_numpy()
    y = responses["responded"].to_numpy()
    if rows is not None:
        cust, camp, y = cust[rows], camp[rows], y[rows]
    # the layout serving reads: the same columns in the same places
    layout = prepared.schema.response_layout()
    X = layout.rows(prepared.numeric, prepared.codes, labels, cust, camp)
    return X, y.astype(np.float64)


def model_feature_names(columns: list[str]) -> list[str]:
    """Names LightGBM accepts for ``columns``: JSON-special characters replaced, made unique.

    The names are labels only (serving passes arrays in ``response_model_columns`` order), but
    LightGBM refuses duplicates -- a table may well have its own ``campaign`` column -- and
    characters such as ``,`` or ``:``. Later clashes get underscores appended.
    """
    names: list[str] = []
    for column in columns:
        name = re.sub(r'[",:\[\]{}]', "_", column) or "_"
        while name in names:
            name += "_"
        names.append(name)
    return names


def split_customers(
    customer_idx: np.ndarray, config: ResponseModelConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Row positions (train, held-out) splitting by customer; capped at ``max_train_rows``."""
    rng = np.random.default_rng(config.seed)
    customers = np.unique(customer_idx)
    n_rows = customer_idx.shape[0]
    if config.max_train_rows and n_rows > config.max_train_rows:
        # sample whole customers so the cap never splits a customer's rows
        keep = int(np.ceil(len(customers) * config.max_train_rows / n_rows))
        customers = np.sort(rng.choice(customers, size=keep, replace=False))
        log.info(
            "response model: sampled %d customers to stay under %d rows",
            keep,
            config.max_train_rows,
        )
    shuffled = rng.permutation(customers)
    n_valid = max(1, round(len(customers) * config.validation_fraction))
    if n_valid >= len(customers):
        raise ValueError(
            f"validation_fraction={config.validation_fraction} leaves no training customers "
            f"out of {len(customers)}"
        )
    side = np.full(int(customer_idx.max()) + 1, -1, dtype=np.int8)
    side[shuffled[n_valid:]] = 0
    side[shuffled[:n_valid]] = 1
    row_side = side[customer_idx]
    return np.flatnonzero(row_side == 0), np.flatnonzero(row_side == 1)


def _progress(period: int, what: str):
    def callback(env: lgb.callback.CallbackEnv) -> None:
        if (env.iteration + 1) % period == 0 and env.evaluation_result_list:
            _, metric, value, _ = env.evaluation_result_list[0][:4]
            log.info("%s: round %d, held-out %s %.5f", what, env.iteration + 1, metric, value)

    return callback


def lightgbm_params(config: ResponseModelConfig, n_train_rows: int) -> dict[str, Any]:
    """LightGBM parameters of a response-style model (the response and the control model)."""
    return {
        "objective": "binary",
        "metric": "binary_logloss",
        "learning_rate": config.learning_rate,
        "num_leaves": config.num_leaves,
        "min_child_samples": config.min_child_samples,
        "feature_fraction": FEATURE_FRACTION,
        # one thread for small tables: as fast there, and immune to a busy machine
        "num_threads": 1 if n_train_rows < SINGLE_THREAD_ROWS else 2,
        "deterministic": True,
        "force_row_wise": True,
        "seed": config.seed,
        "verbosity": -1,
    }


@dataclass(frozen=True)
class Fit:
    """One LightGBM run: the booster, its early-stopping round, held-out AUC after each round."""

    leaves: int
    booster: lgb.Booster
    best: int
    auc: list[float]

    def trimmed(self, rounds: int | None = None) -> lgb.Booster:
        """A booster holding exactly ``rounds`` (default: the early-stopping round) rounds, so
        ``predict()`` gives the same numbers everywhere (text format, compiled trees)."""
        n = self.best if rounds is None else rounds
        return lgb.Booster(model_str=self.booster.model_to_string(num_iteration=n))


def fit_early_stopped(
    params: dict[str, Any],
    train_set: lgb.Dataset,
    valid_set: lgb.Dataset,
    config: ResponseModelConfig,
    what: str = "response model",
) -> Fit:
    """Boost up to ``config.max_rounds``, early-stopped on the held-out log loss (the first
    metric) after ``config.early_stopping_rounds`` rounds without a gain of
    :data:`EARLY_STOPPING_MIN_DELTA`; records the held-out AUC per round when it is a metric.
    The one fitting loop of the response model, its size selection and the control model."""
    history: dict[str, dict[str, list[float]]] = {}
    booster = lgb.train(
        params,
        train_set,
        num_boost_round=config.max_rounds,
        valid_sets=[valid_set],
        valid_names=["held_out"],
        callbacks=[
            lgb.early_stopping(
                config.early_stopping_rounds,
                first_metric_only=True,
                verbose=False,
                min_delta=EARLY_STOPPING_MIN_DELTA,
            ),
            lgb.record_evaluation(history),
            _progress(PROGRESS_EVERY, what),
        ],
    )
    best = booster.best_iteration or booster.current_iteration()
    auc = list(history.get("held_out", {}).get("auc", []))
    return Fit(int(params["num_leaves"]), booster, int(best), auc)


def leaf_options(num_leaves: int) -> list[int]:
    """The leaf counts the size selection fits: ``num_leaves``, then half and a quarter of it."""
    options = [num_leaves]
    for divisor in (2, 4):
        leaves = num_leaves // divisor
        if leaves >= MIN_LEAVES and leaves not in options:
            options.append(leaves)
    return options


def smallest_within(fits: list[Fit], tolerance: float) -> tuple[Fit, int, dict[str, Any]]:
    """The fit and round count of the smallest model (rounds x leaves) whose held-out AUC is
    within ``tolerance`` of the best over every fit and round, and the evidence."""
    best_auc, best_fit, best_round = -1.0, fits[0], fits[0].best
    for fit in fits:
        for r, auc in enumerate(fit.auc, start=1):
            if auc > best_auc:
                best_auc, best_fit, best_round = auc, fit, r
    chosen, chosen_round = best_fit, best_round
    for fit in fits:
        for r, auc in enumerate(fit.auc, start=1):
            if auc >= best_auc - tolerance:
                size, chosen_size = r * fit.leaves, chosen_round * chosen.leaves
                if size < chosen_size or (
                    size == chosen_size and auc > chosen.auc[chosen_round - 1]
                ):
                    chosen, chosen_round = fit, r
                break  # later rounds of this fit are only larger
    evidence = {
        "tolerance": tolerance,
        "best": {"leaves": best_fit.leaves, "rounds": best_round, "auc": best_auc},
        "chosen": {
            "leaves": chosen.leaves,
            "rounds": chosen_round,
            "auc": chosen.auc[chosen_round - 1],
        },
        "candidates": [
            {
                "leaves": f.leaves,
                "early_stopping_round": f.best,
                "auc_at_early_stopping": f.auc[f.best - 1] if f.auc else None,
            }
            for f in fits
        ],
    }
    return chosen, chosen_round, evidence


def calibration_table(y: np.ndarray, p: np.ndarray, bins: int = CALIBRATION_BINS) -> list[dict]:
    """Mean predicted vs observed rate in ``bins`` equal-count bins of the prediction."""
    order = np.argsort(p, kind="stable")
    table = []
    for part in np.array_split(order, bins):
        if part.size:
            table.append(
                {
                    "n": int(part.size),
                    "mean_predicted": float(p[part].mean()),
                    "observed_rate": float(y[part].mean()),
                }
            )
    return table


def auc_undefined_reason(y: np.ndarray) -> str | None:
    """Why an AUC cannot be computed on targets ``y`` (None when it can)."""
    if y.size == 0:
        return "no held-out responses"
    if np.all(y == y[0]):
        return f"every held-out response is {int(y[0])}"
    return None


def skip_reason(prepared: PreparedData, config: ResponseModelConfig) -> str | None:
    """Why no response model is fitted (None when one is)."""
    if not config.enabled:
        return "disabled by configuration (response_model.enabled = false)"
    if prepared.responses is None or not len(prepared.responses):
        return "no response history"
    y = prepared.responses["responded"].to_numpy()
    if np.all(y == y[0]):
        return f"every recorded response is {int(y[0])}: there is nothing to learn"
    if np.unique(prepared.responses["customer_idx"].to_numpy()).size < 2:
        return "responses from a single customer cannot be split into training and held-out"
    return None


def evaluate(
    y: np.ndarray, p: np.ndarray, campaign: np.ndarray, campaign_ids: list[str]
) -> dict[str, Any]:
    """Held-out metrics of predictions ``p`` for targets ``y``.

    An AUC needs both outcomes: where the held-out rows of a campaign (or all of them) are all
    0 or all 1, or there are none, the AUC is None and ``auc_undefined`` says why, keyed by
    campaign id (``"*"`` for the pooled AUC).
    """
    undefined: dict[str, str] = {}
    per_campaign: dict[str, float | None] = {}
    for j, cid in enumerate(campaign_ids):
        mask = campaign == j
        reason = auc_undefined_reason(y[mask])
        if reason is None:
            per_campaign[cid] = float(roc_auc_score(y[mask], p[mask]))
        else:
            per_campaign[cid] = None
            undefined[cid] = reason
    pooled = auc_undefined_reason(y)
    roc = None
    if pooled is None:
        fpr, tpr, _ = roc_curve(y, p)
        roc = {
            "fpr": ROC_GRID.round(3).tolist(),
            "tpr": np.interp(ROC_GRID, fpr, tpr).round(4).tolist(),
        }
    else:
        undefined["*"] = pooled
    return {
        "roc": roc,
        "auc": float(roc_auc_score(y, p)) if pooled is None else None,
        "auc_per_campaign": per_campaign,
        "auc_undefined": undefined,
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "brier": float(brier_score_loss(y, p)),
        "base_rate": float(y.mean()),
        "calibration": calibration_table(y, p),
    }


def fit_response_model(
    prepared: PreparedData, labels: np.ndarray, config: ResponseModelConfig
) -> ResponseModel | None:
    """Fit the LightGBM response model; None when disabled or there is no response history."""
    reason = skip_reason(prepared, config)
    if reason is not None:
        if config.enabled and prepared.responses is not None:
            log.warning("response model skipped: %s", reason)
        return None
    train_rows, valid_rows = split_customers(prepared.responses["customer_idx"].to_numpy(), config)
    X_train, y_train = response_matrix(prepared, labels, train_rows)
    X_valid, y_valid = response_matrix(prepared, labels, valid_rows)
    layout = prepared.schema.response_layout()
    columns = model_feature_names(list(layout.columns))
    # categorical codes, segment, campaign
    categorical = [
        *range(layout.code_slots.start, layout.code_slots.stop),
        layout.segment_slot,
        layout.campaign_slot,
    ]
    params = lightgbm_params(config, len(y_train))
    train_set = lgb.Dataset(
        X_train, y_train, feature_name=columns, categorical_feature=categorical, free_raw_data=True
    )
    valid_set = lgb.Dataset(X_valid, y_valid, reference=train_set)
    log.info(
        "response model: %d training rows, %d held-out rows (%d campaigns)",
        len(y_train),
        len(y_valid),
        len(prepared.campaigns),
    )
    selection: dict[str, Any] = {"enabled": False}
    select = config.select_smallest and auc_undefined_reason(y_valid) is None
    if select:
        # early stopping still watches the log loss (the first metric); AUC is only recorded
        params["metric"] = ["binary_logloss", "auc"]
    first = fit_early_stopped(params, train_set, valid_set, config)
    chosen, best = first, first.best
    if select:
        fits = [first]
        for leaves in leaf_options(config.num_leaves)[1:]:
            log.info("response model: size selection, fitting %d leaves", leaves)
            fits.append(
                fit_early_stopped({**params, "num_leaves": leaves}, train_set, valid_set, config)
            )
        chosen, best, selection = smallest_within(fits, config.auc_tolerance)
        params = {**params, "num_leaves": chosen.leaves}
        reference = first.best * first.leaves
        selection.update(
            enabled=True,
            traded=(
                f"{best} rounds of {chosen.leaves} leaves instead of {first.best} of "
                f"{first.leaves} ({reference / (best * chosen.leaves):.1f}x fewer leaves to "
                f"walk): held-out AUC {selection['chosen']['auc']:.4f} against the best "
                f"{selection['best']['auc']:.4f} (tolerance {config.auc_tolerance:g})"
            ),
        )
        log.info("response model: size selection kept %s", selection["traded"])
    trimmed = chosen.trimmed(best)
    p_valid = trimmed.predict(X_valid)
    metrics = evaluate(
        y_valid,
        p_valid,
        X_valid[:, layout.campaign_slot].astype(int),
        [c.id for c in prepared.campaigns],
    )
    metrics.update(
        best_iteration=int(best),
        n_train_rows=len(y_train),
        n_valid_rows=len(y_valid),
        n_train_customers=int(
            np.unique(prepared.responses["customer_idx"].to_numpy()[train_rows]).size
        ),
        n_valid_customers=int(
            np.unique(prepared.responses["customer_idx"].to_numpy()[valid_rows]).size
        ),
        params={k: v for k, v in params.items() if k != "verbosity"},
        size_selection=selection,
        importance=dict(
            zip(
                prepared.schema.response_model_columns,
                trimmed.feature_importance("gain").round(3).tolist(),
                strict=True,
            )
        ),
    )
    log.info(
        "response model: best round %d, held-out AUC %s, log loss %.4f",
        best,
        "n/a" if metrics["auc"] is None else f"{metrics['auc']:.3f}",
        metrics["log_loss"],
    )
    return ResponseModel(
        trimmed,
        metrics,
        compiled_trees.check_sample(X_valid, config.seed),
        campaign_slot=layout.campaign_slot,
        campaigns=len(prepared.campaigns),
    )
