"""Uplift stage: what each campaign *causes*, from a history with a randomized control arm.

Two models (the "T-learner"): the response model already gives the chance of a response when a
campaign is sent; this stage fits a second LightGBM model, the *control model*, on the customers
held out (rows with ``treated = 0``, or control rows naming no campaign) with exactly the same
input columns. The uplift of campaign ``j`` for a customer is then
``response_model(row_j) - control_model(row_j)``. A control arm that names no campaign (a
randomized experiment's no-contact group: one outcome for every campaign) leaves the control
model's ``campaign`` column missing, so it predicts the same no-contact chance for every campaign.

Why our own two-model learner rather than a library: scikit-uplift 0.5.1 (its last release,
2022) and causalml 0.18 both wrap scikit-learn style estimators whose ``predict`` serving would
have to call per request; causalml also pulls xgboost, shap, statsmodels, seaborn, forestci and
black into the service. Two plain LightGBM boosters are what the scoring core already serves
through its fast single-row path, so the uplift model costs one more booster walk per campaign
and no new dependency. The evaluation follows scikit-uplift's definitions (Qini curve and its
normalised area, ``uplift_at_k`` with the "overall" strategy), written out here in a few lines.

Evaluation runs on customers neither model trained on (the response model's held-out customers,
and as many control-arm customers again by the same fraction), per campaign: the Qini coefficient
and the uplift among the top 10/20/30% when ranking by predicted uplift, against the same figures
when ranking by the response probability alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import lightgbm as lgb
import numpy as np

from scoring import compiled_trees
from training.config import ResponseModelConfig, UpliftConfig
from training.prepared import PreparedData
from training.response import (
    ResponseModel,
    fit_early_stopped,
    lightgbm_params,
    model_feature_names,
    response_matrix,
    split_customers,
)

log = logging.getLogger(__name__)

#: the top shares of customers at which uplift is reported
TOP_SHARES = (0.1, 0.2, 0.3)


@dataclass
class UpliftModel:
    """The control model (no campaign sent) and the held-out uplift evaluation."""

    control: lgb.Booster
    metrics: dict[str, Any]
    #: held-out control rows (and copies with gaps) the compiled control trees must reproduce
    check_rows: np.ndarray | None = None


# ---- metrics (scikit-uplift's definitions) ------------------------------------------------------
def qini_curve(y: np.ndarray, treated: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, ...]:
    """Qini curve: x = customers targeted, q = treated responses minus control responses scaled
    to the treated count, at every distinct score threshold (highest score first)."""
    order = np.argsort(-score, kind="mergesort")
    y, treated, score = y[order], treated[order].astype(bool), score[order]
    # the last position of each run of equal scores: ties are taken together
    ends = np.r_[np.flatnonzero(np.diff(score)), score.size - 1]
    n_t = np.cumsum(treated)[ends]
    n_c = np.cumsum(~treated)[ends]
    y_t = np.cumsum(y * treated)[ends]
    y_c = np.cumsum(y * ~treated)[ends]
    scaled = np.divide(y_c * n_t, n_c, out=np.zeros(n_c.shape, dtype=np.float64), where=n_c > 0)
    q = y_t - scaled
    return np.r_[0.0, n_t + n_c].astype(np.float64), np.r_[0.0, q]


def _area(x: np.ndarray, q: np.ndarray) -> float:
    return float(np.sum((x[1:] - x[:-1]) * (q[1:] + q[:-1]) / 2.0))


def qini_coefficient(y: np.ndarray, treated: np.ndarray, score: np.ndarray) -> float | None:
    """Area between the Qini curve and the random line, over the same area for the perfect
    ranking (responders treated first, control responders last). None when undefined."""
    y = np.asarray(y, dtype=np.float64)
    treated = np.asarray(treated, dtype=bool)
    if treated.all() or not treated.any():
        return None
    x, q = qini_curve(y, treated, np.asarray(score, dtype=np.float64))
    perfect = y * treated - y * ~treated
    xp, qp = qini_curve(y, treated, perfect)
    random = x[-1] * q[-1] / 2.0
    denominator = _area(xp, qp) - random
    if denominator <= 0:
        return None
    return (_area(x, q) - random) / denominator


def uplift_at_k(y: np.ndarray, treated: np.ndarray, score: np.ndarray, k: float) -> float | None:
    """Response rate of the treated minus that of the control among the top ``k`` share of all
    customers by ``score`` (None when one group is absent there)."""
    treated = np.asarray(treated, dtype=bool)
    n_top = int(np.ceil(k * y.size))
    top = np.argsort(-np.asarray(score, dtype=np.float64), kind="mergesort")[:n_top]
    t, yt = treated[top], y[top]
    if not t.any() or t.all():
        return None
    return float(yt[t].mean() - yt[~t].mean())


# ---- data -----------------------------------------------------------------------------------
def control_matrix(
    prepared: PreparedData, labels: np.ndarray, rows: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Model inputs (the response model's columns) and targets of the control rows; the
    campaign column is missing (NaN) on rows that name no campaign."""
    camp = prepared.controls["campaign_idx"].to_numpy()
    X, y = response_matrix(prepared, labels, rows, responses=prepared.controls)
    picked = camp if rows is None else camp[rows]
    X[picked < 0, -1] = np.nan
    return X, y


def split_control(
    prepared: PreparedData, config: ResponseModelConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train rows, held-out rows) of the control rows, and the held-out mask over customers.

    A customer on either side of the response model's split stays on that side; control-arm
    customers the response model never saw are split by the same fraction.
    """
    n_customers = len(prepared.customers)
    side = np.full(n_customers, -1, dtype=np.int8)
    response_customers = prepared.responses["customer_idx"].to_numpy()
    train_rows, valid_rows = split_customers(response_customers, config)
    side[response_customers[train_rows]] = 0
    side[response_customers[valid_rows]] = 1
    rng = np.random.default_rng(config.seed + 1)
    fresh = side < 0
    side[fresh] = (rng.random(int(fresh.sum())) < config.validation_fraction).astype(np.int8)
    control_customers = prepared.controls["customer_idx"].to_numpy()
    control_side = side[control_customers]
    return (
        np.flatnonzero(control_side == 0),
        np.flatnonzero(control_side == 1),
        side == 1,
    )


def skip_reason(prepared: PreparedData, config: UpliftConfig) -> str | None:
    """Why no uplift model is fitted (None when one is)."""
    if not config.enabled:
        return "disabled by configuration (uplift.enabled = false)"
    if prepared.controls is None or not len(prepared.controls):
        return "the response history has no control rows (no treated column or control arm)"
    if len(prepared.controls) < config.min_control_rows:
        return (
            f"{len(prepared.controls)} control rows, fewer than uplift.min_control_rows="
            f"{config.min_control_rows}"
        )
    y = prepared.controls["responded"].to_numpy()
    if np.all(y == y[0]):
        return f"every control-arm response is {int(y[0])}: there is nothing to learn"
    return None


# ---- fitting --------------------------------------------------------------------------------
def fit_control_model(
    prepared: PreparedData, labels: np.ndarray, config: ResponseModelConfig
) -> tuple[lgb.Booster, dict[str, Any], np.ndarray]:
    """The LightGBM model of responding without the campaign, with the response model's
    parameters, early-stopped on held-out control customers; its facts for the manifest; and
    the check sample its compiled trees must reproduce (from the held-out control rows)."""
    train_rows, valid_rows, _ = split_control(prepared, config)
    if not len(valid_rows) or not len(train_rows):
        raise ValueError("the control rows cannot be split into training and held-out customers")
    X_train, y_train = control_matrix(prepared, labels, train_rows)
    X_valid, y_valid = control_matrix(prepared, labels, valid_rows)
    columns = model_feature_names(prepared.schema.response_model_columns)
    n_num = len(prepared.schema.response_features)
    train_set = lgb.Dataset(
        X_train,
        y_train,
        feature_name=columns,
        categorical_feature=list(range(n_num, len(columns))),
        free_raw_data=True,
    )
    valid_set = lgb.Dataset(X_valid, y_valid, reference=train_set)
    fit = fit_early_stopped(
        lightgbm_params(config, len(y_train)), train_set, valid_set, config, "control model"
    )
    best = fit.best
    trimmed = fit.trimmed()
    info = {
        "best_iteration": int(best),
        "n_train_rows": len(y_train),
        "n_valid_rows": len(y_valid),
        "base_rate": float(y_train.mean()),
        "campaign_specific": bool((prepared.controls["campaign_idx"].to_numpy() >= 0).any()),
    }
    return trimmed, info, compiled_trees.check_sample(X_valid, config.seed)


def evaluate_uplift(
    prepared: PreparedData,
    labels: np.ndarray,
    treated_model: lgb.Booster,
    control_model: lgb.Booster,
    held_out: np.ndarray,
) -> dict[str, Any]:
    """Per campaign, on held-out customers: observed uplift, Qini coefficient and uplift at the
    top 10/20/30% ranking by predicted uplift vs by response probability."""
    sent = prepared.responses
    controls = prepared.controls
    sent_rows = np.flatnonzero(held_out[sent["customer_idx"].to_numpy()])
    control_rows = np.flatnonzero(held_out[controls["customer_idx"].to_numpy()])
    X_sent, y_sent = response_matrix(prepared, labels, sent_rows)
    X_ctrl, y_ctrl = control_matrix(prepared, labels, control_rows)
    ctrl_campaign = controls["campaign_idx"].to_numpy()[control_rows]
    per_campaign: dict[str, Any] = {}
    for j, campaign in enumerate(prepared.campaigns):
        t_rows = X_sent[:, -1] == j
        c_rows = (ctrl_campaign == j) | (ctrl_campaign < 0)
        X = np.vstack([X_sent[t_rows], X_ctrl[c_rows]])
        X[:, -1] = j
        y = np.r_[y_sent[t_rows], y_ctrl[c_rows]]
        treated = np.r_[np.ones(int(t_rows.sum()), bool), np.zeros(int(c_rows.sum()), bool)]
        entry: dict[str, Any] = {
            "n_treated": int(treated.sum()),
            "n_control": int((~treated).sum()),
        }
        if not treated.any() or treated.all():
            entry["undefined"] = "no held-out customers in one of the arms"
            per_campaign[campaign.id] = entry
            continue
        p1 = treated_model.predict(X)
        p0 = control_model.predict(X)
        scores = {"uplift": p1 - p0, "response": p1}
        entry["observed_uplift"] = float(y[treated].mean() - y[~treated].mean())
        entry["predicted_uplift"] = float((p1 - p0).mean())
        entry["qini"] = {name: qini_coefficient(y, treated, s) for name, s in scores.items()}
        entry["uplift_at"] = {
            f"{round(k * 100)}%": {
                name: uplift_at_k(y, treated, s, k) for name, s in scores.items()
            }
            for k in TOP_SHARES
        }
        per_campaign[campaign.id] = entry
    return {"per_campaign": per_campaign, "summary": summarise(per_campaign)}


def summarise(per_campaign: dict[str, Any]) -> dict[str, Any]:
    """Mean of each figure over the campaigns where it is defined."""

    def mean(values: list[float | None]) -> float | None:
        defined = [v for v in values if v is not None]
        return float(np.mean(defined)) if defined else None

    entries = [e for e in per_campaign.values() if "qini" in e]
    out: dict[str, Any] = {
        "qini": {name: mean([e["qini"][name] for e in entries]) for name in ("uplift", "response")}
    }
    for k in TOP_SHARES:
        key = f"{round(k * 100)}%"
        out[f"uplift_at_{key}"] = {
            name: mean([e["uplift_at"][key][name] for e in entries])
            for name in ("uplift", "response")
        }
    return out


def measured_lift(
    prepared: PreparedData, labels: np.ndarray, segment_names: list[str]
) -> dict[str, list[dict[str, Any]]]:
    """Observed lift (treated minus control response rate) per campaign and segment over the
    whole history, with a 95% normal-approximation interval: what the randomized arms measured,
    independent of any model."""
    sent, controls = prepared.responses, prepared.controls
    s_seg = labels[sent["customer_idx"].to_numpy()]
    s_camp = sent["campaign_idx"].to_numpy()
    s_y = sent["responded"].to_numpy().astype(np.float64)
    c_seg = labels[controls["customer_idx"].to_numpy()]
    c_camp = controls["campaign_idx"].to_numpy()
    c_y = controls["responded"].to_numpy().astype(np.float64)
    out: dict[str, list[dict[str, Any]]] = {}
    for j, campaign in enumerate(prepared.campaigns):
        rows = []
        for s, name in enumerate(segment_names):
            t = (s_camp == j) & (s_seg == s)
            c = ((c_camp == j) | (c_camp < 0)) & (c_seg == s)
            n_t, n_c = int(t.sum()), int(c.sum())
            entry: dict[str, Any] = {"segment": name, "n_treated": n_t, "n_control": n_c}
            if n_t and n_c:
                r_t, r_c = float(s_y[t].mean()), float(c_y[c].mean())
                se = float(np.sqrt(r_t * (1 - r_t) / n_t + r_c * (1 - r_c) / n_c))
                lift = r_t - r_c
                entry.update(
                    treated_rate=r_t,
                    control_rate=r_c,
                    lift=lift,
                    interval=[lift - 1.96 * se, lift + 1.96 * se],
                )
            rows.append(entry)
        out[campaign.id] = rows
    return out


def fit_uplift_model(
    prepared: PreparedData,
    labels: np.ndarray,
    response: ResponseModel | None,
    config: UpliftConfig,
    model_config: ResponseModelConfig,
    segment_names: list[str] | None = None,
) -> UpliftModel | None:
    """Fit the control model and evaluate the uplift ranking; None when there is no control
    arm, no response model, or uplift is disabled (the reason is logged)."""
    reason = "no response model" if response is None else skip_reason(prepared, config)
    if reason is not None:
        if prepared.controls is not None:
            log.warning("uplift model skipped: %s", reason)
        return None
    control, info, check_rows = fit_control_model(prepared, labels, model_config)
    _, _, held_out = split_control(prepared, model_config)
    evaluation = evaluate_uplift(prepared, labels, response.booster, control, held_out)
    summary = evaluation["summary"]
    log.info(
        "uplift model: control best round %d, mean held-out Qini %s (response ranking %s)",
        info["best_iteration"],
        _fmt(summary["qini"]["uplift"]),
        _fmt(summary["qini"]["response"]),
    )
    names = segment_names or [str(s) for s in range(int(labels.max()) + 1)]
    evaluation["measured_lift"] = measured_lift(prepared, labels, names)
    return UpliftModel(
        control=control, metrics={"control_model": info, **evaluation}, check_rows=check_rows
    )


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
