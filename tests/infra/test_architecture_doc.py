"""docs/architecture.md stays true: every module it names exists, every module is named."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "architecture.md"
#: the packages whose every module the document must name
PACKAGES = ("scoring", "api", "training", "stream")
#: a module path as the document writes it: `api/routes.py`, `training/engines/dask.py`
NAMED = re.compile(r"`((?:scoring|api|training|stream|bench)/[\w/]+\.py)`")


def _named() -> set[str]:
    return set(NAMED.findall(DOC.read_text(encoding="utf-8")))


def _only_a_docstring(path: Path) -> bool:
    body = ast.parse(path.read_text()).body
    return len(body) <= 1 and all(isinstance(n, ast.Expr) for n in body)


def test_every_module_the_document_names_exists():
    missing = sorted(name for name in _named() if not (ROOT / name).is_file())
    assert missing == [], f"docs/architecture.md names modules that do not exist: {missing}"


def test_every_module_is_named_in_the_document():
    modules = {
        str(p.relative_to(ROOT))
        for pkg in PACKAGES
        for p in (ROOT / pkg).rglob("*.py")
        if not _only_a_docstring(p)
    }
    unnamed = sorted(modules - _named())
    assert unnamed == [], (
        f"docs/architecture.md does not name {unnamed}: add a row `path` | what it holds"
    )


def test_the_check_reads_backticked_paths():
    assert NAMED.findall("see `api/routes.py` and `training/engines/dask.py`, not api/x.py") == [
        "api/routes.py",
        "training/engines/dask.py",
    ]
