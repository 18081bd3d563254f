"""api/struct_fields.py: struct fields read natively equal the same fields read in Python."""

from __future__ import annotations

import math

import msgspec
import numpy as np
import pytest

from api import struct_fields
from api.struct_fields import FieldReader

Row = msgspec.defstruct(
    "Row",
    [("a", float), ("customer_id", str), ("b", float | None, None), ("c", float | None, None)],
    gc=False,
)
NAMES = ("a", "b", "c")


def _python(rows):
    return np.array(
        [[math.nan if getattr(r, n) is None else getattr(r, n) for n in NAMES] for r in rows],
        dtype=np.float64,
    ).reshape(len(rows), len(NAMES))


@pytest.fixture(scope="module")
def reader():
    reader = FieldReader(Row, NAMES)
    assert reader.offsets is not None  # the layouts check out on this interpreter
    return reader


def test_decoded_rows_read_as_in_python(reader):
    rng = np.random.default_rng(3)
    items = []
    for i in range(500):
        item = {"a": float(rng.normal()) * 10 ** int(rng.integers(-300, 300)), "customer_id": "x"}
        if i % 3:
            item["b"] = int(rng.integers(-(2**53), 2**53))  # an integer in JSON: a float here
        if i % 5:
            item["c"] = None if i % 7 == 0 else -0.0 if i % 11 == 0 else float(rng.random())
        items.append(item)
    items.append({"a": 5e-324, "customer_id": "y", "b": 1.7976931348623157e308})
    rows = msgspec.json.decode(msgspec.json.encode(items), type=list[Row])
    got = reader.read(rows)
    assert got.dtype == np.float64 and got.shape == (len(rows), 3)
    expected = _python(rows)
    assert np.array_equal(got, expected, equal_nan=True)
    assert np.array_equal(np.signbit(got), np.signbit(expected))  # -0.0 stays -0.0
    assert reader.read([]).shape == (0, 3)


def test_anything_but_floats_and_none_is_left_to_python(reader):
    good = Row(a=1.0, customer_id="x")
    assert reader.read([good, Row(a=1, customer_id="x")]) is None  # an int object
    assert reader.read([good, Row(a=1.0, customer_id="x", b="2")]) is None
    Other = msgspec.defstruct("Other", [("a", float)])
    assert reader.read([good, Other(a=1.0)]) is None  # another type: never read


def test_a_layout_that_does_not_check_out_leaves_the_reader_off(monkeypatch):
    row = Row(a=1.0, customer_id="x")
    assert FieldReader(Row, ["a", "customer_id"]).offsets is not None  # any field, by object
    assert FieldReader(Row, []).read([row]).shape == (1, 0)
    monkeypatch.setattr(struct_fields, "_float_layout_holds", lambda: False)
    reader = FieldReader(Row, NAMES)
    assert reader.offsets is None and reader.read([row]) is None
