"""hadolint on the Dockerfile and shellcheck on the scripts, when the linters are installed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted([*ROOT.glob("scripts/*.sh"), *ROOT.glob("tests/e2e/*.sh"), ROOT / ".ci" / "run"])


def _tool(name: str) -> str:
    """The linter next to this interpreter (installed by requirements-dev.txt) or on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (pip install -r requirements-dev.txt)")
    return found


def test_hadolint_passes_on_the_dockerfile():
    """The Dockerfile has no hadolint finding at the configured threshold."""
    proc = subprocess.run(
        [_tool("hadolint"), "--config", "deploy/hadolint.yaml", "Dockerfile"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_shellcheck_passes_on_every_script():
    """Every shell script (set-up, run, test, CI, curl integration) passes shellcheck."""
    assert len(SCRIPTS) >= 5
    proc = subprocess.run(
        [_tool("shellcheck"), "-x", *map(str, SCRIPTS)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_scripts_are_executable_and_strict():
    """Each entry-point script can be run directly and stops on the first error."""
    for script in SCRIPTS:
        text = script.read_text(encoding="utf-8")
        if text.startswith("# shellcheck shell=bash"):
            continue  # sourced libraries, not entry points
        assert script.stat().st_mode & 0o111, f"{script} is not executable"
        assert text.startswith("#!/usr/bin/env bash"), script
        assert "set -euo pipefail" in text, script
