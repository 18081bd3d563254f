"""A batch /recommend answers the same bytes on the column path as on the item-by-item path.

The column path (``RequestSchemas.check_batch``, ``ScoringEngine.choose``,
``api/batch_answer.py``) is what a plain batch takes; the item-by-item path (marshmallow per
item, ``ScoringEngine.recommend``, dicts through orjson) is what explain, caps and stored
customers take. Both must give the same body, byte for byte, whatever the items and options.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import orjson
import pytest
from bundle_builder import build_bundle, synthetic_customers

from api import batch_answer, views
from api.batch_answer import BatchEncoder, _opens, column_encoder, expand_compact
from api.schemas import RecommendCompactBatchResponse
from scoring.bundle import load_current, write_bundle
from scoring.campaigns import Campaign
from scoring.engine import ScoringEngine
from tests.api.conftest import SCORING

BAD_ITEMS = [
    5,
    None,
    "customer",
    [],
    {"total_spend": "12"},
    {"surprise": 1},
]


def _items(n: int, seed: int, bad: bool = True) -> list:
    frame, _ = synthetic_customers(n, seed)
    rng = np.random.default_rng(seed)
    items = []
    for i, row in enumerate(frame.drop(columns="customer_id").to_dict("records")):
        item = {k: (None if v != v else v) for k, v in row.items()}
        if rng.random() < 0.2:
            item = {k: v for k, v in item.items() if v is not None}  # optional ones left out
        kind = rng.integers(6)
        if kind == 0:
            item["customer_id"] = f"c-{i}"
        elif kind == 1:
            item["customer_id"] = i
        elif kind == 2:
            item["customer_id"] = f'odd, "{i}" \u00e9\n'
        elif kind == 3:
            item["order_count"] = int(rng.integers(0, 40))
        elif kind == 4 and rng.random() < 0.3:
            item["return_rate"] = 1.5  # out of range: an error entry
        items.append(item)
    if not bad:
        return items
    at = rng.choice(len(items), size=len(BAD_ITEMS), replace=False)
    for k, bad in zip(at.tolist(), BAD_ITEMS, strict=True):
        items[k] = bad
    return items


@pytest.fixture(scope="module")
def targeting_root(tmp_path_factory, tiny_bundle_root):
    """The tiny bundle with control groups, a costly campaign and an uplift (control) model."""
    root = tmp_path_factory.mktemp("batch-answer")
    other = build_bundle(tmp_path_factory.mktemp("control"), n=1500, seed=5)
    bundle = copy.copy(load_current(tiny_bundle_root))
    campaigns = []
    for j, c in enumerate(bundle.campaigns):
        changes = {"holdout_share": 0.3} if j == 0 else {"cost": c.value * 0.05} if j == 1 else {}
        campaigns.append(Campaign(**{**c.to_dict(), **changes}))
    bundle.campaigns = campaigns
    bundle.control_model = other.response_model
    bundle.compiled = None
    bundle.manifest = {k: v for k, v in bundle.manifest.items() if k in ("config", "metrics")}
    bundle.manifest["pool"] = {"salt": "test-salt", "holdout_share": 0.1}
    write_bundle(bundle, root, version="v-targeting")
    return root


def _both(client, monkeypatch, body):
    fast = client.post("/recommend", json=body, headers=SCORING)
    with monkeypatch.context() as m:
        m.setattr(views, "columns_apply", lambda *a: False)
        slow = client.post("/recommend", json=body, headers=SCORING)
    assert fast.status_code == slow.status_code == 200, slow.get_json()
    return fast.get_data(), slow.get_data()


OPTIONS = [{}, {"top_k": 1}, {"channel": "email"}, {"exclude": ["cashback"], "top_k": 2}]


@pytest.mark.parametrize("options", OPTIONS)
def test_plain_bundle_same_bytes(make_app, monkeypatch, options):
    client = make_app().test_client()
    fast, slow = _both(client, monkeypatch, {"customers": _items(300, 1), **options})
    assert fast == slow
    assert b'"error"' in fast and b'"campaigns":[{' in fast


@pytest.mark.parametrize("options", OPTIONS)
def test_control_groups_costs_and_uplift_same_bytes(make_app, monkeypatch, targeting_root, options):
    client = make_app(MODEL_ROOT=str(targeting_root)).test_client()
    fast, slow = _both(client, monkeypatch, {"customers": _items(400, 2), **options})
    i = next((k for k in range(min(len(fast), len(slow))) if fast[k] != slow[k]), None)
    assert fast == slow, (fast[i - 400 : i + 200], slow[i - 400 : i + 200])
    if not options:  # every special case shows up in the answer
        for part in (b'"held_out":["', b'"holdout_note"', b'"reason"', b'"uplift"'):
            assert part in fast, part


def test_only_bad_items_and_a_single_item(make_app, monkeypatch):
    client = make_app().test_client()
    fast, slow = _both(client, monkeypatch, {"customers": BAD_ITEMS})
    assert fast == slow
    fast, slow = _both(client, monkeypatch, {"customers": _items(1, 3, bad=False)})
    assert fast == slow


def test_column_encoder_decided_at_load(tiny_bundle_root, monkeypatch):
    # built with the engine for bundles whose answers it writes; None sends batches to the
    # dict path (the mixture, RFM scores, CLV-weighted gains)
    engine = ScoringEngine(load_current(tiny_bundle_root))
    assert isinstance(column_encoder(engine), BatchEncoder)
    tables = engine.tables
    for name in ("mixture", "rfm", "gain_weight"):
        with monkeypatch.context() as m:
            m.setattr(engine, "tables", dataclasses.replace(tables, **{name: object()}))
            assert column_encoder(engine) is None, name


# ---- the compact form: the same information, rebuilt by expand_compact -------------------------
def _full_and_compact(client, body):
    full = client.post("/recommend", json=body, headers=SCORING)
    compact = client.post("/recommend", json={**body, "answer": "compact"}, headers=SCORING)
    assert full.status_code == compact.status_code == 200, compact.get_json()
    return orjson.loads(full.get_data()), orjson.loads(compact.get_data())


@pytest.mark.parametrize("options", OPTIONS)
def test_compact_answer_rebuilds_the_full_one(make_app, targeting_root, options):
    # demo bundle, and the one with control groups, a costly campaign and an uplift model
    for root, n, seed in ((None, 300, 1), (targeting_root, 400, 2)):
        app = make_app() if root is None else make_app(MODEL_ROOT=str(root))
        body = {"customers": _items(n, seed), **options}
        full, compact = _full_and_compact(app.test_client(), body)
        assert expand_compact(compact) == full
        RecommendCompactBatchResponse().load(compact)  # the documented shape
        # the static parts are sent once: the results carry none of them
        text = orjson.dumps(compact["results"])
        for part in (b'"rules"', b'"segment_stats"', b'"segment_name"', b'"ranking"'):
            assert part not in text, part
        assert len(orjson.dumps(compact)) < len(orjson.dumps(full)) / 2
        if root is not None and not options:
            assert "holdout_note" in compact and compact["offer_fields"][3] == "uplift"
            assert any(r.get("held_out") for r in compact["results"])
            assert any("reason" in r for r in compact["results"])


def test_compact_answer_of_only_bad_items_and_a_default_answer(make_app):
    client = make_app().test_client()
    full, compact = _full_and_compact(client, {"customers": BAD_ITEMS})
    assert compact["segments"] == {} and expand_compact(compact) == full
    full, compact = _full_and_compact(client, {"customers": _items(1, 3, bad=False)})
    assert expand_compact(compact) == full
    # "full" named is the default answer, byte for byte
    body = {"customers": _items(20, 4)}
    named = client.post("/recommend", json={**body, "answer": "full"}, headers=SCORING)
    plain = client.post("/recommend", json=body, headers=SCORING)
    assert named.get_data() == plain.get_data()


@pytest.mark.parametrize(
    ("extra", "word"), [({"explain": True}, "explain"), ({"commit": True}, "commit")]
)
def test_compact_refused_where_the_dict_path_answers(make_app, extra, word):
    client = make_app().test_client()
    body = {"customers": _items(5, 5, bad=False), "answer": "compact", **extra}
    r = client.post("/recommend", json=body, headers=SCORING)
    assert r.status_code == 422
    message = r.get_json()["error"]["fields"]["answer"][0]
    assert word in message and "compact" in message


@pytest.mark.parametrize("value", ["short", 1, None, True])
def test_answer_option_checked(make_app, value):
    client = make_app().test_client()
    r = client.post(
        "/recommend", json={"customers": _items(2, 6, bad=False), "answer": value}, headers=SCORING
    )
    assert r.status_code == 422 and "answer" in r.get_json()["error"]["fields"]
    # one customer's /recommend has no answer forms
    one = {k: v for k, v in _items(1, 7, bad=False)[0].items()}
    r = client.post("/recommend", json={**one, "answer": "compact"}, headers=SCORING)
    assert r.status_code == 422 and "answer" in r.get_json()["error"]["fields"]


def test_compact_refused_for_a_bundle_with_caps(make_app, tmp_path, tiny_bundle_root):
    bundle = copy.copy(load_current(tiny_bundle_root))
    bundle.campaigns = [
        Campaign(**{**c.to_dict(), "per_customer_day": 1}) for c in bundle.campaigns
    ]
    bundle.manifest = {k: v for k, v in bundle.manifest.items() if k in ("config", "metrics")}
    write_bundle(bundle, tmp_path, version="v-capped-compact")
    client = make_app(MODEL_ROOT=str(tmp_path)).test_client()
    body = {"customers": _items(3, 8, bad=False), "answer": "compact"}
    r = client.post("/recommend", json=body, headers=SCORING)
    assert r.status_code == 422
    assert "frequency caps" in r.get_json()["error"]["fields"]["answer"][0]


@pytest.mark.parametrize(
    "ids",
    [
        ["c-1", "c-2", "c-3"],
        [7, -1, 0, 2**40],
        ["a", 3, 'é\u0000"\\', "x" * 128, "with space", 'quote"d'],
        ["has,comma", "b"],
        ["a", None, 5],
        ["only"],
    ],
)
@pytest.mark.parametrize("first", [0, 2])
def test_batch_openings_are_each_ids_own_text(ids, first):
    # the answers' openings cut from one orjson text agree with one orjson call per id
    positions = list(range(first, first + len(ids)))
    expected = [
        (b"," if p else b"")
        + (b"{" if cid is None else b'{"customer_id":' + orjson.dumps(cid) + b",")
        for cid, p in zip(ids, positions, strict=True)
    ]
    text, start, length = _opens(ids, positions)
    assert [
        text[s : s + n] for s, n in zip(start.tolist(), length.tolist(), strict=True)
    ] == expected


def test_pieces_joined_in_python_without_numba(make_app, monkeypatch, targeting_root):
    # the answer's slots copied out by numba or joined in Python: the same bytes
    client = make_app(MODEL_ROOT=str(targeting_root)).test_client()
    body = {"customers": _items(200, 4)}
    for extra in ({}, {"answer": "compact"}, {"channel": "email", "answer": "compact"}):
        compiled = client.post("/recommend", json={**body, **extra}, headers=SCORING)
        with monkeypatch.context() as m:
            m.setattr(batch_answer, "_copy", None)
            joined = client.post("/recommend", json={**body, **extra}, headers=SCORING)
        assert compiled.status_code == joined.status_code == 200
        assert compiled.get_data() == joined.get_data()


@pytest.mark.parametrize("keep", [batch_answer.KEEP_BYTES, 0])
def test_answers_of_growing_and_shrinking_batches(make_app, monkeypatch, keep):
    # the answer buffers a thread keeps grow with the answers (or are not kept at all): every
    # answer still equals the dict path's, whatever came before it
    monkeypatch.setattr(batch_answer, "KEEP_BYTES", keep)
    client = make_app().test_client()
    for n, seed in ((1, 5), (300, 6), (2, 7), (50, 8)):
        fast, slow = _both(client, monkeypatch, {"customers": _items(n, seed, bad=False)})
        assert fast == slow


@pytest.mark.parametrize("options", [*OPTIONS, {"answer": "compact", "top_k": 2}])
def test_batch_decoded_from_bytes_same_bytes(make_app, monkeypatch, targeting_root, options):
    # an all-valid batch is decoded straight from the body (RequestSchemas.decode_batch): the
    # same bytes as the column check's path and as the dict path
    from api.schemas import RequestSchemas

    items = [i for i in _items(300, 9, bad=False) if i.get("return_rate") != 1.5]
    decoded = []
    real = RequestSchemas.decode_batch

    def spy(self, body):
        out = real(self, body)
        decoded.append(out is not None)
        return out

    for root in (None, targeting_root):
        client = (make_app() if root is None else make_app(MODEL_ROOT=str(root))).test_client()
        body = {"customers": items, **options}
        with monkeypatch.context() as m:
            m.setattr(RequestSchemas, "decode_batch", spy)
            plain = client.post("/recommend", json=body, headers=SCORING)
        with monkeypatch.context() as m:
            m.setattr(RequestSchemas, "decode_batch", lambda self, body: None)
            checked = client.post("/recommend", json=body, headers=SCORING)
        assert plain.status_code == checked.status_code == 200
        assert plain.get_data() == checked.get_data()
        if options.get("answer") != "compact":
            fast, slow = _both(client, monkeypatch, body)
            assert fast == slow == plain.get_data()
    assert decoded == [True, True]


@pytest.mark.parametrize("answer", ["full", "compact"])
@pytest.mark.parametrize("bad", [False, True])
def test_answer_written_in_one_pass_or_by_slots(make_app, monkeypatch, targeting_root, bad, answer):
    # ids that are texts without commas or integers: the answer is written by one numba pass;
    # the same bytes as the slots (held out, reasons, error entries, uplift, channels included)
    items = _items(300, 11, bad=bad)
    for k, item in enumerate(items):
        if isinstance(item, dict):
            item["customer_id"] = k if k % 3 else f"c-{k}"
    passes = []
    real = batch_answer._written
    monkeypatch.setattr(batch_answer, "_written", lambda *a: passes.append(a) or real(*a))
    for root in (None, targeting_root):
        client = (make_app() if root is None else make_app(MODEL_ROOT=str(root))).test_client()
        for options in ({}, {"top_k": 1, "channel": "email"}):
            body = {"customers": items, "answer": answer, **options}
            one_pass = client.post("/recommend", json=body, headers=SCORING)
            with monkeypatch.context() as m:
                m.setattr(batch_answer, "_write", None)
                slots = client.post("/recommend", json=body, headers=SCORING)
            assert one_pass.status_code == slots.status_code == 200
            assert one_pass.get_data() == slots.get_data()
            if answer == "full" and not bad:  # and the dict path's
                fast, slow = _both(client, monkeypatch, body)
                assert fast == slow == one_pass.get_data()
    assert len(passes) == 4 + (4 if answer == "full" and not bad else 0)
    assert any(a[12] for a in passes)  # some customers had tails of their own
    assert len(batch_answer._write.signatures) == 1  # warmed up at load, never again
