"""Batch ``/recommend`` answers written straight to JSON bytes, equal byte for byte to the dicts.

Written here rather than taken from a library because of a measurement: for a 1,000-customer
batch, building the ~6,000 answer items as dicts (each a copy of the campaign's fixed fields
plus its numbers) and serialising them, with the segment stats repeated in every answer, took
about a third of the request (bench/RESULTS.md). Most of an answer does not depend on the
customer: the campaign fields of each (segment, campaign) pair, the segment fields, the segment
stats. Those are serialised by orjson once (per model version, or per request for the stats) and
only the numbers change per customer; orjson formats those too, a whole numpy array in one call
(the same digits it writes for each Python float, tested). The pieces are put in place with
numpy's object-array indexing and joined once.

:func:`encode_results` covers what the dict path (``ScoringEngine.recommend`` + the view's
``_answer`` + ``orjson.dumps``) does for a batch without ``explain``, frequency caps or a commit,
items named by a stored customer id, a Gaussian-mixture bundle, or a bundle with RFM scores or
CLV-weighted gains (:func:`column_encoder` is None for those bundles); the view sends those
through the dict path. tests/api/test_api_batch_answer.py holds both to the same bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import orjson

from scoring.engine import Choice, Ranking, ScoringEngine
from scoring.policy import NO_ID_NOTE

_NUMPY = orjson.OPT_SERIALIZE_NUMPY
_EXPECTED_VALUE = b',"expected_value":'
_EXPECTED_GAIN = b',"expected_gain":'
_WITHOUT = b',"probability_without":'
_UPLIFT = b',"uplift":'


def _objects(values: Sequence[bytes]) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = list(values)
    return out


class BatchEncoder:
    """The fixed JSON pieces of one engine's answers, serialised once."""

    def __init__(self, engine: ScoringEngine) -> None:
        t = engine.tables
        self.engine = engine
        self.uplift = engine.has_uplift_model
        k, m = len(t.segment_names), len(t.campaigns)
        #: (channel asked?) -> (k, m) item openings: the campaign's fields up to the probability
        self.items = {}
        #: the same for a customer with an id when the pool has control groups: the item's
        #: rules end with the control-group draw it passed (None: no control groups)
        self.items_with_id: dict[bool, np.ndarray] | None = {} if t.has_holdout else None
        for with_channel, table in t.items.items():
            pieces = np.empty((k, m), dtype=object)
            for s in range(k):
                for j in range(m):
                    pieces[s, j] = orjson.dumps(table[s][j])[:-1] + b',"probability":'
            self.items[with_channel] = pieces
            if self.items_with_id is not None:
                with_id = np.empty((k, m), dtype=object)
                for s in range(k):
                    for j in range(m):
                        item = table[s][j]
                        rule = engine.control_rule(item["campaign_id"])
                        if rule is not None:
                            item = {**item, "rules": [*item["rules"], rule]}
                        with_id[s, j] = orjson.dumps(item)[:-1] + b',"probability":'
                self.items_with_id[with_channel] = with_id
        #: per segment: its fields up to the distance's value
        self.heads = _objects(
            [
                b'"segment_id":%d,"segment_name":%s,"distance":'
                % (s, orjson.dumps(t.segment_names[s]))
                for s in range(k)
            ]
        )
        #: (k, 2) per segment and atypical flag: from the flag to the campaigns' opening bracket
        self.middles = np.empty((k, 2), dtype=object)
        for s in range(k):
            for flag in (0, 1):
                self.middles[s, flag] = (
                    b',"atypical":%s,"recommended_campaigns":%s,"campaigns":['
                    % (b"true" if flag else b"false", orjson.dumps(t.defaults[s]))
                )
        self.ranking = b'],"ranking":' + orjson.dumps(engine.ranking) + b',"held_out":'
        self.note = b',"holdout_note":' + orjson.dumps(NO_ID_NOTE) if t.has_holdout else b""
        self.campaign_ids = engine.campaign_ids
        #: the pieces of the compact form (``"answer": "compact"``)
        self.compact = CompactEncoder(self)

    def tails(
        self, stats: Callable[[int], dict[str, Any]], segments: np.ndarray
    ) -> dict[int, bytes]:
        """Per segment present: ``,"segment_stats":{...}}`` (the answer's last field)."""
        return {
            s: b',"segment_stats":' + orjson.dumps(stats(s)) + b"}"
            for s in np.unique(segments).tolist()
        }


def _opens(ids: Sequence[Any], positions: Sequence[int]) -> np.ndarray:
    """Each answer's opening: ``{"customer_id":...,`` (or ``{`` without an id), with the comma
    that separates it from the entry before."""
    n = len(ids)
    kinds = set(map(type, ids))
    if n and kinds <= {str, int} and (str not in kinds or "," not in "".join(map(str, ids))):
        # no id holds a comma: orjson's text of the whole list, each comma widened into the
        # close of one opening and the start of the next, cut at a NUL (orjson escapes any NUL
        # in a text): a few passes over one short text instead of two additions per customer
        # (0.33 -> 0.09 ms for 1,000 customers, bench/RESULTS.md)
        text = orjson.dumps(list(ids))[1:-1].replace(b",", b',\x00,{"customer_id":')
        out = _objects((b',{"customer_id":' + text + b",").split(b"\x00"))
    else:
        out = _objects(
            [b"{" if cid is None else b'{"customer_id":' + orjson.dumps(cid) + b"," for cid in ids]
        )
        out = b"," + out
    if n and positions[0] == 0:
        out[0] = out[0][1:]
    return out


def column_encoder(engine: ScoringEngine) -> BatchEncoder | None:
    """The engine's encoder, built once when the bundle loads; None when its batches cannot take
    the column path: no response model, or a Gaussian-mixture bundle, RFM scores or
    CLV-weighted gains (answer fields only the dict path writes)."""
    t = engine.tables
    if (
        not engine.has_response_model
        or t.mixture is not None
        or t.rfm is not None
        or t.gain_weight is not None
    ):
        return None
    return BatchEncoder(engine)


def encode_results(
    encoder: BatchEncoder,
    r: Ranking,
    choice: Choice,
    ids: Sequence[Any],
    stats: Callable[[int], dict[str, Any]],
    *,
    channel: bool,
    total: int,
    positions: Sequence[int],
    errors: dict[int, Any],
    before: bytes = b"",
    after: bytes = b"",
) -> bytes:
    """The ``results`` array of a batch answer (``[...]``), ``total`` entries long, between
    ``before`` and ``after`` (the rest of the body: joined once, the answer is not copied again).

    Entry ``positions[i]`` is customer i of the ranking; every other entry is the error
    envelope in ``errors`` under its position.
    """
    a = r.assignment
    n = len(ids)
    seg = a.segment
    cust, camp = choice.customer, choice.campaign
    t = cust.shape[0]
    counts = choice.counts
    uplift = encoder.uplift
    stride = 11 if uplift else 7

    # every number of the answer in one orjson call
    p = r.probability[cust, camp]
    numbers = [a.distance, p, r.expected_value[cust, camp], r.gain[cust, camp]]
    if uplift:
        w = r.probability_without[cust, camp]
        numbers += [w, p - w]
    text = orjson.dumps(np.concatenate(numbers), option=_NUMPY)[1:-1].split(b",") if n else []
    distance = text[:n]

    # slots: per customer 4 head pieces + stride per offer + 1 tail; per error 1
    start, first, out = _slots(total, positions, 5 + stride * counts)

    out[first] = _opens(ids, positions)
    out[first + 1] = encoder.heads[seg]
    out[first + 2] = _objects(distance)
    out[first + 3] = encoder.middles[seg, a.atypical.astype(np.intp)]

    if t:
        offsets, _, slot = _offer_slots(first, counts, stride)
        pieces = encoder.items[channel][seg[cust], camp]
        if encoder.items_with_id is not None:
            # offers to customers with an id passed the control-group draw: their rules say so
            known = np.fromiter((cid is not None for cid in ids), dtype=bool, count=n)[cust]
            pieces[known] = encoder.items_with_id[channel][seg[cust][known], camp[known]]
        out[slot] = pieces
        out[slot + 1] = _objects(text[n : n + t])
        k = 2
        if uplift:
            out[slot + 2] = _WITHOUT
            out[slot + 3] = _objects(text[n + 3 * t : n + 4 * t])
            out[slot + 4] = _UPLIFT
            out[slot + 5] = _objects(text[n + 4 * t : n + 5 * t])
            k = 6
        out[slot + k] = _EXPECTED_VALUE
        out[slot + k + 1] = _objects(text[n + t : n + 2 * t])
        out[slot + k + 2] = _EXPECTED_GAIN
        out[slot + k + 3] = _objects(text[n + 2 * t : n + 3 * t])
        ends = np.full(t, b"},", dtype=object)
        ends[offsets[counts > 0] + counts[counts > 0] - 1] = b"}"
        out[slot + k + 4] = ends

    # the tail: ranking, control groups, reason, segment stats; most customers share their
    # segment's, the others (held out, nothing offered, no id under control groups) get their own
    stats_of = encoder.tails(stats, seg)
    plain = np.empty(len(encoder.heads), dtype=object)
    for s, tail in stats_of.items():
        plain[s] = encoder.ranking + b"[]" + tail
    tails = plain[seg]
    special = {i for i, reason in enumerate(choice.reasons) if reason is not None}
    special.update(i for i, held in enumerate(choice.held) if held)
    if encoder.note:
        special.update(i for i, cid in enumerate(ids) if cid is None)
    for i in special:
        held, reason = choice.held[i], choice.reasons[i]
        tail = encoder.ranking + orjson.dumps([encoder.campaign_ids[j] for j in held])
        if ids[i] is None:
            tail += encoder.note
        if reason is not None:
            tail += b',"reason":' + orjson.dumps(reason)
        tails[i] = tail + stats_of[int(seg[i])]
    out[first + 4 + stride * counts] = tails
    return _joined(out, start, errors, before + b"[", b"]" + after)


def _slots(
    total: int, positions: Sequence[int], customer_sizes: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An answer's ``results`` as slots: ``customer_sizes`` pieces for each scored customer (at
    ``positions``), one for every error entry. Returns each entry's first slot, each scored
    customer's first slot and the empty slot array."""
    sizes = np.ones(total, dtype=np.intp)
    pos = np.asarray(positions, dtype=np.intp)
    sizes[pos] = customer_sizes
    start = np.zeros(total, dtype=np.intp)
    np.cumsum(sizes[:-1], out=start[1:])
    return start, start[pos], np.empty(int(sizes.sum()), dtype=object)


def _offer_slots(
    first: np.ndarray, counts: np.ndarray, stride: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each customer's first offer, each offer's rank within its customer, and each offer's
    first slot (after the customer's 4 head pieces, ``stride`` slots an offer)."""
    offsets = np.zeros(counts.shape[0], dtype=np.intp)
    np.cumsum(counts[:-1], out=offsets[1:])
    rank_in = np.arange(int(counts.sum())) - np.repeat(offsets, counts)
    return offsets, rank_in, np.repeat(first + 4, counts) + stride * rank_in


def _joined(
    out: np.ndarray, start: np.ndarray, errors: dict[int, Any], before: bytes, after: bytes
) -> bytes:
    """The filled slots, each error entry in its own, between ``before`` and ``after``."""
    for i, entry in errors.items():
        out[start[i]] = (b"," if i else b"") + orjson.dumps(entry, option=_NUMPY)
    pieces = [before]
    pieces += out.tolist()
    pieces.append(after)
    return b"".join(pieces)


# ---- the compact form (``"answer": "compact"``) ------------------------------------------------
#: what each offer array of a compact answer holds, in order
OFFER_FIELDS = ("campaign_id", "probability", "expected_value", "expected_gain")
OFFER_FIELDS_UPLIFT = (
    "campaign_id",
    "probability",
    "probability_without",
    "uplift",
    "expected_value",
    "expected_gain",
)
#: the campaign fields the ``campaigns`` table holds once (the rest of a full item is per
#: segment and channel: ``eligibility`` and ``rules``, in the ``segments`` table)
_CAMPAIGN_FIELDS = ("name", "channel", "value", "cost")


class CompactEncoder:
    """The fixed JSON pieces of one engine's compact answers, serialised once."""

    def __init__(self, encoder: BatchEncoder) -> None:
        engine = encoder.engine
        t = engine.tables
        self.encoder = encoder
        k = len(t.segment_names)
        ids = engine.campaign_ids
        campaigns = {}
        for j, cid in enumerate(ids):
            item = t.items[False][0][j]
            entry = {name: item[name] for name in _CAMPAIGN_FIELDS}
            if t.has_holdout:
                # the rule an offer to a customer *with an id* passed, added to its rules
                entry["control_rule"] = engine.control_rule(cid)
            campaigns[cid] = entry
        fields = OFFER_FIELDS_UPLIFT if encoder.uplift else OFFER_FIELDS
        #: the body's fixed fields up to the segments table
        self.head = (
            b',"answer":"compact","ranking":'
            + orjson.dumps(engine.ranking)
            + b',"offer_fields":'
            + orjson.dumps(list(fields))
            + (b',"holdout_note":' + orjson.dumps(NO_ID_NOTE) if t.has_holdout else b"")
            + b',"campaigns":'
            + orjson.dumps(campaigns)
            + b',"segments":{'
        )
        #: (channel asked?) -> per segment: its key and fields up to its stats
        self.segments = {
            with_channel: [
                b'"%d":' % s
                + orjson.dumps(
                    {
                        "segment_name": t.segment_names[s],
                        "recommended_campaigns": t.defaults[s],
                        "offers": {
                            ids[j]: {
                                "eligibility": table[s][j]["eligibility"],
                                "rules": table[s][j]["rules"],
                            }
                            for j in range(len(ids))
                        },
                    }
                )[:-1]
                + b',"segment_stats":'
                for s in range(k)
            ]
            for with_channel, table in t.items.items()
        }
        self.heads = _objects([b'"segment_id":%d,"distance":' % s for s in range(k)])
        self.middles = _objects([b',"atypical":false,"offers":[', b',"atypical":true,"offers":['])
        #: (2, m) per campaign: an offer's opening, up to its numbers, as a customer's first
        #: offer (row 1) or after another (row 0: with the comma between)
        self.offers = np.empty((2, len(ids)), dtype=object)
        self.offers[1] = _objects([b"[" + orjson.dumps(cid) + b"," for cid in ids])
        self.offers[0] = b"," + self.offers[1]
        self.plain_tail = b'],"held_out":[]}'

    def tables(
        self, stats: Callable[[int], dict[str, Any]], segments: np.ndarray, channel: bool
    ) -> bytes:
        """From ``,"answer"`` to the end of the ``segments`` table (segments present only)."""
        fixed = self.segments[channel]
        parts = [fixed[s] + orjson.dumps(stats(s)) + b"}" for s in np.unique(segments).tolist()]
        return self.head + b",".join(parts) + b"}"


def encode_compact(
    compact: CompactEncoder,
    r: Ranking,
    choice: Choice,
    ids: Sequence[Any],
    stats: Callable[[int], dict[str, Any]],
    *,
    channel: bool,
    total: int,
    positions: Sequence[int],
    errors: dict[int, Any],
    before: bytes = b"",
    after: bytes = b"",
) -> bytes:
    """A compact batch answer's tables and ``results`` array (see :func:`expand_compact`),
    between ``before`` and ``after``; entries as in :func:`encode_results`."""
    a = r.assignment
    n = len(ids)
    seg = a.segment
    cust, camp = choice.customer, choice.campaign
    t = cust.shape[0]
    counts = choice.counts
    encoder = compact.encoder

    # every offer's numbers in one orjson call, "[[p,ev,g],[...]]", cut after each "]": a piece
    # is an offer's numbers and its closing bracket
    p = r.probability[cust, camp]
    columns = [p]
    if encoder.uplift:
        w = r.probability_without[cust, camp]
        columns += [w, p - w]
    columns += [r.expected_value[cust, camp], r.gain[cust, camp]]
    numbers = orjson.dumps(np.column_stack(columns), option=_NUMPY)[2:-1].split(b",[") if t else []
    distance = orjson.dumps(a.distance, option=_NUMPY)[1:-1].split(b",") if n else []

    # slots: per customer 4 head pieces + 2 per offer + 1 tail; per error 1
    start, first, out = _slots(total, positions, 5 + 2 * counts)

    out[first] = _opens(ids, positions)
    out[first + 1] = compact.heads[seg]
    out[first + 2] = _objects(distance)
    out[first + 3] = compact.middles[a.atypical.astype(np.intp)]
    if t:
        _, rank_in, slot = _offer_slots(first, counts, 2)
        out[slot] = compact.offers[(rank_in == 0).astype(np.intp), camp]
        out[slot + 1] = _objects(numbers)

    tails = np.full(n, compact.plain_tail, dtype=object)
    special = {i for i, reason in enumerate(choice.reasons) if reason is not None}
    special.update(i for i, held in enumerate(choice.held) if held)
    for i in special:
        tail = b'],"held_out":' + orjson.dumps([encoder.campaign_ids[j] for j in choice.held[i]])
        reason = choice.reasons[i]
        if reason is not None:
            tail += b',"reason":' + orjson.dumps(reason)
        tails[i] = tail + b"}"
    out[first + 4 + 2 * counts] = tails
    head = before + compact.tables(stats, seg, channel) + b',"results":['
    return _joined(out, start, errors, head, b"]" + after)


def expand_compact(body: dict[str, Any]) -> dict[str, Any]:
    """A compact batch answer (parsed) -> the full answer for the same request.

    The reference for what the compact form means (clients may copy it; the tests hold it to
    the full answer): each result takes its segment's fields and stats from ``segments``, each
    offer its campaign's fields from ``campaigns`` and its ``eligibility`` and ``rules`` from its
    segment's ``offers`` (plus the campaign's ``control_rule``, when there is one, for a customer
    with an id), and a customer without an id gets ``holdout_note`` when the answer has one.
    """
    campaigns, segments = body["campaigns"], body["segments"]
    names = body["offer_fields"]
    note = body.get("holdout_note")
    results = []
    for entry in body["results"]:
        if "error" in entry:
            results.append(entry)
            continue
        seg = segments[str(entry["segment_id"])]
        with_id = "customer_id" in entry
        offers = []
        for values in entry["offers"]:
            offer = dict(zip(names, values, strict=True))
            cid = offer["campaign_id"]
            static = campaigns[cid]
            rules = seg["offers"][cid]["rules"]
            rule = static.get("control_rule")
            if with_id and rule is not None:
                rules = [*rules, rule]
            offers.append(
                {
                    "campaign_id": cid,
                    **{name: static[name] for name in _CAMPAIGN_FIELDS},
                    "eligibility": seg["offers"][cid]["eligibility"],
                    "rules": rules,
                    **{name: offer[name] for name in names[1:]},
                }
            )
        full = {"customer_id": entry["customer_id"]} if with_id else {}
        full.update(
            segment_id=entry["segment_id"],
            segment_name=seg["segment_name"],
            distance=entry["distance"],
            atypical=entry["atypical"],
            recommended_campaigns=seg["recommended_campaigns"],
            campaigns=offers,
            ranking=body["ranking"],
            held_out=entry["held_out"],
        )
        if note is not None and not with_id:
            full["holdout_note"] = note
        if "reason" in entry:
            full["reason"] = entry["reason"]
        full["segment_stats"] = seg["segment_stats"]
        results.append(full)
    return {"model_version": body["model_version"], "results": results}
