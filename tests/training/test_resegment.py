"""Re-segmentation: matching keeps ids and names, migration adds up, PSI, the promotion gate,
new and vanished segments, the retrain CLI and monthly CDNOW snapshots."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from scoring.bundle import load_assignments, resolve
from training.config import config_from_dict, load_config
from training.pipeline import train
from training.resegment import feature_distribution, feature_psi, gate, psi
from training.snapshots import replay, snapshot_table

ROOT = Path(__file__).resolve().parents[2]
FEATURES = ["spend", "visits", "tenure"]


def customers(sizes=(900, 600, 300), seed=0, spend_factor=1.0) -> pd.DataFrame:
    """Three well-separated groups of customers (ids c0, c1, ...) with positive features."""
    rng = np.random.default_rng(seed)
    centres = np.array([[50.0, 2.0, 100.0], [400.0, 12.0, 700.0], [1500.0, 30.0, 300.0]])
    rows = [c * rng.lognormal(0.0, 0.15, (n, 3)) for c, n in zip(centres, sizes, strict=True)]
    table = pd.DataFrame(np.vstack(rows), columns=FEATURES)
    table["spend"] *= spend_factor
    table.insert(0, "customer_id", [f"c{i}" for i in range(len(table))])
    return table


def make_config(folder: Path, table: pd.DataFrame, name: str, **segmentation):
    path = folder / f"{name}.csv"
    table.to_csv(path, index=False)
    return config_from_dict(
        {
            "name": name,
            "data": {"customers": str(path)},
            "features": {"numeric": FEATURES},
            "segmentation": {"k": 3, "stability_bootstraps": 0} | segmentation,
            "response_model": {"enabled": False},
            "output": {"root": str(folder / "bundles"), "report": False},
        },
        base_dir=folder,
    )


@pytest.fixture
def first(tmp_path):
    """A first bundle (3 segments) and its folder."""
    result = train(make_config(tmp_path, customers(), "m1"))
    return tmp_path, result


def test_psi_is_zero_for_the_same_distribution_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    values = rng.lognormal(0, 1, (5000, 1))
    bins = feature_distribution(values, ["x"])
    assert feature_psi(bins, values, ["x"])["x"] == pytest.approx(0.0, abs=1e-9)
    assert (
        0.0
        < feature_psi(bins, values * 1.1, ["x"])["x"]
        < feature_psi(bins, values * 3, ["x"])["x"]
    )
    assert psi([0.5, 0.5], [0.5, 0.5]) == 0.0


def test_a_refit_maps_one_to_one_and_keeps_ids_and_names(first):
    folder, one = first
    two = train(make_config(folder, customers(seed=1), "m2", previous=str(one.path), seed=7))
    reseg = two.bundle.manifest["resegmentation"]
    pairs = reseg["matching"]["pairs"]
    assert [(p["previous_id"], p["new_id"]) for p in pairs] == [(0, 0), (1, 1), (2, 2)]
    assert reseg["matching"]["new_segments"] == [] and reseg["matching"]["vanished_segments"] == []
    assert two.bundle.segment_names == one.bundle.segment_names
    migration = reseg["migration"]
    assert migration["customers_in_both"] == 1800
    assert np.sum(migration["counts"]) == migration["customers_in_both"]
    assert migration["retention"] > 0.98
    assert reseg["gate"]["passed"] and two.promoted
    assert resolve(folder / "bundles") == two.path


def test_ids_follow_the_segments_when_their_sizes_change_order(first):
    folder, one = first
    # the largest group shrinks below the second: numbering by size alone would swap them
    table = customers(sizes=(400, 600, 300), seed=2)
    two = train(make_config(folder, table, "m2", previous=str(one.path), gate_max_share_shift=0.5))
    matching = two.bundle.manifest["resegmentation"]["matching"]
    pairs = {p["previous_id"]: p["new_id"] for p in matching["pairs"]}
    assert pairs == {0: 0, 1: 1, 2: 2}
    sizes = [p["size"] for p in two.bundle.profiles]
    assert sizes[0] < sizes[1]  # id 0 kept by the (now smaller) segment it described
    ids, segments = load_assignments(two.path)
    assert len(ids) == len(table) and set(segments.tolist()) == {0, 1, 2}


def test_new_and_vanished_segments_are_reported(first):
    folder, one = first
    four = customers(sizes=(900, 600, 300), seed=3)
    extra = pd.DataFrame(
        np.array([[5000.0, 80.0, 20.0]]) * np.random.default_rng(4).lognormal(0, 0.1, (300, 3)),
        columns=FEATURES,
    )
    extra.insert(0, "customer_id", [f"n{i}" for i in range(len(extra))])
    table = pd.concat([four, extra], ignore_index=True)
    two = train(make_config(folder, table, "m2", previous=str(one.path), k=4))
    matching = two.bundle.manifest["resegmentation"]["matching"]
    assert matching["new_segments"] == [3]
    assert len(matching["pairs"]) == 3
    assert two.bundle.manifest["resegmentation"]["migration"]["customers_new"] == 300
    three = train(make_config(folder, customers(seed=5), "m3", previous=str(two.path), k=3))
    vanished = three.bundle.manifest["resegmentation"]["matching"]["vanished_segments"]
    assert [v["previous_id"] for v in vanished] == [3]


def test_the_gate_refuses_a_shifted_month_and_names_the_threshold(first):
    folder, one = first
    config = make_config(
        folder, customers(seed=1, spend_factor=4.0), "shifted", previous=str(one.path)
    )
    refused = train(config)
    gate_result = refused.bundle.manifest["resegmentation"]["gate"]
    assert not refused.promoted and not gate_result["passed"]
    assert any("PSI of spend" in t and "gate_max_psi = 0.5" in t for t in gate_result["tripped"])
    assert resolve(folder / "bundles") == one.path  # current not moved
    assert refused.path.is_dir()  # but the bundle is written
    forced = train(config, force=True)
    assert forced.promoted and forced.bundle.manifest["resegmentation"]["gate"]["forced"]
    assert resolve(folder / "bundles") == forced.path


def test_gate_thresholds_one_by_one():
    shifts = {"0": {"previous": 0.5, "new": 0.2, "shift": -0.3}}
    verdict = gate({"a": 0.1}, shifts, 0.4, max_psi=0.5, max_share_shift=0.2, min_retention=0.5)
    assert not verdict.passed and len(verdict.tripped) == 2
    assert "gate_max_share_shift = 0.2" in verdict.tripped[0]
    assert "gate_min_retention = 0.5" in verdict.tripped[1]
    ignored = gate({"t": 3.0}, {}, None, max_psi=0.5, max_share_shift=0.2, min_retention=0.5,
                   ignore=("t",))  # fmt: skip
    assert ignored.passed


def test_retrain_cli_exit_status_and_force(first):
    folder, _ = first
    shifted = customers(seed=1, spend_factor=4.0)
    shifted.to_csv(folder / "m1.csv", index=False)  # the config's table, now shifted
    config_file = folder / "config.toml"
    config_file.write_text(
        'name = "m"\n[data]\ncustomers = "m1.csv"\n[features]\nnumeric = ["spend", "visits", '
        '"tenure"]\n[segmentation]\nk = 3\nstability_bootstraps = 0\n[response_model]\n'
        "enabled = false\n"
    )
    base = [sys.executable, "-m", "training", "-q", "retrain", "--config", str(config_file),
            "--output", str(folder / "bundles")]  # fmt: skip
    run = subprocess.run([*base, "--previous", "current"], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 3, run.stderr
    assert "REFUSED" in run.stdout and "gate_max_psi" in run.stdout
    run = subprocess.run(
        [*base, "--previous", "current", "--force"], capture_output=True, text=True, cwd=ROOT
    )
    assert run.returncode == 0, run.stderr
    run = subprocess.run(base, capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 2 and "needs --previous" in run.stderr
    run = subprocess.run([*base, "--previous", "nope"], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 2 and "segmentation.previous" in run.stderr


@pytest.mark.realdata
def test_cdnow_monthly_snapshots_keep_ids_and_names(shared_data, tmp_path):
    folder = shared_data / "cdnow_lifetimes"
    names = ["customer_id", "sample_id", "date", "cds", "dollars"]
    sample = pd.read_csv(folder / "CDNOW_sample.txt", sep=r"\s+", header=None, names=names,
                         dtype={"customer_id": str})  # fmt: skip
    sample.to_csv(tmp_path / "sample.csv", index=False)
    config = load_config(ROOT / "examples" / "cdnow_rfm.toml", {"output": str(tmp_path / "out")})
    tx = config.data.transactions
    config = dataclasses.replace(
        config,
        data=dataclasses.replace(
            config.data,
            transactions=dataclasses.replace(
                tx, path=str(tmp_path / "sample.csv"), separator=",", amount_column="dollars"
            ),
        ),
        segmentation=dataclasses.replace(config.segmentation, stability_bootstraps=0),
        output=dataclasses.replace(config.output, report=False),
    )
    snapshots = replay(config, start="1998-02-01", end="1998-05-01")
    assert [s.as_of for s in snapshots] == ["1998-02-01", "1998-03-01", "1998-04-01", "1998-05-01"]
    assert all(s.names == snapshots[0].names for s in snapshots)
    for snap in snapshots[1:]:
        reseg = snap.resegmentation
        pairs = reseg["matching"]["pairs"]
        assert all(p["previous_id"] == p["new_id"] for p in pairs)
        assert len(pairs) == len(snap.sizes)
        migration = reseg["migration"]
        assert np.sum(migration["counts"]) == migration["customers_in_both"] == 2357
        assert migration["retention"] > 0.8
    table = snapshot_table(snapshots)
    assert "1998-05-01" in table and "stayed" in table
    manifest = json.loads((Path(snapshots[-1].path) / "manifest.json").read_text())
    assert manifest["resegmentation"]["previous"] == Path(snapshots[-2].path).name
