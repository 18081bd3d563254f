"""The RFM demo: the demo customers plus the four CLV transaction features, a pool with contact
costs and a campaign for the lapsing RFM groups, and the demo config with RFM and CLV on (the
``rfm_bundle`` fixture and the RFM tests build on it)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


#: the four transaction features the CLV models read, added to the demo customers by ``rfm_bundle``
CLV_COLUMNS = ("frequency", "recency_days", "tenure_days", "monetary_avg")
#: the campaign the ``rfm_bundle`` pool offers to lapsing RFM groups only
WIN_BACK_GROUPS = ["About to Sleep", "At Risk", "Cannot Lose Them", "Hibernating", "Lost"]


def rfm_demo_config(data: Path, root: Path, *, method: str = "rfm", weight_gains: bool = True):
    """The demo config on ``data`` (written by :func:`write_rfm_demo`) with RFM and CLV on."""
    import dataclasses

    from training.config import ClvConfig, RfmConfig, load_config

    config = load_config(
        ROOT / "examples" / "demo.toml", {"data_dir": str(data), "output": str(root)}
    )
    feats = config.features
    return dataclasses.replace(
        config,
        features=dataclasses.replace(
            feats,
            numeric=(*feats.numeric, *CLV_COLUMNS),
            kinds={
                **feats.kinds,
                "frequency": "count",
                "recency_days": "days",
                "tenure_days": "days",
                "monetary_avg": "amount",
            },
        ),
        segmentation=dataclasses.replace(config.segmentation, method=method),
        rfm=RfmConfig(recency="recency_days", frequency="frequency", monetary="total_spend"),
        clv=ClvConfig(enabled=True, weight_gains=weight_gains),
        comparison=dataclasses.replace(config.comparison, sample=500, seeds=1),
    )


def write_rfm_demo(data: Path, n: int = 2000, seed: int = 7) -> None:
    """Demo customers plus the CLV transaction features, and a pool with contact costs and one
    campaign eligible for the lapsing RFM groups only."""
    import json

    import pandas as pd

    from training.generate import write_demo

    write_demo(data, n_customers=n, seed=seed)
    customers = pd.read_parquet(data / "customers.parquet")
    customers["frequency"] = customers["order_count"] + 1
    customers["recency_days"] = customers["days_since_last_purchase"]
    customers["tenure_days"] = (
        customers["days_since_last_purchase"] + 7 * customers["order_count"] + 30
    )
    customers["monetary_avg"] = customers["total_spend"] / customers["frequency"]
    customers.to_parquet(data / "customers.parquet", index=False)
    pool = json.loads((data / "campaigns.json").read_text())
    for campaign in pool:
        campaign["cost"] = 1.0  # a contact costs: CLV weighting then changes which offers pay
        if campaign["id"] == "win_back":
            campaign["eligible_segments"] = WIN_BACK_GROUPS
    (data / "campaigns.json").write_text(json.dumps(pool))
