"""The compiled request checks agree with marshmallow on generated valid and invalid records."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import orjson
import pytest
from marshmallow import ValidationError

from api.schemas import RequestSchemas
from scoring.engine import ScoringEngine
from scoring.features import CategoricalInput, FeatureSchema

#: values a field may take in a generated record: valid ones and every way to be wrong
NUMBER_VALUES = [
    0,
    1,
    0.5,
    1.0,
    7,
    1e12,
    1e15,
    1e16,  # past the magnitude cap
    5e-324,  # as a denominator: an overflowing ratio
    1e-12,
    -0.0,
    -1,
    -1e-9,
    1.0000001,
    2,
    float("nan"),
    float("inf"),
    float("-inf"),
    "1.5",
    "",
    True,
    False,
    None,
    [],
    {},
    2**62,
]
TEXT_VALUES = ["gold", "unknown-tier", "", "x" * 300, 3, None, True, []]
ID_VALUES = ["c-1", "", "x" * 129, 42, -1, True, None, 1.5, []]
OPTION_VALUES = {
    "top_k": [1, 2, 4, 5, 0, -1, 2.0, "2", True, None],
    "channel": ["push", "email", "fax", "", 1, None],
    "exclude": [
        [],
        ["cashback"],
        ["unknown_id"],
        ["bad id"],
        [1],
        "cashback",
        None,
        ["a"] * 101,
    ],
    "explain": [True, False, 1, "true", None],
}


@pytest.fixture(scope="module")
def features(tiny_bundle) -> FeatureSchema:
    """The tiny bundle's feature schema plus two categoricals (one required), for coverage."""
    return dataclasses.replace(
        tiny_bundle.schema,
        categoricals=(
            CategoricalInput("tier", ("gold", "silver")),
            CategoricalInput("region", ("north",), required=True),
        ),
    )


@pytest.fixture(scope="module")
def schemas(tiny_bundle, features) -> RequestSchemas:
    """Request schemas built from :func:`features`."""
    engine = ScoringEngine(dataclasses.replace(tiny_bundle, schema=features))
    return RequestSchemas(engine, max_batch_items=10)


def _records(schema: FeatureSchema, n: int, seed: int, *, options: bool) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        record = {}
        mostly_valid = rng.random() < 0.5
        for spec in schema.inputs:
            if rng.random() < 0.1 and not mostly_valid:
                continue  # absent
            if mostly_valid and rng.random() < 0.9:
                hi = spec.maximum if spec.maximum is not None else 1000.0
                record[spec.name] = float(rng.uniform(0, hi))
            else:
                record[spec.name] = NUMBER_VALUES[rng.integers(len(NUMBER_VALUES))]
        for spec in schema.categoricals:
            if rng.random() < 0.8 or spec.required:
                record[spec.name] = TEXT_VALUES[rng.integers(len(TEXT_VALUES))]
        if rng.random() < 0.5:
            record["customer_id"] = ID_VALUES[rng.integers(len(ID_VALUES))]
        if rng.random() < 0.05:
            record["surprise"] = 1
        if options:
            for name, values in OPTION_VALUES.items():
                if rng.random() < 0.5:
                    record[name] = values[rng.integers(len(values))]
        out.append(record)
    return out


def _accepted(schema_instance, record) -> bool:
    try:
        schema_instance.load(record)
    except ValidationError:
        return False
    return True


def test_customer_check_agrees_with_marshmallow(schemas, features):
    records = _records(features, 4000, 0, options=False)
    verdicts = [(schemas.customer_ok(r), _accepted(schemas._customer, r)) for r in records]
    fast_yes = sum(f for f, _ in verdicts)
    slow_yes = sum(s for _, s in verdicts)
    assert fast_yes > 100 and len(records) - slow_yes > 100  # both verdicts well represented
    disagreements = [r for r, (f, m) in zip(records, verdicts, strict=True) if f != m]
    assert disagreements == []


def test_recommend_check_agrees_with_marshmallow(schemas, features):
    records = _records(features, 4000, 1, options=True)
    for r in records:
        fast = schemas.customer_ok(r, schemas._recommend_keys) and schemas.options_ok(r)
        assert fast == _accepted(schemas._recommend, r), r


def test_load_returns_the_record_and_options(schemas):
    record = {
        "total_spend": 1.0,
        "order_count": 1,
        "days_since_last_purchase": 1,
        "unique_products": 1,
        "discount_usage": 0.1,
        "return_rate": 0.0,
        "region": "north",
        "top_k": 2,
        "channel": "push",
    }
    data, options = schemas.load_recommend(record)
    assert data["total_spend"] == 1.0
    assert options == {"top_k": 2, "channel": "push"}


def test_batch_items_are_checked_one_by_one(schemas):
    good = {
        "total_spend": 1.0,
        "order_count": 1,
        "days_since_last_purchase": 1,
        "unique_products": 1,
        "discount_usage": 0.1,
        "return_rate": 0.0,
        "region": "north",
    }
    records, positions, errors = schemas.check_items([good, {**good, "order_count": -1}, 5, good])
    assert positions == [0, 3]
    assert records == [good, good]
    assert set(errors) == {1, 2}
    assert "order_count" in errors[1]
    assert "_schema" in errors[2]


def test_batch_check_agrees_with_marshmallow_and_builds_the_same_columns(schemas, features):
    # the column-by-column batch check: same verdict per item as marshmallow, and the columns
    # of the valid items equal to the rows the item-by-item path builds from marshmallow's output
    records = [*_records(features, 3000, 2, options=False), 5, None, "x", [], {"x": 1}]
    checked = schemas.check_batch(records)
    accepted = [i for i, r in enumerate(records) if _accepted(schemas._customer, r)]
    assert checked.positions == accepted
    assert sorted(checked.errors) == sorted(set(range(len(records))) - set(accepted))
    assert 100 < len(accepted) < len(records) - 100
    loaded = [schemas._customer.load(records[i]) for i in accepted]
    names = [s.name for s in features.inputs]
    expected = np.array([[r.get(n) for n in names] for r in loaded], dtype=np.float64)
    np.testing.assert_array_equal(checked.raw, expected)
    for j, spec in enumerate(features.categoricals):
        assert checked.categoricals[j] == [r.get(spec.name) for r in loaded]
    assert checked.ids == [r.get("customer_id") for r in loaded]
    # all valid: the columns come straight from the items, in order
    valid = [records[i] for i in accepted]
    again = schemas.check_batch(valid)
    assert again.positions == list(range(len(valid))) and again.errors == {}
    np.testing.assert_array_equal(again.raw, expected)


BATCH_OPTION_VALUES = {
    **OPTION_VALUES,
    "commit": [True, False, 0, None],
    "answer": ["full", "compact", "short", None, 1],
    "surprise": [1],
}


def _batch_bodies(
    schemas: RequestSchemas, features: FeatureSchema, n: int, seed: int
) -> list[bytes]:
    """Batch bodies of 0-11 items (the fixture takes 1-10), most of valid items only, some
    mixed, with options now and then (valid or not)."""
    rng = np.random.default_rng(seed)
    records = _records(features, 4000, seed, options=False)
    valid = [r for r in records if _accepted(schemas._customer, r)]
    bodies = []
    for _ in range(n):
        size = int(rng.integers(0, 12))
        pool = valid if rng.random() < 0.7 else records
        body: dict = {"customers": [pool[k] for k in rng.integers(len(pool), size=size)]}
        for name, values in BATCH_OPTION_VALUES.items():
            if rng.random() < 0.1:
                body[name] = values[rng.integers(len(values))]
        # json.dumps writes NaN and Infinity as such: not JSON, refused by both parsers
        bodies.append(json.dumps(body).encode())
    return bodies


def _through_dicts(schemas: RequestSchemas, body: bytes):
    """What the dict path makes of a batch body: None unless every item is valid."""
    try:
        parsed = orjson.loads(body)
        envelope = schemas.load_batch(parsed, recommend=True)
    except (orjson.JSONDecodeError, ValidationError):
        return None
    checked = schemas.check_batch(envelope.customers)
    return None if checked.errors else (checked, envelope.options)


@pytest.mark.parametrize("native", [True, False], ids=["fields read natively", "in Python"])
def test_batch_decoded_from_bytes_agrees_with_the_dict_path(schemas, features, native, monkeypatch):
    # msgspec straight from the body: the same verdict (every item valid, options valid) and
    # the same columns, ids and options as orjson + load_batch + check_batch; the numbers read
    # by api/struct_fields.py, or (where it cannot) gathered in Python
    assert schemas._batch_fields.offsets is not None
    if not native:
        monkeypatch.setattr(schemas._batch_fields, "offsets", None)
    bodies = _batch_bodies(schemas, features, 3000, 5)
    accepted = 0
    for body in bodies:
        fast, slow = schemas.decode_batch(body), _through_dicts(schemas, body)
        assert (fast is None) == (slow is None), body
        if fast is None:
            continue
        accepted += 1
        (got, got_options), (want, want_options) = fast, slow
        np.testing.assert_array_equal(got.raw, want.raw)
        assert got.raw.tobytes() == want.raw.tobytes()  # -0.0 and NaN included
        assert got.categoricals == want.categoricals
        assert got.ids == want.ids and list(map(type, got.ids)) == list(map(type, want.ids))
        assert got_options == want_options
        assert got.positions == want.positions and got.errors == want.errors == {}
    assert 300 < accepted < len(bodies) - 300


GOOD_ITEM = (
    '"total_spend":1.0,"order_count":1,"days_since_last_purchase":1,"unique_products":1,'
    '"discount_usage":0.1,"return_rate":0.0,"region":"north"'
)


def _one(extra: str = "", after: str = "}") -> str:
    """A batch body of one good item with ``extra`` JSON members, ``after`` its items."""
    return '{"customers":[{' + GOOD_ITEM + extra + "}]" + after


@pytest.mark.parametrize(
    ("body", "taken"),
    [
        (_one(',"customer_id":"a","customer_id":7'), True),
        (_one(',"total_spend":2,"total_spend":3.5'), True),
        (_one(',"customer_id":"\\u00e9\\ud83d\\ude00"'), True),
        (_one(',"customer_id":123456789012345678901234'), False),
        (_one(',"customer_id":9223372036854775808'), False),
        (_one(',"customer_id":"\\ud800"'), False),
        (_one(',"total_spend":1e400'), False),
        (_one(after=',"customers":[]}'), False),
        (_one(after="} x"), False),
        (_one(',"customer_id":null'), False),
        (_one(',"order_count":5e-324'), False),  # total_spend / order_count overflows
        (_one(',"order_count":0'), True),  # a ratio over zero takes its fill value
    ],
)
def test_batch_decoded_from_bytes_edge_cases(schemas, body, taken):
    # duplicate keys (the last wins in both parsers), escapes, numbers and ids past 64 bits,
    # lone surrogates, trailing bytes: msgspec takes a body only where the dict path would
    # answer it the same way; an id past int64 it leaves to the dict path
    fast = schemas.decode_batch(body.encode())
    assert (fast is not None) == taken
    if taken:
        (got, _), (want, _) = fast, _through_dicts(schemas, body.encode())
        assert got.raw.tobytes() == want.raw.tobytes() and got.ids == want.ids
        assert list(map(type, got.ids)) == list(map(type, want.ids))
