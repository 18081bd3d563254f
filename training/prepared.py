"""The prepared training data handed from the data stages to the fitting stages."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from scoring.campaigns import Campaign, PoolSettings
from scoring.features import FeatureSchema


@dataclass(frozen=True)
class PreparedData:
    """A validated customer table, turned into matrices in the bundle's feature order.

    ``customers`` is never modified by later stages.
    """

    #: index = customer id (str); columns = numeric inputs and categoricals, raw (NaN kept)
    customers: pd.DataFrame
    #: medians, kinds, observed ranges, log features and response features decided
    schema: FeatureSchema
    #: sklearn SimpleImputer(strategy="median") fitted on the numeric inputs
    imputer: object
    #: (n, n_numeric) imputed inputs followed by derived features (features.numeric_matrix)
    numeric: np.ndarray
    #: (n, n_categoricals) categorical codes as float, NaN for missing/unknown
    codes: np.ndarray
    #: the campaign pool; empty when the table has no response history
    campaigns: list[Campaign]
    #: long form with int columns customer_idx (row position), campaign_idx (pool position),
    #: responded (0/1); None when there is no response history
    responses: pd.DataFrame | None
    #: control rows (customers held out: what happens without a campaign), long form with int
    #: columns customer_idx, campaign_idx (-1: no campaign, the control of every campaign),
    #: responded; None when the history has no control arm
    controls: pd.DataFrame | None
    #: {"sha256": ..., "rows": ..., "columns": [...], "sources": [...]}
    fingerprint: dict
    #: planted segment labels (generated data only), else None
    truth: np.ndarray | None = None
    #: problems found in the inputs that did not stop training (also logged), for the manifest
    warnings: tuple[str, ...] = ()
    #: what building features from transactions did (rows in, kept, dropped by reason, as_of)
    transactions: dict | None = None
    #: frequency, recency_days, tenure_days, monetary_avg per customer (row order of
    #: ``customers``) when ``[clv]`` is enabled, else None
    clv_features: pd.DataFrame | None = None
    #: the pool file's settings (control-group salt, global holdout share)
    pool: PoolSettings = field(default_factory=PoolSettings)
