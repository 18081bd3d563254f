"""Fixtures the scoring tests share: a bundle root with compiled trees, and a copy to tamper with."""

from __future__ import annotations

import shutil

import pytest
from bundle_builder import build_bundle


@pytest.fixture(scope="module")
def compiled_root(tmp_path_factory):
    """A bundle root (version ``v-compiled``) whose response model is compiled, once per module."""
    root = tmp_path_factory.mktemp("compiled")
    build_bundle(root, n=2000, seed=3, version="v-compiled", compiled=True)
    return root


@pytest.fixture
def compiled_copy(compiled_root, tmp_path):
    """A writable copy of the compiled bundle root, for tests that tamper with it."""
    shutil.copytree(compiled_root, tmp_path / "root", symlinks=True)
    return tmp_path / "root"
