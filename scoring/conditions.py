"""Campaign conditions on customer features: a small, safe expression language.

A campaign may carry conditions such as ``"total_spend >= 1000"`` or
``"days_since_last_purchase > 90 and mobile_usage >= 0.5"``. Training parses each into a tree
(:func:`parse`), checks every feature it names against the bundle's schema, and stores the tree
in ``campaigns.json``; serving evaluates the tree, one customer at a time in plain Python
(:meth:`Condition.holds`) or a whole batch with numpy (:meth:`Condition.mask`). Nothing is ever
passed to ``eval``. The one-customer path checks a campaign's conditions with one function
generated from their trees (:func:`compile_all`): its source holds only positions, operators
from the grammar's fixed set and names it makes up; every number, text and feature name enters
as a default argument, never as source text.

Grammar: comparisons ``feature OP number`` (or ``number OP feature``; chains such as
``0.2 <= discount_usage < 0.8``) with OP one of ``< <= > >= == !=``; ``feature == "text"``,
``feature != "text"`` and ``feature in ["a", "b"]`` for categorical features; combined with
``and``, ``or``, ``not`` and parentheses. Text is tokenised by Python's own parser (``ast``, in
expression mode: it builds a syntax tree and runs nothing) and converted node by node, so any
construct outside this grammar -- calls, attributes, arithmetic, subscripts -- is refused with
the offending piece named. A comparison with a missing value is false.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

_OPS: dict[type, str] = {
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.Eq: "==",
    ast.NotEq: "!=",
}
_FLIP = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}
_APPLY: dict[str, Callable[[Any, Any], Any]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}
#: longest condition text accepted (a pool file is configuration, not a program)
MAX_LENGTH = 500


class ConditionError(ValueError):
    """A condition cannot be parsed or names something it may not; the message says what."""


@dataclass(frozen=True)
class Condition:
    """A parsed condition: the text as written and its tree (plain JSON-able dicts)."""

    text: str
    tree: dict[str, Any]
    #: the tree compiled into nested closures (:func:`compile_tree`), built once
    _fn: Callable[[Mapping[str, Any]], bool] = field(
        init=False, repr=False, compare=False, default=None
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "_fn", compile_tree(self.tree))

    def __reduce__(self) -> tuple[Any, tuple[str, dict[str, Any]]]:
        # closures do not pickle (process pools, Dask workers): rebuild from text and tree
        return (Condition, (self.text, self.tree))

    @property
    def features(self) -> list[str]:
        """The features the condition reads, in first-use order."""
        out: list[str] = []
        _collect(self.tree, out)
        return out

    def to_dict(self) -> dict[str, Any]:
        """Stored form: {"text", "tree"}."""
        return {"text": self.text, "tree": self.tree}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Condition:
        """Inverse of :meth:`to_dict`."""
        return cls(text=str(data["text"]), tree=dict(data["tree"]))

    def holds(self, values: Mapping[str, Any]) -> bool:
        """True when the condition holds for one customer (feature name -> value)."""
        return self._fn(values)

    def mask(self, columns: Mapping[str, np.ndarray], n: int) -> np.ndarray:
        """(n,) boolean: where the condition holds, over feature columns of a batch."""
        return _mask(self.tree, columns, n)


def _collect(node: Mapping[str, Any], out: list[str]) -> None:
    if "feature" in node and node["feature"] not in out:
        out.append(node["feature"])
    for child in node.get("args", ()):
        _collect(child, out)


def parse(text: str) -> Condition:
    """Parse condition text into a :class:`Condition`; raise :class:`ConditionError`."""
    if not isinstance(text, str) or not text.strip():
        raise ConditionError("a condition must be non-empty text")
    if len(text) > MAX_LENGTH:
        raise ConditionError(f"a condition is at most {MAX_LENGTH} characters, got {len(text)}")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ConditionError(f"cannot parse {text!r}: {exc.msg}") from None
    return Condition(text=text.strip(), tree=_convert(tree.body, text))


def _convert(node: ast.AST, text: str) -> dict[str, Any]:
    if isinstance(node, ast.BoolOp):
        op = "and" if isinstance(node.op, ast.And) else "or"
        return {"op": op, "args": [_convert(v, text) for v in node.values]}
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return {"op": "not", "args": [_convert(node.operand, text)]}
    if isinstance(node, ast.Compare):
        parts = []
        left = node.left
        for op, right in zip(node.ops, node.comparators, strict=True):
            parts.append(_comparison(left, op, right, text))
            left = right
        return parts[0] if len(parts) == 1 else {"op": "and", "args": parts}
    raise ConditionError(f"{_piece(node, text)!r} is not allowed in a condition; {_HINT}")


_HINT = (
    "use comparisons of a feature with a number (<, <=, >, >=, ==, !=), "
    'feature == "text" or feature in ["a", "b"], joined by and/or/not'
)


def _piece(node: ast.AST, text: str) -> str:
    return ast.get_source_segment(text.strip(), node) or type(node).__name__


def _number(node: ast.AST) -> float | None:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        inner = _number(node.operand)
        if inner is None:
            return None
        return -inner if isinstance(node.op, ast.USub) else inner
    if (
        isinstance(node, ast.Constant)
        and isinstance(node.value, int | float)
        and not isinstance(node.value, bool)
    ):
        value = float(node.value)
        return value if math.isfinite(value) else None
    return None


def _comparison(left: ast.AST, op: ast.cmpop, right: ast.AST, text: str) -> dict[str, Any]:
    if isinstance(op, ast.In | ast.NotIn):
        if not isinstance(left, ast.Name):
            raise ConditionError(f"{_piece(left, text)!r}: 'in' needs a feature on its left")
        if not isinstance(right, ast.List | ast.Tuple) or not all(
            isinstance(e, ast.Constant) and isinstance(e.value, str) for e in right.elts
        ):
            raise ConditionError(
                f'{_piece(right, text)!r}: \'in\' needs a list of texts, e.g. ["a", "b"]'
            )
        values = [e.value for e in right.elts]
        node = {"feature": left.id, "cmp": "in", "value": values}
        return {"op": "not", "args": [node]} if isinstance(op, ast.NotIn) else node
    if type(op) not in _OPS:
        raise ConditionError(f"operator in {_piece(right, text)!r} is not allowed; {_HINT}")
    symbol = _OPS[type(op)]
    if isinstance(right, ast.Name) and not isinstance(left, ast.Name):
        left, right, symbol = right, left, _FLIP[symbol]
    if not isinstance(left, ast.Name):
        raise ConditionError(f"{_piece(left, text)!r}: a comparison needs a feature name; {_HINT}")
    number = _number(right)
    if number is not None:
        return {"feature": left.id, "cmp": symbol, "value": number}
    if isinstance(right, ast.Constant) and isinstance(right.value, str) and symbol in ("==", "!="):
        return {"feature": left.id, "cmp": symbol, "value": right.value}
    raise ConditionError(
        f"{_piece(right, text)!r}: compare a feature with a finite number "
        "(or == / != with a text); features cannot be compared with each other"
    )


def _holds(node: Mapping[str, Any], values: Mapping[str, Any]) -> bool:
    op = node.get("op")
    if op == "and":
        return all(_holds(a, values) for a in node["args"])
    if op == "or":
        return any(_holds(a, values) for a in node["args"])
    if op == "not":
        return not _holds(node["args"][0], values)
    v = values.get(node["feature"])
    if v is None or (isinstance(v, float) and v != v):
        return False
    cmp, target = node["cmp"], node["value"]
    if cmp == "in":
        return str(v) in target
    if isinstance(target, str):
        return _APPLY[cmp](str(v), target)
    return bool(_APPLY[cmp](float(v), target))


def compile_tree(node: Mapping[str, Any]) -> Callable[[Mapping[str, Any]], bool]:
    """The tree as nested closures: the same answers as walking it (:func:`_holds`), without
    re-reading each node's operator and operands on every customer (the one-customer path asks
    every campaign's conditions once per request)."""
    op = node.get("op")
    if op in ("and", "or"):
        parts = tuple(compile_tree(a) for a in node["args"])
        if len(parts) == 2:
            a, b = parts
            if op == "and":
                return lambda values: a(values) and b(values)
            return lambda values: a(values) or b(values)
        if op == "and":
            return lambda values: all(p(values) for p in parts)
        return lambda values: any(p(values) for p in parts)
    if op == "not":
        inner = compile_tree(node["args"][0])
        return lambda values: not inner(values)
    name, cmp, target = node["feature"], node["cmp"], node["value"]
    if cmp == "in":
        choices = target

        def member(values: Mapping[str, Any]) -> bool:
            v = values.get(name)
            if v is None or (isinstance(v, float) and v != v):
                return False
            return str(v) in choices

        return member
    apply = _APPLY[cmp]
    if isinstance(target, str):

        def text(values: Mapping[str, Any]) -> bool:
            v = values.get(name)
            if v is None or (isinstance(v, float) and v != v):
                return False
            return apply(str(v), target)

        return text

    def number(values: Mapping[str, Any]) -> bool:
        v = values.get(name)
        if v is None or (isinstance(v, float) and v != v):
            return False
        return bool(apply(float(v), target))

    return number


def compile_all(
    conditions: Sequence[Condition], numeric: Sequence[str], categorical: Sequence[str]
) -> Callable[[Sequence[float], Mapping[str, Any]], bool]:
    """All of ``conditions`` as one function ``f(values, record)``: ``values`` the customer's
    numeric features as floats in ``numeric``'s order (imputed inputs, then derived), ``record``
    the request, read for the ``categorical`` features. Its answer is that of every
    :meth:`Condition.holds` on ``{numeric name: value}`` updated with ``{categorical name:
    record.get(name)}``, without building that dict or calling a closure per comparison (the
    one-customer path checks a request's conditions this way: callgrind, bench/RESULTS.md)."""
    at = {name: i for i, name in enumerate(numeric)}
    for name in categorical:
        at.pop(name, None)  # the record's value replaces a numeric one of the same name
    texts = set(categorical)
    defaults: dict[str, Any] = {}
    parts = [_source(c.tree, at, texts, defaults) for c in conditions]
    body = " and ".join(parts) if parts else "True"
    args = ", ".join(["values", "record", *(f"{k}={k}" for k in defaults)])
    source = f"def conditions({args}):\n    return {body}\n"
    namespace: dict[str, Any] = dict(defaults)
    # our own text: positions, the grammar's operators and names made up here (see _source)
    exec(compile(source, "<scoring.conditions compile_all>", "exec"), namespace)
    return namespace["conditions"]


def _source(
    node: Mapping[str, Any], at: Mapping[str, int], texts: set[str], defaults: dict[str, Any]
) -> str:
    """The expression of one tree node for :func:`compile_all` (operands as default args)."""
    op = node.get("op")
    if op in ("and", "or"):
        return "(" + f" {op} ".join(_source(a, at, texts, defaults) for a in node["args"]) + ")"
    if op == "not":
        return f"(not {_source(node['args'][0], at, texts, defaults)})"
    cmp, target, name = node["cmp"], node["value"], node["feature"]
    if cmp != "in" and cmp not in _APPLY:  # a tree from a file: only the grammar's operators
        raise ConditionError(f"operator {cmp!r} is not allowed in a condition")
    value = f"c{len(defaults)}"
    defaults[value] = target
    if name in at:
        # a float (never None): missing only when NaN
        present, number = f"(x := values[{at[name]}]) == x", "x"
    elif name in texts:
        key = f"c{len(defaults)}"
        defaults[key] = name
        present = f"(x := record.get({key})) is not None and not (isinstance(x, float) and x != x)"
        number = "float(x)"
    else:
        return "False"  # not a feature of this customer: a comparison with a missing value
    if cmp == "in":
        return f"({present} and str(x) in {value})"
    if isinstance(target, str):
        return f"({present} and str(x) {cmp} {value})"
    return f"({present} and {number} {cmp} {value})"


def _mask(node: Mapping[str, Any], columns: Mapping[str, np.ndarray], n: int) -> np.ndarray:
    op = node.get("op")
    if op == "and":
        out = np.ones(n, dtype=bool)
        for a in node["args"]:
            out &= _mask(a, columns, n)
        return out
    if op == "or":
        out = np.zeros(n, dtype=bool)
        for a in node["args"]:
            out |= _mask(a, columns, n)
        return out
    if op == "not":
        return ~_mask(node["args"][0], columns, n)
    col = columns[node["feature"]]
    cmp, target = node["cmp"], node["value"]
    if cmp == "in" or isinstance(target, str):
        text = np.asarray(col, dtype=object)
        present = np.array([v is not None and v == v for v in text], dtype=bool)
        if cmp == "in":
            hit = np.array([str(v) in target for v in text], dtype=bool)
        else:
            hit = np.array([_APPLY[cmp](str(v), target) for v in text], dtype=bool)
        return hit & present
    values = np.asarray(col, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return _APPLY[cmp](values, target) & ~np.isnan(values)


def check_features(
    condition: Condition, numeric: Sequence[str], categorical: Sequence[str] = ()
) -> None:
    """Refuse a condition naming an unknown feature, or comparing kinds wrongly."""
    _check(condition.tree, set(numeric), set(categorical), numeric, categorical)


def _check(node, numeric: set, categorical: set, num_list, cat_list) -> None:
    for child in node.get("args", ()):
        _check(child, numeric, categorical, num_list, cat_list)
    if "feature" not in node:
        return
    name = node["feature"]
    if name not in numeric and name not in categorical:
        known = ", ".join([*num_list, *cat_list])
        raise ConditionError(f"unknown feature {name!r}; known features: {known}")
    textual = node["cmp"] == "in" or isinstance(node["value"], str)
    if name in numeric and textual:
        raise ConditionError(f"feature {name!r} is numeric: compare it with a number")
    if name in categorical and not textual:
        raise ConditionError(f'feature {name!r} is categorical: use == "text" or in [...]')
