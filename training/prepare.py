"""The data stages in order: load, validate, build the feature schema, produce PreparedData."""

from __future__ import annotations

import dataclasses
import hashlib
import logging

import numpy as np
import pandas as pd
from sklearn.impute import SimpleImputer

from scoring.clv import CLV_FEATURES
from scoring.conditions import ConditionError
from scoring.conditions import check_features as check_condition
from scoring.features import (
    CategoricalInput,
    DerivedFeature,
    FeatureSchema,
    NumericInput,
    frame_to_raw,
    numeric_matrix,
)
from training.config import TrainConfig
from training.load import LoadedData, customer_ids, load_tables
from training.prepared import PreparedData
from training.validate import (
    TableError,
    check_campaigns,
    check_columns,
    check_features,
    check_ids,
    check_log_values,
    check_row_count,
    collapse_duplicate_responses,
    decide_log_features,
    locate_responses,
    positions,
    response_values,
)

logger = logging.getLogger("training")

#: most frequent categories kept per categorical column; rarer ones read as unknown
MAX_CATEGORIES = 100


def categories_of(values: pd.Series, limit: int = MAX_CATEGORIES) -> tuple[str, ...]:
    """Categories of a column as text: most frequent first, ties by name, at most ``limit``."""
    return categories_from_counts(values.dropna().astype("string").value_counts(), limit)


def categories_from_counts(counts: pd.Series, limit: int = MAX_CATEGORIES) -> tuple[str, ...]:
    """:func:`categories_of` from the counts of each value (index = value as text)."""
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return tuple(str(name) for name, _ in ordered[:limit])


def build_frame(loaded: LoadedData, config: TrainConfig, columns: dict) -> pd.DataFrame:
    """The customer frame of PreparedData: index = id (str), numeric inputs then categoricals."""
    ids = customer_ids(loaded.customers, config)
    frame = pd.DataFrame(columns, index=pd.Index(ids, name="customer_id"))
    for column in config.features.categorical:
        frame[column] = loaded.customers[column].astype("string").to_numpy()
    return frame


def build_schema(
    config: TrainConfig, frame: pd.DataFrame, medians: np.ndarray, numeric_names: list[str]
) -> FeatureSchema:
    """The feature schema without log features (decided once the derived values exist)."""
    ranges = {}
    for column in config.features.numeric:
        values = frame[column].to_numpy(dtype=np.float64)
        ranges[column] = (
            not bool(np.isnan(values).any()),
            float(np.nanmin(values)),
            float(np.nanmax(values)),
        )
    categories = {column: categories_of(frame[column]) for column in config.features.categorical}
    return schema_from_stats(config, ranges, medians, numeric_names, categories)


def schema_from_stats(
    config: TrainConfig,
    ranges: dict[str, tuple[bool, float, float]],
    medians: np.ndarray,
    numeric_names: list[str],
    categories: dict[str, tuple[str, ...]],
) -> FeatureSchema:
    """The feature schema from per-column statistics: ``ranges`` maps each numeric input to
    (required = no value missing, observed minimum, observed maximum); ``categories`` each
    categorical column to its categories (both engines build the schema here)."""
    feats = config.features
    inputs = []
    for column, median in zip(feats.numeric, medians, strict=True):
        required, low, high = ranges[column]
        inputs.append(
            NumericInput(
                name=column,
                kind=feats.kinds.get(column, "numeric"),
                required=required,
                median=float(median),
                observed_min=low,
                observed_max=high,
            )
        )
    derived = tuple(
        DerivedFeature(name=d.name, numerator=d.numerator, denominator=d.denominator, fill=d.fill)
        for d in feats.derived
    )
    categoricals = tuple(
        CategoricalInput(name=column, categories=categories[column]) for column in feats.categorical
    )
    return FeatureSchema(
        inputs=tuple(inputs),
        derived=derived,
        categoricals=categoricals,
        cluster_features=tuple(feats.cluster or numeric_names),
        response_features=tuple(feats.response or numeric_names),
        id_column=config.data.id_column or "customer_id",
    )


def map_responses(
    responses: pd.DataFrame, customer_index: pd.Index, campaigns: list, config: TrainConfig
) -> pd.DataFrame:
    """Long responses -> int columns customer_idx, campaign_idx, responded (0/1)."""
    return map_responses_with_warnings(responses, customer_index, campaigns, config)[0]


def map_responses_with_warnings(
    responses: pd.DataFrame, customer_index: pd.Index, campaigns: list, config: TrainConfig
) -> tuple[pd.DataFrame, list[str]]:
    """:func:`map_responses`, also returning the warnings (duplicate pairs collapsed)."""
    customer_idx, campaign_idx = locate_responses(responses, customer_index, campaigns)
    responded = np.empty(len(responses), dtype=np.int8)
    # Value errors name the column they came from (a wide column or the long responded column).
    for column, rows in responses.groupby("source_column", sort=False).indices.items():
        responded[rows] = response_values(
            responses["responded"].iloc[rows].reset_index(drop=True), config, str(column)
        )
    mapped, dropped = collapse_duplicate_responses(
        pd.DataFrame(
            {"customer_idx": customer_idx, "campaign_idx": campaign_idx, "responded": responded}
        )
    )
    warnings = []
    if dropped:
        first = responses.duplicated(["customer_id", "campaign_id"]).to_numpy()
        pos = int(np.argmax(first))
        warnings.append(
            f"responses: {dropped} duplicate (customer, campaign) record(s) collapsed, keeping "
            f"the maximum (responded if any record says so); e.g. customer "
            f"{responses['customer_id'].iloc[pos]!s}, campaign {responses['campaign_id'].iloc[pos]!s}"
        )
    return mapped, warnings


def check_condition_features(campaigns: list, schema: FeatureSchema) -> None:
    """Every campaign condition names a feature of the schema, compared the right way."""
    for campaign in campaigns:
        for condition in campaign.parsed_conditions:
            try:
                check_condition(condition, schema.numeric_names, schema.categorical_names)
            except ConditionError as exc:
                raise TableError(
                    f"condition {condition.text!r}: {exc}", campaign=campaign.id
                ) from None


def split_control_rows(
    responses: pd.DataFrame, config: TrainConfig
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """(sent rows, control rows or None) of a long history.

    A control row is one whose ``treated`` value is 0, or whose campaign was one of the
    configured ``control_values`` (read as NA): a customer held out, whose outcome is what
    happens without the campaign. A row marked treated but naming no campaign is refused.
    """
    cfg = config.responses
    if cfg is None or (cfg.treated_column is None and not cfg.control_values):
        return responses, None
    no_campaign = responses["campaign_id"].isna().to_numpy()
    if "treated" in responses.columns:
        treated = response_values(
            responses["treated"].reset_index(drop=True), config, str(cfg.treated_column)
        ).astype(bool)
        sent_without_campaign = treated & no_campaign
        if sent_without_campaign.any():
            pos = int(np.argmax(sent_without_campaign))
            raise TableError(
                f"{int(sent_without_campaign.sum())} row(s) marked as sent but naming no "
                f"campaign, first at row {pos}; mark control rows with "
                f"{cfg.treated_column} = 0 or list their value in responses.control_values",
                column=cfg.campaign_column,
            )
        control = ~treated
    else:
        control = no_campaign
    sent = responses.loc[~control].reset_index(drop=True)
    held = responses.loc[control].drop(columns=["treated"], errors="ignore").reset_index(drop=True)
    return sent.drop(columns=["treated"], errors="ignore"), held


def map_control_rows(
    control: pd.DataFrame, customer_index: pd.Index, campaigns: list, config: TrainConfig
) -> pd.DataFrame:
    """Control rows -> int columns customer_idx, campaign_idx (-1: no campaign, the control of
    every campaign), responded (0/1); duplicates collapsed like sent rows."""
    campaign_idx = np.full(len(control), -1, dtype=np.int64)
    named = control["campaign_id"].notna().to_numpy()
    if named.any():
        pool = [c.id for c in campaigns]
        campaign_idx[named] = positions(control["campaign_id"][named], pool)
        unknown = named & (campaign_idx < 0)
        if unknown.any():
            raise TableError(
                f"{int(unknown.sum())} control row(s) for a campaign that is not in the pool "
                f"(pool: {', '.join(sorted(pool))})",
                campaign=str(control["campaign_id"].iloc[int(np.argmax(unknown))]),
            )
    customer_idx = positions(control["customer_id"], customer_index)
    if (customer_idx < 0).any():
        example = control["customer_id"].iloc[int(np.argmax(customer_idx < 0))]
        raise TableError(
            f"{int((customer_idx < 0).sum())} control row(s) for customer(s) not in the "
            f"customer table, e.g. {example!s}",
            column="customer_id",
        )
    responded = response_values(
        control["responded"].reset_index(drop=True), config, config.responses.responded_column
    )
    mapped, _ = collapse_duplicate_responses(
        pd.DataFrame(
            {"customer_idx": customer_idx, "campaign_idx": campaign_idx, "responded": responded}
        )
    )
    return mapped


def fingerprint(loaded: LoadedData, config: TrainConfig) -> dict:
    """SHA-256 over the bytes of every source file (the rows read, for a database source) and
    the inline campaigns, with the table's rows, columns and the sources."""
    digest = hashlib.sha256()
    for source in loaded.sources:
        if source in loaded.digests:
            digest.update(loaded.digests[source].encode())
            continue
        with open(source, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    digest.update(repr(config.campaigns.inline).encode())
    return {
        "sha256": digest.hexdigest(),
        "rows": len(loaded.customers),
        "columns": [str(c) for c in loaded.customers.columns],
        "sources": list(loaded.sources),
    }


def prepare(config: TrainConfig) -> PreparedData:
    """Load and validate the inputs and turn them into matrices in the bundle's feature order.

    Raises :class:`~training.validate.TableError` naming the column (or campaign) and the problem
    when the inputs cannot be trained on.
    """
    loaded = load_tables(config)
    table = loaded.customers
    logger.info("validating %d customers x %d columns", len(table), table.shape[1])
    check_columns(table, config)
    # before the column checks: with one row every column is "constant", which misleads
    check_row_count(len(table), config)
    check_ids(table, config)
    columns = check_features(table, config)
    check_campaigns(loaded.campaigns)

    frame = build_frame(loaded, config, columns)
    feats = config.features
    raw_inputs = frame[list(feats.numeric)].to_numpy(dtype=np.float64)
    imputer = SimpleImputer(strategy="median").fit(raw_inputs)
    numeric_names = list(feats.numeric) + [d.name for d in feats.derived]
    schema = build_schema(config, frame, imputer.statistics_, numeric_names)
    raw, codes = frame_to_raw(frame, schema)
    numeric = numeric_matrix(raw, schema)

    # Skew is measured on observed values for inputs and on the derived values themselves.
    observed = {name: columns[name] for name in feats.numeric}
    for j, d in enumerate(schema.derived, start=len(schema.inputs)):
        observed[d.name] = numeric[:, j]
    log_features = decide_log_features(observed, schema.cluster_features, config)
    check_log_values(numeric, numeric_names, log_features)
    schema = dataclasses.replace(schema, log_features=log_features)
    check_condition_features(loaded.campaigns, schema)
    logger.info(
        "features: %d numeric (%d derived), %d categorical; log1p on %s",
        len(numeric_names),
        len(schema.derived),
        len(schema.categoricals),
        ", ".join(log_features) or "none",
    )

    responses = None
    controls = None
    campaigns = loaded.campaigns
    warnings: list[str] = list(loaded.warnings)
    if loaded.responses is not None:
        sent, held = split_control_rows(loaded.responses, config)
        if held is not None and len(held):
            controls = map_control_rows(held, frame.index, campaigns, config)
            logger.info(
                "control arm: %d rows, %.1f%% positive",
                len(controls),
                100.0 * controls["responded"].mean(),
            )
        responses, response_warnings = map_responses_with_warnings(
            sent, frame.index, campaigns, config
        )
        warnings += response_warnings
        for warning in response_warnings:
            logger.warning("%s", warning)
        logger.info(
            "responses: %d rows over %d campaigns, %.1f%% positive",
            len(responses),
            responses["campaign_idx"].nunique(),
            100.0 * responses["responded"].mean(),
        )
    clv_features = None
    if config.clv.enabled:
        for column in CLV_FEATURES:
            if column not in table.columns:
                raise TableError(
                    "clv.enabled needs this per-customer feature (built from "
                    "[data.transactions], or a column of the customer table)",
                    column=column,
                )
        clv_features = pd.DataFrame(
            {c: pd.to_numeric(table[c], errors="coerce").to_numpy() for c in CLV_FEATURES},
            index=frame.index,
        )
        bad = clv_features.isna().any(axis=1) | (clv_features < 0).any(axis=1)
        if bad.any():
            pos = int(np.argmax(bad.to_numpy()))
            raise TableError(
                f"clv.enabled: customer {frame.index[pos]} has a missing or negative value in "
                + ", ".join(CLV_FEATURES)
            )
    truth = None
    if config.data.truth_column is not None:
        truth = table[config.data.truth_column].to_numpy()
    return PreparedData(
        pool=loaded.pool,
        customers=frame,
        schema=schema,
        imputer=imputer,
        numeric=numeric,
        codes=codes,
        campaigns=campaigns,
        responses=responses,
        controls=controls,
        fingerprint=fingerprint(loaded, config),
        truth=truth,
        warnings=tuple(warnings),
        transactions=loaded.transactions,
        clv_features=clv_features,
    )
