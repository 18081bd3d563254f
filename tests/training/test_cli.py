"""The command line: generate -> train -> list -> verify -> score, and errors as exit code 2."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from scoring.bundle import load_bundle, load_current
from training.cli import main

ROOT = Path(__file__).resolve().parents[2]
DEMO_CONFIG = str(ROOT / "examples" / "demo.toml")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Demo data generated and one bundle trained through the CLI."""
    base = tmp_path_factory.mktemp("cli")
    data, out = base / "data", base / "artifacts"
    assert main(["-q", "generate", "--out", str(data), "--customers", "3000", "--seed", "3"]) == 0
    args = ["train", "--config", DEMO_CONFIG, "--data-dir", str(data), "--output", str(out)]
    assert main([*args, "--k-max", "7", "--seed", "5", "--name", "cli-test", "--quiet"]) == 0
    return data, out


def test_train_prints_the_summary(workspace, capsys):
    data, out = workspace
    code = main(
        [
            "-q",
            "train",
            "--config",
            DEMO_CONFIG,
            "--data-dir",
            str(data),
            "--output",
            str(out),
            "--k",
            "4",
        ]
    )
    text = capsys.readouterr().out
    assert code == 0
    assert "k = 4" in text and "set by configuration" in text
    assert "response model: held-out AUC" in text
    assert str(out) in text
    bundle = load_current(out)
    assert bundle.n_segments == 4
    assert bundle.manifest["config"]["segmentation"]["k"] == 4


def test_flags_reach_the_manifest(workspace):
    _, out = workspace
    versions = sorted(p for p in out.iterdir() if (p / "manifest.json").is_file())
    first = load_bundle(versions[0])
    assert first.manifest["name"] == "cli-test"
    assert first.manifest["config"]["segmentation"]["k_max"] == 7
    assert first.manifest["config"]["response_model"]["seed"] == 5


def test_list_marks_the_current_version(workspace, capsys):
    _, out = workspace
    assert main(["list", "--root", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    current = (out / "current").resolve().name
    assert f"* {current}" in lines
    assert len(lines) >= 1


def test_verify_accepts_a_good_bundle_and_refuses_a_tampered_one(workspace, tmp_path, capsys):
    _, out = workspace
    assert main(["verify", str(out)]) == 0
    assert capsys.readouterr().out.startswith("ok:")
    copy = tmp_path / "copy"
    shutil.copytree((out / "current").resolve(), copy)
    with open(copy / "profiles.json", "a") as fh:
        fh.write(" ")
    assert main(["verify", str(copy)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "profiles.json" in err and "Traceback" not in err


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_score_writes_segments_and_campaign_scores(workspace, tmp_path, suffix):
    data, out = workspace
    customers = pd.read_parquet(data / "customers.parquet").head(500)
    source = tmp_path / f"in{suffix}"
    if suffix == ".csv":
        customers.to_csv(source, index=False)
    else:
        customers.to_parquet(source, index=False)
    target = tmp_path / f"out{suffix}"
    args = ["-q", "score", "--bundle", str(out), "--input", str(source), "--output", str(target)]
    assert main([*args, "--batch-size", "128"]) == 0
    scored = pd.read_csv(target) if suffix == ".csv" else pd.read_parquet(target)
    bundle = load_current(out)
    assert len(scored) == 500
    assert scored["customer_id"].tolist() == customers["customer_id"].tolist()
    assert set(scored["segment_name"]) <= set(bundle.segment_names)
    for c in bundle.campaigns:
        assert f"p_{c.id}" in scored.columns
    assert set(scored["best_campaign"].dropna()) <= {c.id for c in bundle.campaigns}
    # batches do not change the answer
    whole = tmp_path / f"whole{suffix}"
    assert (
        main(["-q", "score", "--bundle", str(out), "--input", str(source), "--output", str(whole)])
        == 0
    )
    again = pd.read_csv(whole) if suffix == ".csv" else pd.read_parquet(whole)
    pd.testing.assert_frame_equal(scored, again)


def test_score_refuses_a_file_without_the_features(workspace, tmp_path, capsys):
    _, out = workspace
    source = tmp_path / "in.csv"
    pd.DataFrame({"customer_id": ["a"], "total_spend": [1.0]}).to_csv(source, index=False)
    code = main(
        [
            "-q",
            "score",
            "--bundle",
            str(out),
            "--input",
            str(source),
            "--output",
            str(tmp_path / "o.csv"),
        ]
    )
    assert code == 2
    assert "missing columns" in capsys.readouterr().err
    assert not (tmp_path / "o.csv").exists()


def test_missing_config_is_an_error_without_traceback(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "absent.toml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "absent.toml" in err and "Traceback" not in err


def test_invalid_config_values_are_errors(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('[data]\ncustomers = "x.csv"\n[segmentation]\nk_min = 5\nk_max = 3\n')
    assert main(["train", "--config", str(bad)]) == 2
    assert "k_max" in capsys.readouterr().err


def test_a_bad_table_is_an_error_naming_the_column(tmp_path, capsys):
    table = tmp_path / "customers.csv"
    pd.DataFrame({"customer_id": ["a", "b", "c"], "spend": [1.0, 2.0, 3.0]}).to_csv(
        table, index=False
    )
    config = tmp_path / "c.toml"
    config.write_text(f'[data]\ncustomers = "{table}"\n[features]\nnumeric = ["spend", "orders"]\n')
    out = tmp_path / "artifacts"
    assert main(["-q", "train", "--config", str(config), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "orders" in err
    assert not out.exists() or not any(out.iterdir())


def test_bad_flag_values_are_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--config", "x.toml", "--k", "0"])
    assert exc.value.code == 2
    assert "should be >= 1" in capsys.readouterr().err


def test_module_entry_point_help_lists_every_command():
    out = subprocess.run(
        [sys.executable, "-m", "training", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for command in ("train", "generate", "score", "list", "verify", "report"):
        assert command in out


@pytest.mark.parametrize("command", ["train", "generate", "score", "list", "verify", "report"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "usage:" in capsys.readouterr().out
