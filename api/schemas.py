"""Request and response schemas: marshmallow at the edge, built from the bundle's feature schema.

Request schemas depend on the loaded bundle (its inputs, campaign ids and channels), so
:func:`build_request_schemas` makes them once per model version at load time. Marshmallow is the
contract: it defines every rule, writes every error message and feeds the OpenAPI document.

For speed, each :class:`RequestSchemas` also holds a *compiled check* derived from the same
feature schema: plain type/range tests that accept a valid record in about a microsecond, where a
marshmallow ``load`` of the same record costs tens (a 1,000-customer batch would spend more time
in validation than in scoring). The check only ever says "certainly valid"; anything it does not
accept goes through marshmallow, which then rejects it with field-keyed messages (or, should the
two ever disagree, accepts it: marshmallow has the last word). ``tests/api/test_schemas.py``
checks on generated valid and invalid records that both reach the same verdict.

Response schemas are static: they document the answers and let tests validate real responses;
the hot path serialises plain dicts with orjson instead of dumping through them.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from itertools import repeat
from operator import attrgetter, is_
from typing import Annotated, Any, Literal

import msgspec
import numpy as np
from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from api.errors import validation_messages
from api.struct_fields import FieldReader
from scoring.bundle import CURRENT
from scoring.engine import ScoringEngine
from scoring.features import FeatureSchema

CUSTOMER_ID = "customer_id"
CUSTOMERS = "customers"
OPTION_NAMES = ("top_k", "channel", "exclude", "explain", "commit")
#: the batch /recommend option that picks the answer's form (batch only: one customer's answer
#: has nothing to share)
ANSWER = "answer"
ANSWER_FORMS = ("full", "compact")
BATCH_OPTION_NAMES = (*OPTION_NAMES, ANSWER)
CAMPAIGN_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MAX_CUSTOMER_ID_LENGTH = 128
MAX_CATEGORY_LENGTH = 256
MAX_EXCLUDE = 100
#: largest magnitude of any numeric feature, sent or derived: far beyond real amounts, counts or
#: days, and small enough that scaling, PCA and distances stay finite (1e308 would overflow them
#: into NaN, which a JSON answer can only carry as null)
MAX_MAGNITUDE = 1e15


# ---- strict fields: JSON types only, no coercion --------------------------------------------
class StrictFloat(fields.Float):
    """A JSON number: integers and floats only; strings such as ``"1.5"`` and booleans fail."""

    default_error_messages = {"invalid": "Not a valid number (send a JSON number, not a string)."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> float:
        if type(value) not in (int, float):
            raise self.make_error("invalid", input=value)
        return super()._deserialize(value, attr, data, **kwargs)


class StrictInteger(fields.Integer):
    """A JSON integer: no strings, booleans or floats."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(strict=True, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if type(value) is not int:
            raise self.make_error("invalid", input=value)
        return super()._deserialize(value, attr, data, **kwargs)


class StrictBoolean(fields.Boolean):
    """A JSON boolean: ``true`` or ``false`` only (not 1, "yes", "true")."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if type(value) is not bool:
            raise self.make_error("invalid", input=value)
        return value


class StrictString(fields.String):
    """A JSON string (marshmallow's String already refuses numbers; this says so in the name)."""


class CustomerId(fields.Field):
    """The caller's customer id: a string (1-128 characters) or an integer, echoed back."""

    default_error_messages = {
        "invalid": f"Not a valid customer id (a string of 1-{MAX_CUSTOMER_ID_LENGTH} "
        "characters or an integer)."
    }

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if not _valid_customer_id(value):
            raise self.make_error("invalid", input=value)
        return value


#: how OpenAPI documents a customer id (what :class:`CustomerId` accepts)
CUSTOMER_ID_JSON_SCHEMA = {
    "anyOf": [
        {"type": "string", "minLength": 1, "maxLength": MAX_CUSTOMER_ID_LENGTH},
        {"type": "integer"},
    ]
}


def _valid_customer_id(value: Any) -> bool:
    t = type(value)
    return (t is str and 0 < len(value) <= MAX_CUSTOMER_ID_LENGTH) or t is int


class Either(fields.Field):
    """One of several nested schemas, chosen by the value's shape (documented as ``oneOf``)."""

    def __init__(self, *choices: type[Schema], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.choices = choices

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        errors = {}
        for choice in self.choices:
            try:
                return choice().load(value)
            except ValidationError as exc:
                errors[choice.__name__] = exc.messages
        raise ValidationError(errors)


class _Strict(Schema):
    class Meta:
        unknown = RAISE


# ---- request schemas built from a bundle ------------------------------------------------------
def _numeric_field(spec: Any, ratios_over: tuple[Any, ...] = ()) -> fields.Field:
    lo, hi = spec.minimum, spec.maximum
    validators = [validate.Range(min=lo, max=hi)] if lo is not None or hi is not None else []
    if lo is None or hi is None:
        validators.append(
            validate.Range(
                min=-MAX_MAGNITUDE,
                max=MAX_MAGNITUDE,
                error=f"Must be at most {MAX_MAGNITUDE:g} in absolute value.",
            )
        )
    lo_text = -MAX_MAGNITUDE if lo is None else lo
    hi_text = MAX_MAGNITUDE if hi is None else hi
    description = spec.description or f"{spec.kind} ({_domain_text(lo_text, hi_text)})"
    if not spec.required:
        description += "; optional: missing or null is imputed with the training median"
    for d in ratios_over:
        # A rule across fields that JSON Schema cannot state: say it in words.
        description += (
            f"; {d.numerator} / {spec.name} ({d.name}) must be at most {MAX_MAGNITUDE:g} "
            "in absolute value"
        )
    return StrictFloat(
        required=spec.required,
        allow_none=not spec.required,
        validate=validators,
        metadata={"description": description, "example": _example_number(spec)},
    )


def _domain_text(lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None:
        return f"{lo:g} to {hi:g}"
    if lo is not None:
        return f">= {lo:g}"
    return "any finite number"


def _example_number(spec: Any) -> float | int:
    value = float(spec.median)
    if spec.kind == "count" or spec.kind == "days":
        return round(value)
    return round(value, 4)


def _categorical_field(spec: Any) -> fields.Field:
    description = spec.description or "categorical"
    description += f"; known values: {', '.join(spec.categories)} (others count as missing)"
    return StrictString(
        required=spec.required,
        allow_none=not spec.required,
        validate=validate.Length(max=MAX_CATEGORY_LENGTH),
        metadata={"description": description, "example": spec.categories[0]}
        if spec.categories
        else {"description": description},
    )


def customer_fields(schema: FeatureSchema) -> dict[str, fields.Field]:
    """The fields of one customer record: the bundle's inputs plus an optional customer id."""
    out: dict[str, fields.Field] = {
        CUSTOMER_ID: CustomerId(
            required=False,
            metadata={
                "description": "your id for the customer, echoed back; sent without some "
                "required features, it names a customer whose stored features complete the "
                "request (when the service has a feature store)",
                **CUSTOMER_ID_JSON_SCHEMA,
                "example": "c-42",
            },
        )
    }
    for spec in schema.inputs:
        over = tuple(d for d in schema.derived if d.denominator == spec.name)
        out[spec.name] = _numeric_field(spec, over)
    for spec in schema.categoricals:
        out[spec.name] = _categorical_field(spec)
    return out


def option_fields(engine: ScoringEngine) -> dict[str, fields.Field]:
    """The ranking options of /recommend, with domains from the campaign pool."""
    n = len(engine.campaigns)
    channels = sorted(engine.channels)
    return {
        "top_k": StrictInteger(
            validate=validate.Range(min=1, max=max(n, 1)),
            metadata={"description": f"return at most this many campaigns (1-{n})", "example": 3},
        ),
        "channel": StrictString(
            validate=validate.OneOf(channels),
            metadata={
                "description": "only campaigns of this channel (campaigns for 'any' channel "
                f"always qualify); one of: {', '.join(channels)}",
                "example": channels[0] if channels else "push",
            },
        ),
        "exclude": fields.List(
            StrictString(validate=validate.Regexp(CAMPAIGN_ID_RE)),
            validate=validate.Length(max=MAX_EXCLUDE),
            metadata={
                "description": "campaign ids never to return; ids not in the current pool are "
                "ignored (a pool may change between model versions)",
                "example": [engine.campaign_ids[0]] if engine.campaign_ids else [],
            },
        ),
        "explain": StrictBoolean(
            metadata={
                "description": "add each campaign's top feature contributions (log-odds) and "
                "explain_method to the answer"
            }
        ),
        "commit": StrictBoolean(
            metadata={
                "description": "the offers will be sent: check and count the frequency caps in "
                "one atomic step, and record control-group hold-outs in the feedback stream "
                "(without it caps are only read)"
            }
        ),
    }


def answer_field() -> fields.Field:
    """The batch /recommend ``answer`` option: the full answer (default) or the compact one."""
    return StrictString(
        validate=validate.OneOf(ANSWER_FORMS),
        metadata={
            "description": "the answer's form: 'full' (default; every result carries its "
            "campaigns' and segment's fields) or 'compact' (those fields once, in the "
            "'campaigns' and 'segments' tables, and per customer only its segment id, numbers "
            "and policy fields; see the README). 'compact' is refused (422) with explain, "
            "commit, a bundle with frequency caps, RFM scores, CLV-weighted gains or a "
            "Gaussian mixture, and items naming a stored customer",
            "example": "compact",
        },
    )


@dataclass(frozen=True)
class Ratio:
    """A derived ``numerator / denominator`` feature, as the request check needs it."""

    name: str
    numerator: str
    denominator: str
    #: what the engine uses when an optional input is missing or null
    numerator_median: float
    denominator_median: float

    def in_range(self, record: Mapping[str, Any]) -> bool:
        """True when the ratio the engine will compute for ``record`` is within MAX_MAGNITUDE.

        ``record``'s numbers are already valid (each within MAX_MAGNITUDE). A denominator <= 0
        gives the feature's fill value, so only a positive, tiny denominator can overflow.
        """
        den = record.get(self.denominator)
        if den is None:
            den = self.denominator_median
        if not den > 0:
            return True
        num = record.get(self.numerator)
        if num is None:
            num = self.numerator_median
        try:
            return abs(num / den) <= MAX_MAGNITUDE
        except OverflowError:
            return False

    def message(self) -> str:
        """The error for the denominator field when :meth:`in_range` is false."""
        return (
            f"Too small for {self.numerator}: {self.name} = {self.numerator} / "
            f"{self.denominator} must be at most {MAX_MAGNITUDE:g} in absolute value."
        )


def ratios(schema: FeatureSchema) -> tuple[Ratio, ...]:
    """The derived ratio features of a bundle, with the medians used for missing inputs."""
    medians = {spec.name: float(spec.median) for spec in schema.inputs}
    return tuple(
        Ratio(d.name, d.numerator, d.denominator, medians[d.numerator], medians[d.denominator])
        for d in schema.derived
    )


def _ratio_validator(rules: tuple[Ratio, ...]) -> Any:
    """A schema-level check that every derived ratio stays within MAX_MAGNITUDE."""

    @validates_schema
    def check_ratios(self: Schema, data: dict[str, Any], **kwargs: Any) -> None:
        errors = {r.denominator: [r.message()] for r in rules if not r.in_range(data)}
        if errors:
            raise ValidationError(errors)

    return check_ratios


def _schema_class(
    name: str, field_map: Mapping[str, fields.Field], rules: tuple[Ratio, ...] = ()
) -> type[Schema]:
    members: dict[str, Any] = dict(field_map)
    if rules:
        members["_check_ratios"] = _ratio_validator(rules)
    return type(name, (_Strict,), members)


@dataclass(frozen=True)
class CheckedBatch:
    """The valid items of a batch as columns, for the engine, and the others' messages."""

    #: (v, inputs) numeric inputs of the valid items, NaN where an optional one is missing
    raw: np.ndarray
    #: one list per categorical input: the valid items' values (None: missing)
    categoricals: list[list[Any]]
    #: the valid items' customer ids (None: not sent)
    ids: list[Any]
    #: the valid items' positions in the batch, ascending
    positions: list[int]
    #: field messages of the invalid items, by position
    errors: dict[int, dict[str, Any]]


@dataclass(frozen=True)
class BatchEnvelope:
    """Top-level parts of a batch body, items not yet validated."""

    customers: list[Any]
    options: dict[str, Any]


class RequestSchemas:
    """The request schemas of one model version and their compiled fast checks."""

    def __init__(self, engine: ScoringEngine, max_batch_items: int) -> None:
        self.version = engine.version
        self.max_batch_items = max_batch_items
        feature_schema = engine.schema
        suffix = _class_suffix(engine.version)
        self._ratios = ratios(feature_schema)
        self.customer_class = _schema_class(
            f"Customer{suffix}", customer_fields(feature_schema), self._ratios
        )
        options = option_fields(engine)
        self.recommend_class = _schema_class(
            f"RecommendRequest{suffix}",
            {**customer_fields(feature_schema), **options},
            self._ratios,
        )
        batch_size = validate.Length(min=1, max=max_batch_items)
        self.customer_batch_class = _schema_class(
            f"CustomerBatch{suffix}",
            {
                CUSTOMERS: fields.List(
                    fields.Nested(self.customer_class), required=True, validate=batch_size
                )
            },
        )
        self.recommend_batch_class = _schema_class(
            f"RecommendBatch{suffix}",
            {
                CUSTOMERS: fields.List(
                    fields.Nested(self.customer_class), required=True, validate=batch_size
                ),
                **option_fields(engine),
                ANSWER: answer_field(),
            },
        )
        # Runtime checks of a batch's top level: items are checked one by one afterwards.
        self._envelope_segment = _schema_class(
            "SegmentBatchEnvelope",
            {CUSTOMERS: fields.List(fields.Raw(), required=True, validate=batch_size)},
        )()
        self._envelope_recommend = _schema_class(
            "RecommendBatchEnvelope",
            {
                CUSTOMERS: fields.List(fields.Raw(), required=True, validate=batch_size),
                **option_fields(engine),
                ANSWER: answer_field(),
            },
        )()
        self._customer = self.customer_class()
        self._recommend = self.recommend_class()

        # ---- compiled checks (must agree with the fields above) ----
        self._numeric = [
            (
                s.name,
                s.required,
                _bound(s.minimum, -MAX_MAGNITUDE),
                _bound(s.maximum, MAX_MAGNITUDE),
            )
            for s in feature_schema.inputs
        ]
        self._categorical = [(s.name, s.required) for s in feature_schema.categoricals]
        names = [CUSTOMER_ID, *feature_schema.input_names, *feature_schema.categorical_names]
        self._customer_keys = frozenset(names)
        self._recommend_keys = frozenset([*names, *OPTION_NAMES])
        self._id_only = frozenset([CUSTOMER_ID])
        self._id_and_options = frozenset([CUSTOMER_ID, *OPTION_NAMES])
        self._n_campaigns = len(engine.campaigns)
        self._channels = frozenset(engine.channels)
        self._batch_decoder, customer_type = _batch_decoder(
            self._numeric, self._categorical, max_batch_items, self._n_campaigns
        )
        self._batch_getters = [
            (attrgetter(f"n{j}"), required) for j, (_, required, *_) in enumerate(self._numeric)
        ]
        self._batch_fields = FieldReader(
            customer_type, [f"n{j}" for j in range(len(self._numeric))]
        )

    # ---- fast checks --------------------------------------------------------------------------
    def customer_ok(self, record: Any, allowed: frozenset[str] | None = None) -> bool:
        """True only if marshmallow would accept ``record`` as one customer."""
        if type(record) is not dict or not (allowed or self._customer_keys).issuperset(record):
            return False
        get = record.get
        for name, required, lo, hi in self._numeric:
            v = get(name)
            t = type(v)
            if t is float:
                # NaN fails the comparison; so do infinities (every bound is finite).
                if not lo <= v <= hi:
                    return False
            elif t is int:
                if not lo <= v <= hi:
                    return False
            elif v is not None or required:
                return False
        for name, required in self._categorical:
            v = get(name)
            if type(v) is str:
                if len(v) > MAX_CATEGORY_LENGTH:
                    return False
            elif v is not None or required:
                return False
        for ratio in self._ratios:
            if not ratio.in_range(record):
                return False
        cid = get(CUSTOMER_ID)
        if cid is None:
            return CUSTOMER_ID not in record
        return _valid_customer_id(cid)

    def options_ok(self, body: Mapping[str, Any]) -> bool:
        """True only if marshmallow would accept the ranking options present in ``body``."""
        if "top_k" in body:
            v = body["top_k"]
            if type(v) is not int or not 1 <= v <= max(self._n_campaigns, 1):
                return False
        if "channel" in body and (
            type(body["channel"]) is not str or body["channel"] not in self._channels
        ):
            return False
        if "exclude" in body:
            v = body["exclude"]
            if type(v) is not list or len(v) > MAX_EXCLUDE:
                return False
            for cid in v:
                if type(cid) is not str or not CAMPAIGN_ID_RE.match(cid):
                    return False
        if "commit" in body and type(body["commit"]) is not bool:
            return False
        return "explain" not in body or type(body["explain"]) is bool

    # ---- loading: fast check first, marshmallow for the verdict and the messages ----------------
    def load_customer(self, record: Any) -> dict[str, Any]:
        """One customer record for /predict-segment; raises ValidationError with field messages."""
        if self.customer_ok(record):
            return record
        return self._customer.load(record)

    def load_recommend(self, body: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """A single /recommend body -> (customer record, ranking options)."""
        if self.customer_ok(body, self._recommend_keys) and self.options_ok(body):
            data = body
        else:
            data = self._recommend.load(body)
        return data, {k: data[k] for k in OPTION_NAMES if k in data}

    def load_partial(
        self, body: Any, *, recommend: bool = False
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """A body that names a stored customer -> (the features it sends, ranking options).

        The fields sent are checked as usual; none is required (the stored record completes it).
        A body of an id alone (and valid options) needs no marshmallow pass: the common case.
        """
        allowed = self._id_and_options if recommend else self._id_only
        if (
            type(body) is dict
            and allowed.issuperset(body)
            and _valid_customer_id(body.get(CUSTOMER_ID))
            and (not recommend or self.options_ok(body))
        ):
            return body, {k: body[k] for k in OPTION_NAMES if k in body}
        schema = self._recommend if recommend else self._customer
        data = schema.load(body, partial=True)
        return data, {k: data[k] for k in OPTION_NAMES if k in data}

    def load_batch(self, body: Mapping[str, Any], *, recommend: bool) -> BatchEnvelope:
        """A batch body's top level (size, options); items are checked with :meth:`check_item`."""
        customers = body.get(CUSTOMERS)
        allowed = {CUSTOMERS, *BATCH_OPTION_NAMES} if recommend else {CUSTOMERS}
        if (
            type(customers) is list
            and 0 < len(customers) <= self.max_batch_items
            and allowed.issuperset(body)
            and (
                not recommend
                or (self.options_ok(body) and body.get(ANSWER, "full") in ANSWER_FORMS)
            )
        ):
            data = body
        else:
            envelope = self._envelope_recommend if recommend else self._envelope_segment
            data = envelope.load(body)
        return BatchEnvelope(
            customers=data[CUSTOMERS],
            options={k: data[k] for k in BATCH_OPTION_NAMES if k in data},
        )

    def check_items(
        self, items: list[Any]
    ) -> tuple[list[dict[str, Any]], list[int], dict[int, dict[str, Any]]]:
        """Batch items -> (valid records, their positions, field messages by position)."""
        records: list[dict[str, Any]] = []
        positions: list[int] = []
        errors: dict[int, dict[str, Any]] = {}
        ok = self.customer_ok
        for i, item in enumerate(items):
            if ok(item):
                records.append(item)
                positions.append(i)
                continue
            try:
                records.append(self._customer.load(item))
                positions.append(i)
            except ValidationError as exc:
                errors[i] = validation_messages(exc)
        return records, positions, errors

    def check_batch(self, items: list[Any]) -> CheckedBatch:
        """Batch items -> their valid part as columns, and field messages of the others.

        The same verdicts as :meth:`check_items`, reached column by column: each input's values
        are gathered once, their types checked as a set and their ranges with numpy, so a
        1,000-customer batch costs about what a few dozen single checks cost. An item this
        check does not certainly accept goes through marshmallow alone, as in
        :meth:`check_items` (tests/api/test_api_schemas.py holds the two to the same verdicts
        and the same columns).
        """
        n = len(items)
        dicts = [i for i, item in enumerate(items) if type(item) is dict]
        records = items if len(dicts) == n else [items[i] for i in dicts]
        # one key check over all the records' keys; record by record only when it fails
        if self._customer_keys.issuperset(set().union(*records)):
            ok = np.ones(len(records), dtype=bool)
        else:
            ok = np.fromiter(map(self._customer_keys.issuperset, records), bool, len(records))
        columns = []
        for name, required, lo, hi in self._numeric:
            values, good = _number_column(_column(records, name), required, lo, hi)
            ok &= good
            columns.append(values)
        cats = []
        for name, required in self._categorical:
            col = _column(records, name)
            ok &= _text_column(col, required)
            cats.append(col)
        if self._ratios:
            ok &= self._ratios_ok(columns)
        ids = _column(records, CUSTOMER_ID)
        ok &= _id_column(ids, records)
        if len(dicts) == n and ok.all():
            # the common batch: every item valid, the columns are the answer as they stand
            raw = np.column_stack(columns) if columns else np.empty((n, 0))
            return CheckedBatch(raw, cats, ids, list(range(n)), {})
        good = np.flatnonzero(ok)
        raw = np.column_stack(columns)[good] if columns else np.empty((good.size, 0))
        fast = dict(zip((dicts[k] for k in good.tolist()), good.tolist(), strict=True))
        if len(fast) == n:
            return CheckedBatch(
                raw,
                [[c[k] for k in good.tolist()] for c in cats] if cats else [],
                [ids[k] for k in good.tolist()],
                list(range(n)),
                {},
            )
        # the rest through marshmallow, one by one: it accepts or rejects with messages
        slow: dict[int, dict[str, Any]] = {}
        errors: dict[int, dict[str, Any]] = {}
        for i, item in enumerate(items):
            if i in fast:
                continue
            try:
                slow[i] = self._customer.load(item)
            except ValidationError as exc:
                errors[i] = validation_messages(exc)
        positions = sorted([*fast, *slow])
        names = [name for name, *_rest in self._numeric]
        rows = np.empty((len(positions), len(names)), dtype=np.float64)
        out_cats: list[list[Any]] = [[] for _ in cats]
        out_ids = []
        for row, i in enumerate(positions):
            k = fast.get(i)
            if k is not None:
                rows[row] = [c[k] for c in columns]
                for j, c in enumerate(cats):
                    out_cats[j].append(c[k])
                out_ids.append(ids[k])
            else:
                record = slow[i]
                rows[row] = np.array([record.get(name) for name in names], dtype=np.float64)
                for j, (name, _) in enumerate(self._categorical):
                    out_cats[j].append(record.get(name))
                out_ids.append(record.get(CUSTOMER_ID))
        return CheckedBatch(rows, out_cats, out_ids, positions, errors)

    def _ratios_ok(self, columns: list[np.ndarray]) -> np.ndarray:
        """Which rows' derived ratios stay within MAX_MAGNITUDE (:meth:`Ratio.in_range` on
        columns of valid numbers, NaN where missing)."""
        ok = np.ones(columns[0].shape[0], dtype=bool)
        index = {name: j for j, (name, *_rest) in enumerate(self._numeric)}
        with np.errstate(all="ignore"):
            for ratio in self._ratios:
                den = columns[index[ratio.denominator]]
                num = columns[index[ratio.numerator]]
                den = np.where(np.isnan(den), ratio.denominator_median, den)
                num = np.where(np.isnan(num), ratio.numerator_median, num)
                ok &= ~(den > 0) | (np.abs(num / den) <= MAX_MAGNITUDE)
        return ok

    def decode_batch(self, body: bytes) -> tuple[CheckedBatch, dict[str, Any]] | None:
        """A batch /recommend body whose every item is valid -> its columns and its options,
        decoded from the JSON bytes by msgspec; None for any other body.

        For the bodies it accepts, the same values and verdict as ``orjson.loads`` +
        :meth:`load_batch` + :meth:`check_batch` (tests/api/test_api_schemas.py); for the rest
        (a bad item or option, anything msgspec refuses) the caller takes that path, which
        writes the messages. msgspec checks the types and ranges while it builds one small
        object per customer instead of a dict, which is where the dict path spends its time
        (1,000 customers: 1.75 -> ~1.0 ms, bench/RESULTS.md, "Batch `/recommend`, fourth pass").
        """
        try:
            decoded = self._batch_decoder.decode(body)
        except (msgspec.ValidationError, msgspec.DecodeError):
            return None
        options = {
            name: value
            for name in BATCH_OPTION_NAMES
            if (value := getattr(decoded, name)) is not msgspec.UNSET
        }
        if not self.options_ok(options):
            return None
        customers = decoded.customers
        n = len(customers)
        raw = self._batch_fields.read(customers)
        if raw is None:  # api/struct_fields.py could not read them: gathered here instead
            # a required input is never None here: straight into an array, no list in between
            columns = [
                np.fromiter(map(get, customers), dtype=np.float64, count=n)
                if required
                else np.array(list(map(get, customers)), dtype=np.float64)
                for get, required in self._batch_getters
            ]
            raw = np.column_stack(columns) if columns else np.empty((n, 0))
        if self._ratios and not self._ratios_ok(list(raw.T)).all():
            return None
        cats = [list(map(attrgetter(f"c{j}"), customers)) for j in range(len(self._categorical))]
        ids = list(map(attrgetter("customer_id"), customers))
        return CheckedBatch(raw, cats, ids, list(range(n)), {}), options


def _batch_decoder(
    numeric: list[tuple[str, bool, float, float]],
    categorical: list[tuple[str, bool]],
    max_items: int,
    n_campaigns: int,
) -> tuple[msgspec.json.Decoder, type]:
    """msgspec's decoder of a batch /recommend body whose items all pass the compiled checks,
    and the struct type it decodes each customer into.

    Each rule is the compiled check's (and so marshmallow's): known keys only; numbers within
    their bounds (a JSON integer counts, a boolean or string does not); text within its length;
    required inputs present and not null; a customer id of 1 to MAX_CUSTOMER_ID_LENGTH
    characters or an integer, never null (an integer beyond int64 is left to the dict path:
    orjson reads one beyond 64 bits as a float, which marshmallow refuses). Fields are named ``n0``, ``c0``, ... and renamed
    to the inputs' names, which need not be Python identifiers.
    """
    fields_: list[tuple[Any, ...]] = [
        (
            CUSTOMER_ID,
            Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_CUSTOMER_ID_LENGTH)]
            | Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)],
            None,
        )
    ]
    rename = {CUSTOMER_ID: CUSTOMER_ID}
    for j, (name, required, lo, hi) in enumerate(numeric):
        number = Annotated[float, msgspec.Meta(ge=lo, le=hi)]
        fields_.append((f"n{j}", number) if required else (f"n{j}", number | None, None))
        rename[f"n{j}"] = name
    for j, (name, required) in enumerate(categorical):
        text = Annotated[str, msgspec.Meta(max_length=MAX_CATEGORY_LENGTH)]
        fields_.append((f"c{j}", text) if required else (f"c{j}", text | None, None))
        rename[f"c{j}"] = name
    # required fields first: msgspec wants the ones with defaults last
    fields_.sort(key=len)
    customer = msgspec.defstruct(
        "BatchCustomer", fields_, forbid_unknown_fields=True, rename=rename, gc=False
    )
    unset = msgspec.UnsetType
    batch = msgspec.defstruct(
        "BatchBody",
        [
            (
                CUSTOMERS,
                Annotated[list[customer], msgspec.Meta(min_length=1, max_length=max_items)],
            ),
            (
                "top_k",
                Annotated[int, msgspec.Meta(ge=1, le=max(n_campaigns, 1))] | unset,
                msgspec.UNSET,
            ),
            ("channel", str | unset, msgspec.UNSET),
            ("exclude", list[str] | unset, msgspec.UNSET),
            ("explain", bool | unset, msgspec.UNSET),
            ("commit", bool | unset, msgspec.UNSET),
            (ANSWER, Literal["full", "compact"] | unset, msgspec.UNSET),
        ],
        forbid_unknown_fields=True,
    )
    return msgspec.json.Decoder(batch), customer


def _column(records: list[dict[str, Any]], name: str) -> list[Any]:
    """Each record's ``name`` (None where absent).

    ``map(dict.get, ...)`` loops in C: 12 inputs of 1,000 records in 0.42 ms, against 0.66 ms
    for list comprehensions calling ``r.get`` (bench/RESULTS.md).
    """
    return list(map(dict.get, records, repeat(name)))


_NUMBER = frozenset([int, float])
_NUMBER_OR_NONE = frozenset([int, float, type(None)])


def _number_column(
    values: list[Any], required: bool, lo: float, hi: float
) -> tuple[np.ndarray, np.ndarray]:
    """(values as float64 with NaN for None, which of them marshmallow would accept)."""
    kinds = set(map(type, values))
    if kinds <= (_NUMBER if required else _NUMBER_OR_NONE):
        try:
            column = np.array(values, dtype=np.float64)  # None -> NaN
        except OverflowError:  # an integer beyond a double: value by value below
            pass
        else:
            with np.errstate(invalid="ignore"):
                good = (column >= lo) & (column <= hi)
            if type(None) in kinds:
                good |= np.fromiter(map(is_, values, repeat(None)), bool, len(values))
            return column, good
    column = np.full(len(values), np.nan)
    good = np.zeros(len(values), dtype=bool)
    for k, v in enumerate(values):
        t = type(v)
        if t is float or t is int:
            try:
                f = float(v)
            except OverflowError:
                continue
            if lo <= v <= hi:
                column[k] = f
                good[k] = True
        elif v is None and not required:
            good[k] = True
    return column, good


def _text_column(values: list[Any], required: bool) -> np.ndarray:
    """Which categorical values marshmallow would accept: text up to its length, or None."""
    if set(map(type, values)) == {str}:
        return np.fromiter(map(len, values), np.int64, len(values)) <= MAX_CATEGORY_LENGTH
    return np.fromiter(
        (
            (type(v) is str and len(v) <= MAX_CATEGORY_LENGTH) or (v is None and not required)
            for v in values
        ),
        bool,
        len(values),
    )


def _id_column(ids: list[Any], records: list[dict[str, Any]]) -> np.ndarray:
    """Which customer ids marshmallow would accept (absent is fine; a null is not certain)."""
    kinds = set(map(type, ids))
    if kinds == {str}:
        lengths = np.fromiter(map(len, ids), np.int64, len(ids))
        return (lengths > 0) & (lengths <= MAX_CUSTOMER_ID_LENGTH)
    return np.fromiter(
        (
            _valid_customer_id(cid) if cid is not None else CUSTOMER_ID not in r
            for cid, r in zip(ids, records, strict=True)
        ),
        bool,
        len(ids),
    )


def _bound(value: float | None, default: float) -> float:
    # Every bound is finite: MAX_MAGNITUDE where the kind sets none.
    return default if value is None else float(value)


def _class_suffix(version: str) -> str:
    # Class names only help debugging; keep them identifiers.
    return "_" + re.sub(r"\W", "_", version) if version else ""


# ---- response schemas (documentation and tests; the hot path uses orjson) ------------------------
class SegmentValue(Schema):
    """Customer lifetime value of a segment over the bundle's CLV horizon."""

    mean = fields.Float(required=True, metadata={"description": "mean CLV of its customers"})
    total = fields.Float(required=True, metadata={"description": "sum of its customers' CLV"})
    share = fields.Float(required=True, metadata={"description": "its share of the total CLV"})


class SegmentRFM(Schema):
    """The segment's RFM picture in training (bundles with the three [rfm] features)."""

    recency = fields.Float(
        required=True, allow_none=True, metadata={"description": "mean R score (1-5)"}
    )
    frequency = fields.Float(
        required=True, allow_none=True, metadata={"description": "mean F score (1-5)"}
    )
    monetary = fields.Float(
        required=True, allow_none=True, metadata={"description": "mean M score (1-5)"}
    )
    groups = fields.Dict(
        keys=fields.String(),
        values=fields.Float(),
        required=True,
        metadata={"description": "share of the segment's customers in each RFM group"},
    )


class CustomerRFM(Schema):
    """The customer's RFM scores against the bundle's quintile edges (scoring/rfm.py)."""

    recency = fields.Integer(
        required=True, metadata={"description": "R score, 1-5 (5: most recent)"}
    )
    frequency = fields.Integer(required=True, metadata={"description": "F score, 1-5"})
    monetary = fields.Integer(required=True, metadata={"description": "M score, 1-5"})
    group = fields.String(
        required=True,
        metadata={"description": "the named RFM group of (R, F)", "example": "Champions"},
    )


class CustomerValue(Schema):
    """The customer's lifetime value and the weight it gave the offers' values."""

    clv = fields.Float(required=True, metadata={"description": "CLV over the bundle's horizon"})
    weight = fields.Float(
        required=True,
        metadata={"description": "max(CLV, 0) / mean training CLV: the factor on offer values"},
    )


class SegmentStats(Schema):
    """What training saw of the customer's segment."""

    size = fields.Integer(required=True, metadata={"description": "customers in the segment"})
    share = fields.Float(required=True, metadata={"description": "share of all customers"})
    mean = fields.Dict(
        keys=fields.String(),
        values=fields.Float(),
        required=True,
        metadata={"description": "mean of each numeric feature (inputs and derived)"},
    )
    clv = fields.Nested(
        SegmentValue,
        metadata={"description": "the segment's lifetime value (bundles trained with [clv])"},
    )
    rfm = fields.Nested(
        SegmentRFM,
        metadata={"description": "mean RFM scores and RFM groups (bundles with [rfm] features)"},
    )


class LastScored(Schema):
    """What the stream job last computed for a customer named by id (from the feature store)."""

    segment_id = fields.Integer(required=True)
    segment_name = fields.String(required=True)
    campaigns = fields.List(
        fields.String(), required=True, metadata={"description": "top campaign ids, best first"}
    )
    model_version = fields.String(required=True)
    scored_at = fields.Float(
        required=True, allow_none=True, metadata={"description": "Unix seconds"}
    )


class _SegmentAnswer(Schema):
    customer_id = CustomerId(
        metadata={"description": "echoed from the request", **CUSTOMER_ID_JSON_SCHEMA}
    )
    segment_id = fields.Integer(required=True)
    segment_name = fields.String(required=True)
    recommended_campaigns = fields.List(
        fields.String(),
        required=True,
        metadata={"description": "the segment's default campaigns, best first"},
    )
    segment_stats = fields.Nested(SegmentStats, required=True)
    distance = fields.Float(
        required=True, metadata={"description": "distance to the segment's centroid (PCA space)"}
    )
    atypical = fields.Boolean(
        required=True,
        metadata={
            "description": "true when the customer is farther from the segment than the "
            "training threshold: unlike every segment"
        },
    )
    last_scored = fields.Nested(
        LastScored,
        metadata={"description": "only for a customer named by id whom the stream job has scored"},
    )
    membership = fields.List(
        fields.Float(),
        metadata={
            "description": "only when the bundle serves the Gaussian mixture "
            '([segmentation] model = "gaussian_mixture"): the probability of each segment, by '
            "segment id (they sum to 1; segment_id is the most probable)"
        },
    )
    rfm = fields.Nested(
        CustomerRFM,
        metadata={
            "description": "only when the bundle has the three [rfm] features: the customer's "
            'R, F, M scores and RFM group (with segmentation.method = "rfm" the group is '
            "the segment)"
        },
    )


class SegmentResult(_SegmentAnswer):
    """One customer's segment (an item of a batch answer)."""


class PredictSegmentResponse(_SegmentAnswer):
    """Answer of /predict-segment for one customer."""

    model_version = fields.String(required=True)


class Contribution(Schema):
    """A feature's contribution to the response model's log-odds (see ``explain_method``)."""

    feature = fields.String(
        required=True,
        metadata={
            "description": "a response-model column: a customer feature, a categorical, "
            "the segment or the campaign"
        },
    )
    contribution = fields.Float(
        required=True,
        metadata={
            "description": "how much this feature moved the campaign's response log-odds from "
            "the model's expected value; over all features they sum to log-odds(probability) "
            "minus that expected value (only the largest three, by magnitude, are returned)"
        },
    )


class RankedCampaign(Schema):
    """A campaign the customer may receive, with its predicted response."""

    campaign_id = fields.String(required=True)
    name = fields.String(required=True)
    channel = fields.String(required=True)
    value = fields.Float(required=True, metadata={"description": "value of one response"})
    cost = fields.Float(required=True, metadata={"description": "cost of one contact"})
    probability = fields.Float(
        required=True, metadata={"description": "P(response) when the campaign is sent"}
    )
    probability_without = fields.Float(
        metadata={"description": "uplift bundles: P(response) when nothing is sent"}
    )
    uplift = fields.Float(
        metadata={"description": "uplift bundles: probability - probability_without"}
    )
    expected_value = fields.Float(required=True, metadata={"description": "probability x value"})
    expected_gain = fields.Float(
        required=True,
        metadata={
            "description": "what the offer is expected to earn: uplift x value - cost "
            '(ranking "uplift") or probability x value - cost (ranking "response"), the value '
            'times customer_value.weight when gain_weight is "clv"; always > 0'
        },
    )
    eligibility = fields.String(
        required=True, metadata={"description": "the rule that made the campaign eligible"}
    )
    rules = fields.List(
        fields.String(),
        required=True,
        metadata={
            "description": "every rule that admitted the offer (segment, channel, "
            "conditions, dates)"
        },
    )
    contributions = fields.List(
        fields.Nested(Contribution),
        metadata={
            "description": "only with explain=true: the three features that moved this "
            "campaign's response log-odds most, largest magnitude first"
        },
    )


class CapsInfo(Schema):
    """How the frequency caps treated this answer."""

    status = fields.String(
        required=True,
        metadata={"description": "ok, disabled (no Redis), failed_open or failed_closed"},
    )
    capped = fields.List(
        fields.String(), required=True, metadata={"description": "campaigns dropped at a cap"}
    )
    committed = fields.Boolean(
        required=True, metadata={"description": "true when the offers were counted (commit)"}
    )


class RecommendResult(_SegmentAnswer):
    """One customer's segment and ranked campaigns (an item of a batch answer)."""

    campaigns = fields.List(
        fields.Nested(RankedCampaign),
        required=True,
        metadata={
            "description": "campaigns with a positive expected gain, best first; may be empty"
        },
    )
    ranking = fields.String(
        required=True,
        metadata={
            "description": '"uplift" (the bundle models the response without the '
            'campaign) or "response"',
            "enum": ["uplift", "response"],
        },
    )
    held_out = fields.List(
        fields.String(),
        required=True,
        metadata={"description": "campaigns this customer is in the control group of (not sent)"},
    )
    holdout_note = fields.String(
        metadata={"description": "present when the request has no customer_id: never held out"}
    )
    reason = fields.String(metadata={"description": "why the campaign list is empty"})
    explain_method = fields.String(
        metadata={
            "description": "with explain=true: how the contributions were computed. "
            '"path": path attribution (Saabas), each split on the path credits its feature '
            "with the change in the tree's expected output; exact in sum, but an "
            'approximation of SHAP that depends on split order. "treeshap": exact TreeSHAP '
            "(the service's EXPLAIN_METHOD setting)",
            "enum": ["path", "treeshap"],
        }
    )
    caps = fields.Nested(
        CapsInfo,
        metadata={"description": "present when the pool has frequency caps or commit is true"},
    )
    gain_weight = fields.String(
        metadata={
            "description": 'present as "clv" when the bundle weights offer values by lifetime '
            "value ([clv] weight_gains): expected_gain = uplift x value x weight - cost",
            "enum": ["clv"],
        }
    )
    customer_value = fields.Nested(
        CustomerValue, metadata={"description": "with gain_weight: the CLV and its weight"}
    )


class RecommendResponse(RecommendResult):
    """Answer of /recommend for one customer."""

    model_version = fields.String(required=True)


class ErrorBody(Schema):
    """What went wrong."""

    code = fields.String(required=True, metadata={"example": "validation_error"})
    message = fields.String(required=True)
    fields_ = fields.Dict(
        data_key="fields",
        metadata={"description": "messages keyed by field name (validation errors only)"},
    )


class ErrorEnvelope(Schema):
    """Every error, and every failed item of a batch."""

    error = fields.Nested(ErrorBody, required=True)


class SegmentBatchResponse(Schema):
    """Answer of a /predict-segment batch: one entry per customer, in order."""

    model_version = fields.String(required=True)
    results = fields.List(Either(SegmentResult, ErrorEnvelope), required=True)


class RecommendBatchResponse(Schema):
    """Answer of a /recommend batch: one entry per customer, in order."""

    model_version = fields.String(required=True)
    results = fields.List(Either(RecommendResult, ErrorEnvelope), required=True)


class CompactCampaign(Schema):
    """A campaign's fixed fields, once per compact answer (its ``campaigns`` table)."""

    name = fields.String(required=True)
    channel = fields.String(required=True)
    value = fields.Float(required=True, metadata={"description": "value of one response"})
    cost = fields.Float(required=True, metadata={"description": "cost of one contact"})
    control_rule = fields.String(
        allow_none=True,
        metadata={
            "description": "pools with control groups: the rule an offer to a customer with a "
            "customer_id passed; the full answer appends it to that offer's rules (null: none)"
        },
    )


class CompactOfferRules(Schema):
    """What admitted a campaign's offers to one segment (per the request's channel)."""

    eligibility = fields.String(required=True)
    rules = fields.List(fields.String(), required=True)


class CompactSegment(Schema):
    """A segment's fields, once per compact answer (its ``segments`` table)."""

    segment_name = fields.String(required=True)
    recommended_campaigns = fields.List(fields.String(), required=True)
    offers = fields.Dict(
        keys=fields.String(),
        values=fields.Nested(CompactOfferRules),
        required=True,
        metadata={"description": "by campaign id: each offer's eligibility and rules"},
    )
    segment_stats = fields.Nested(SegmentStats, required=True)


class CompactResult(Schema):
    """One customer of a compact batch answer."""

    customer_id = CustomerId(
        metadata={"description": "echoed when sent", **CUSTOMER_ID_JSON_SCHEMA}
    )
    segment_id = fields.Integer(
        required=True, metadata={"description": "its fields: segments[str(segment_id)]"}
    )
    distance = fields.Float(required=True)
    atypical = fields.Boolean(required=True)
    offers = fields.List(
        fields.List(fields.Raw()),
        required=True,
        metadata={
            "description": "best first: one array per offer, its values named by the answer's "
            "offer_fields (campaign id first; its fields: campaigns[id])"
        },
    )
    held_out = fields.List(fields.String(), required=True)
    reason = fields.String(metadata={"description": "why nothing is offered, when so"})


class RecommendCompactBatchResponse(Schema):
    """Answer of a /recommend batch with ``"answer": "compact"``: the static parts once.

    The full answer is each result with its segment's fields and stats, each offer with its
    campaign's fields, its segment's eligibility and rules (plus ``control_rule`` for a
    customer with an id), ``ranking``, and ``holdout_note`` for a customer without an id
    (``api.batch_answer.expand_compact`` does exactly this).
    """

    model_version = fields.String(required=True)
    answer = fields.String(required=True, metadata={"enum": ["compact"]})
    ranking = fields.String(required=True, metadata={"description": "as in the full answer"})
    offer_fields = fields.List(
        fields.String(),
        required=True,
        metadata={
            "description": "what each offer array holds: campaign_id, probability, "
            "(uplift bundles: probability_without, uplift), expected_value, expected_gain"
        },
    )
    holdout_note = fields.String(
        metadata={
            "description": "pools with control groups: the note of every customer "
            "without a customer_id"
        }
    )
    campaigns = fields.Dict(
        keys=fields.String(), values=fields.Nested(CompactCampaign), required=True
    )
    segments = fields.Dict(
        keys=fields.String(),
        values=fields.Nested(CompactSegment),
        required=True,
        metadata={"description": "by segment id (as text): the segments of this answer"},
    )
    results = fields.List(Either(CompactResult, ErrorEnvelope), required=True)


class Health(Schema):
    """The process is alive."""

    status = fields.String(required=True, metadata={"example": "ok"})


class Ready(Schema):
    """A verified bundle is loaded (Redis is reported, not required)."""

    ready = fields.Boolean(required=True)
    model_version = fields.String(allow_none=True)
    redis = fields.String(
        required=True, validate=validate.OneOf(["ok", "down", "disabled"]), metadata={}
    )
    pid = fields.Integer(metadata={"description": "the worker that answered (under gunicorn)"})
    workers = fields.List(
        fields.Nested(lambda: WorkerState()),
        metadata={"description": "every live worker of the server (under gunicorn)"},
    )
    workers_ready = fields.Integer(metadata={"description": "how many of them can serve"})


class WorkerState(Schema):
    """One gunicorn worker as the worker roster records it."""

    pid = fields.Integer(required=True)
    ready = fields.Boolean(required=True)
    model_version = fields.String(allow_none=True)


class VersionInfo(Schema):
    """What is being served."""

    model_version = fields.String(required=True)
    created_at = fields.String(allow_none=True)
    k = fields.Integer(required=True)
    segment_names = fields.List(fields.String(), required=True)
    has_response_model = fields.Boolean(required=True)
    propensity = fields.String(
        allow_none=True,
        metadata={
            "description": "how campaign probabilities are computed: 'compiled trees (...)' or "
            "'LightGBM C API (why the compiled trees are not used)'; null without a response model"
        },
    )
    control_propensity = fields.String(
        allow_none=True,
        metadata={
            "description": "the same for the uplift bundle's control model (probability without "
            "the campaign); null when the bundle ranks by response"
        },
    )
    app_version = fields.String(required=True)
    workers = fields.Dict(
        keys=fields.String(),
        values=fields.Integer(),
        metadata={"description": "model version -> ready workers serving it (under gunicorn)"},
    )


class BundleInfo(Schema):
    """The served bundle as the what-if page shows it (GET /bundle)."""

    model_version = fields.String(required=True)
    name = fields.String(allow_none=True)
    created_at = fields.String(allow_none=True)
    k = fields.Integer(required=True)
    served_model = fields.String(required=True, metadata={"example": "kmeans"})
    has_response_model = fields.Boolean(required=True)
    features = fields.Dict(
        required=True,
        metadata={
            "description": "inputs (name, kind, required, median, observed_min/max, minimum, "
            "maximum), derived ratios and categoricals (name, categories) of the feature schema"
        },
    )
    segments = fields.List(
        fields.Dict(),
        required=True,
        metadata={"description": "id, name, description, size, share, mean, default campaigns"},
    )
    population_mean = fields.Dict(keys=fields.String(), values=fields.Float(), required=True)
    campaigns = fields.List(
        fields.Dict(),
        required=True,
        metadata={
            "description": "the pool: id, name, channel, value, description, `eligible` (one "
            "boolean per segment id) and `not_eligible` (why not, per segment; null where "
            "eligible)"
        },
    )
    k_selection = fields.Dict(
        required=True, metadata={"description": "chosen_k, knee, reasoning and the table by k"}
    )
    comparison = fields.List(
        fields.Dict(),
        allow_none=True,
        metadata={"description": "the algorithm comparison, one row per method"},
    )
    map = fields.Dict(
        allow_none=True,
        metadata={
            "description": "a sample of customers on PC1/PC2 (x, y, segment, atypical), "
            "the segment centres and the variance each axis explains"
        },
    )
    report_available = fields.Boolean(required=True)


class MapPosition(Schema):
    """Where one customer sits on the segment map (POST /bundle/position)."""

    x = fields.Float(required=True, metadata={"description": "first principal component"})
    y = fields.Float(required=True, metadata={"description": "second principal component"})
    features = fields.Dict(
        keys=fields.String(),
        values=fields.Float(),
        required=True,
        metadata={"description": "the numeric features the model sees: imputed, derived"},
    )
    model_version = fields.String(required=True)


class ReloadRequest(_Strict):
    """Which bundle to load: the one ``current`` names (empty body) or a named version."""

    version = StrictString(
        validate=[
            validate.Regexp(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$"),
            # `current` is the link, not a version: send {} to load the bundle it names.
            validate.NoneOf(
                [CURRENT], error="Name a version folder; send {{}} to load the one 'current' names."
            ),
        ],
        metadata={"description": "bundle version folder under MODEL_ROOT"},
    )


class ReloadResponse(Schema):
    """The bundle now served by the worker that answered."""

    model_version = fields.String(required=True)
    previous_version = fields.String(allow_none=True)
    scope = fields.String(
        required=True,
        metadata={
            "description": "all_workers when other workers follow within "
            "RELOAD_POLL_SECONDS, else this_worker"
        },
    )


#: the event types a client reports (the service itself records hold-outs)
FEEDBACK_TYPES = ("impression", "click", "conversion")


def _iso_timestamp(value: str) -> bool:
    try:
        dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


class FeedbackEvent(_Strict):
    """One feedback event: what happened to an offer (or a held-out customer)."""

    event_id = StrictString(
        required=True,
        validate=validate.Length(min=1, max=128),
        metadata={"description": "unique id: a repeat is folded once", "example": "evt-0001"},
    )
    customer_id = CustomerId(
        required=True, metadata={"description": "the customer", **CUSTOMER_ID_JSON_SCHEMA}
    )
    campaign_id = StrictString(
        required=True,
        validate=validate.Regexp(CAMPAIGN_ID_RE),
        metadata={"description": "a campaign of the served pool"},
    )
    type = StrictString(
        required=True,
        validate=validate.OneOf(FEEDBACK_TYPES),
        metadata={"description": "impression, click or conversion"},
    )
    value = StrictFloat(
        allow_none=True,
        validate=validate.Range(min=-MAX_MAGNITUDE, max=MAX_MAGNITUDE),
        metadata={"description": "monetary value of a conversion (optional)"},
    )
    timestamp = StrictString(
        required=True,
        validate=[validate.Length(max=64), lambda v: _iso_timestamp(v) or _raise_timestamp()],
        metadata={"description": "ISO 8601 time of the event", "example": "2026-12-02T10:00:00Z"},
    )
    model_version = StrictString(
        validate=validate.Length(max=128),
        metadata={"description": "the model version that made the offer"},
    )


def _raise_timestamp() -> bool:
    raise ValidationError("Not an ISO 8601 timestamp (e.g. 2026-12-02T10:00:00Z).")


class FeedbackRequest(_Strict):
    """A batch of feedback events (a single event may also be sent on its own)."""

    events = fields.List(
        fields.Nested(FeedbackEvent),
        required=True,
        validate=validate.Length(min=1),
        metadata={"description": "at most MAX_BATCH_ITEMS events"},
    )


class FeedbackResponse(Schema):
    """Events appended to the feedback stream."""

    accepted = fields.Integer(required=True)
    stream_ids = fields.List(fields.String(), required=True)


def load_feedback(body: Any, campaign_ids: Collection[str], max_items: int) -> list[dict]:
    """A /feedback body (one event, or {"events": [...]}) -> events; unknown campaigns and too
    many events are field errors (422)."""
    if isinstance(body, dict) and "events" in body:
        events = FeedbackRequest().load(body)["events"]
        prefix = "events."
    else:
        events = [FeedbackEvent().load(body)]
        prefix = ""
    if len(events) > max_items:
        raise ValidationError({"events": [f"at most {max_items} events per request"]})
    known = set(campaign_ids)
    errors: dict[str, Any] = {}
    for i, event in enumerate(events):
        if event["campaign_id"] not in known:
            key = f"{prefix}{i}.campaign_id" if prefix else "campaign_id"
            errors[key] = [f"unknown campaign {event['campaign_id']!r}; not in the served pool"]
    if errors:
        raise ValidationError(errors)
    return events
