"""The layers stay honest: who may import whom, and no import circles between modules.

Read from the source (every import statement, including those inside functions and under
``if TYPE_CHECKING``), so a forbidden import fails here even on a path no other test runs.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("scoring", "api", "training")

#: package -> top-level modules it must never import
FORBIDDEN = {
    "scoring": ("api", "training", "flask", "redis", "werkzeug", "marshmallow"),
    "api": ("training",),
    "training": ("api", "flask", "werkzeug"),
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _imports(node: ast.AST) -> list[str]:
    """Absolute module names an import statement names (``from a import b``: a and a.b)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        return [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
    return []


def _all_imports(path: Path) -> set[str]:
    return {n for node in ast.walk(ast.parse(path.read_text())) for n in _imports(node)}


def _module_level_imports(path: Path) -> set[str]:
    """Imports that run (or are type-checked) when the module is imported: not those inside
    functions, which a caller may defer on purpose."""
    out: set[str] = set()
    stack = list(ast.parse(path.read_text()).body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If | ast.Try):
            for part in ("body", "orelse", "finalbody"):
                stack.extend(getattr(node, part, []))
            for handler in getattr(node, "handlers", []):
                stack.extend(handler.body)
        out.update(_imports(node))
    return out


@pytest.mark.parametrize("package", PACKAGES)
def test_no_layer_imports_what_it_must_not(package):
    bad = []
    for name, path in MODULES.items():
        if name.split(".")[0] != package:
            continue
        for imported in sorted(_all_imports(path)):
            if imported.split(".")[0] in FORBIDDEN[package]:
                bad.append(f"{path.relative_to(ROOT)} imports {imported}")
    assert bad == []


def test_the_check_sees_a_forbidden_import(tmp_path):
    # the scan itself must catch an import hidden inside a function
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from training.cli import main\n    return main\n")
    assert "training.cli" in _all_imports(source)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def _graph(imports_of) -> dict[str, set[str]]:
    graph = {
        name: {m for m in imports_of(path) if m in MODULES and m != name}
        for name, path in MODULES.items()
    }
    # ``from api import views`` names the package too; a submodule importing its own package's
    # ``__init__`` that way is how Python packages work, not a circle
    for name in graph:
        graph[name] -= {p for p in graph if name.startswith(p + ".")}
    return graph


def test_no_import_circles_between_modules():
    # module level (TYPE_CHECKING included): what runs, or is type-checked, at import
    assert _cycles(_graph(_module_level_imports)) == []
    # and through imports deferred into functions, which hide a circle rather than cut it
    assert _cycles(_graph(_all_imports)) == []


def test_the_circle_check_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
