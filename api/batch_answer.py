"""Batch ``/recommend`` answers written straight to JSON bytes, equal byte for byte to the dicts.

Written here rather than taken from a library because of a measurement: for a 1,000-customer
batch, building the ~6,000 answer items as dicts (each a copy of the campaign's fixed fields
plus its numbers) and serialising them, with the segment stats repeated in every answer, took
about a third of the request (bench/RESULTS.md). Most of an answer does not depend on the
customer: the campaign fields of each (segment, campaign) pair, the segment fields, the segment
stats. Those are serialised by orjson once (per model version, or per request for the stats) and
only the numbers change per customer; orjson formats those too, a whole numpy array in one call
(the same digits it writes for each Python float, tested).

An answer is laid out as slots, each a (start, length) pair of integer arrays pointing into one
byte source: the fixed pieces (one buffer per model version), then the request's own texts (the
numbers, the customers' ids, the segment stats). The slots are filled with numpy's integer
indexing and the bytes copied out by one small numba loop (:func:`_copy_pieces`): putting
~20,000-50,000 bytes objects in place and joining them cost about twice as much
(bench/RESULTS.md, "Batch `/recommend`, fourth pass"). Without numba the same slots are joined in
Python. When every customer has an id that is an integer or a text without commas (the usual
batch), one numba pass (:func:`_written`) writes the answer instead, reading each number and id
straight from orjson's texts: the same bytes as the slots (tested), without laying them out
first (full 1.77 -> 1.39 ms, compact 0.96 -> 0.98 against a pass written for the compact form
alone, which it replaced). Every byte it writes goes through a bounds check.

:func:`encode_results` covers what the dict path (``ScoringEngine.recommend`` + the view's
``_answer`` + ``orjson.dumps``) does for a batch without ``explain``, frequency caps or a commit,
items named by a stored customer id, a Gaussian-mixture bundle, or a bundle with RFM scores or
CLV-weighted gains (:func:`column_encoder` is None for those bundles); the view sends those
through the dict path. tests/api/test_api_batch_answer.py holds both to the same bytes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from scoring.engine import Choice, Ranking, ScoringEngine
from scoring.policy import NO_ID_NOTE

try:  # numba is a service requirement (scoring/attribution_walk.py); without it, Python joins
    import numba
except ImportError:  # pragma: no cover - exercised only where numba is missing
    numba = None

_NUMPY = orjson.OPT_SERIALIZE_NUMPY
_EXPECTED_VALUE = b',"expected_value":'
_EXPECTED_GAIN = b',"expected_gain":'
_WITHOUT = b',"probability_without":'
_UPLIFT = b',"uplift":'
#: an answer's opening for a customer with an id (the id's text follows)
_ID_OPEN = b',{"customer_id":'
_COMMA = 44
#: the largest answer buffers a thread keeps between answers (bytes; see _Fixed.scratch)
KEEP_BYTES = 16 << 20


if numba is not None:
    from numba.core import cgutils
    from numba.extending import intrinsic

    @intrinsic
    def _move(typingctx: Any, out: Any, at: Any, source: Any, start: Any, n: Any) -> Any:
        """``out[at:at + n] = source[start:start + n]`` as one ``memcpy`` (both contiguous
        uint8 arrays): numba copies a slice byte by byte, ~10x slower on a 2.7 MB answer."""
        sig = numba.types.void(out, at, source, start, n)

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            to = context.make_array(signature.args[0])(context, builder, args[0])
            frm = context.make_array(signature.args[2])(context, builder, args[2])
            dst = builder.gep(to.data, [args[1]])
            src = builder.gep(frm.data, [args[3]])
            cgutils.raw_memcpy(builder, dst, src, args[4], 1)
            return context.get_dummy_value()

        return sig, codegen

    def _copy_pieces(
        source: np.ndarray, start: np.ndarray, length: np.ndarray, out: np.ndarray
    ) -> None:
        """``out`` = the pieces ``source[start[k]:start[k] + length[k]]`` one after another."""
        at = 0
        for k in range(start.shape[0]):
            _move(out, at, source, start[k], length[k])
            at += length[k]

    @numba.njit(inline="always", cache=True)
    def _put(out: np.ndarray, o: int, source: np.ndarray, start: int, n: int) -> int:
        """Copy a piece to ``out[o:]``; the next position, or -1 (sticky) when it would not
        fit or is not in ``source``: the pass never writes outside ``out``."""
        if o < 0 or n < 0 or o + n > out.shape[0] or start < 0 or start + n > source.shape[0]:
            return -1
        _move(out, o, source, start, n)
        return o + n

    @numba.njit(inline="always", cache=True)
    def _comma(out: np.ndarray, o: int) -> int:
        """A comma at ``out[o]``; the next position, or -1 as :func:`_put`."""
        if o < 0 or o >= out.shape[0]:
            return -1
        out[o] = 44
        return o + 1

    def _write_answer(
        fixed: np.ndarray,
        extra: np.ndarray,
        numbers: np.ndarray,
        ids: np.ndarray,
        heads: np.ndarray,
        head: np.ndarray,
        middles: np.ndarray,
        middle: np.ndarray,
        counts: np.ndarray,
        pieces: np.ndarray,
        piece: np.ndarray,
        first: int,
        width: int,
        labels: np.ndarray,
        ends: np.ndarray,
        tails: np.ndarray,
        tail: np.ndarray,
        errors: np.ndarray,
        edges: np.ndarray,
        out: np.ndarray,
    ) -> int:
        """An answer written into ``out`` in one pass; returns its length.

        ``numbers``: orjson's text of the customers' distances, then each offer's ``width``
        numbers; ``ids``: orjson's text of the customers' ids (none holds a comma). Pieces are
        (start, length) rows in ``fixed``: the id's opening (``edges[2]``), each customer's
        head and middle (rows ``head[i]``, ``middle[i]``), each offer's opening (row
        ``piece[k]`` of ``pieces``, ``first`` rows further for a customer's first offer) and,
        between an offer's numbers,
        ``labels`` (none: the numbers as orjson wrote them, commas and all, in one piece),
        ``ends`` (an offer's end: not last, last; length 0 for none). In ``extra``: before and
        after the results (``edges[0]``, ``edges[1]``), each customer's tail (row ``tail[i]``
        of ``tails``), each error entry (length -1: an entry that is a customer).
        """
        n = head.shape[0]
        o = 0
        o = _put(out, o, extra, edges[0, 0], edges[0, 1])
        # the offers' numbers follow the n distances
        last_number = numbers.shape[0] - 1
        # every scan stops at a separator at the latest at the text's closing ']': a scan
        # starts only within the text (checked), so it never reads past it
        q = 1
        for _ in range(n):
            if q > last_number:
                return -1
            while numbers[q] != 44 and numbers[q] != 93:
                q += 1
            q += 1
        d = 1
        p = 1
        last_id = ids.shape[0] - 1
        i = 0
        k = 0
        for e in range(errors.shape[0]):
            if e > 0:
                o = _comma(out, o)
            if errors[e, 1] >= 0:
                o = _put(out, o, extra, errors[e, 0], errors[e, 1])
                continue
            if i >= n or k + counts[i] > piece.shape[0]:
                return -1  # never: one customer per entry without an error, one piece an offer
            o = _put(out, o, fixed, edges[2, 0], edges[2, 1])
            s = p
            while p < last_id and ids[p] != 44:
                p += 1
            o = _put(out, o, ids, s, p - s)
            p += 1
            o = _comma(out, o)
            h = head[i]
            o = _put(out, o, fixed, heads[h, 0], heads[h, 1])
            s = d
            if d > last_number or q > last_number + 1:
                return -1
            while numbers[d] != 44 and numbers[d] != 93:
                d += 1
            o = _put(out, o, numbers, s, d - s)
            d += 1
            h = middle[i]
            o = _put(out, o, fixed, middles[h, 0], middles[h, 1])
            for r in range(counts[i]):
                h = piece[k] + (first if r == 0 else 0)
                o = _put(out, o, fixed, pieces[h, 0], pieces[h, 1])
                if q > last_number:
                    return -1
                if labels.shape[0] == 0:  # the offer's numbers as orjson wrote them: one piece
                    s = q
                    c = 0
                    while True:
                        if numbers[q] == 44 or numbers[q] == 93:
                            c += 1
                            if c == width or q == last_number:
                                break
                        q += 1
                    o = _put(out, o, numbers, s, q - s)
                    q += 1
                for c in range(width if labels.shape[0] > 0 else 0):
                    if c > 0:
                        o = _put(out, o, fixed, labels[c - 1, 0], labels[c - 1, 1])
                    s = q
                    if q > last_number:
                        return -1
                    while numbers[q] != 44 and numbers[q] != 93:
                        q += 1
                    o = _put(out, o, numbers, s, q - s)
                    q += 1
                end = 1 if r == counts[i] - 1 else 0
                if ends[end, 1] > 0:
                    o = _put(out, o, fixed, ends[end, 0], ends[end, 1])
                k += 1
            h = tail[i]
            o = _put(out, o, extra, tails[h, 0], tails[h, 1])
            i += 1
        return _put(out, o, extra, edges[1, 0], edges[1, 1])

    def _jit(fn: Any) -> Any:
        try:  # cached on disk like explain's walk (NUMBA_CACHE_DIR), else compiled per process
            return numba.njit(cache=True, nogil=True, boundscheck=False)(fn)
        except RuntimeError:  # "cannot cache function ...: no locator available"
            return numba.njit(nogil=True, boundscheck=False)(fn)

    _copy = _jit(_copy_pieces)
    _write = _jit(_write_answer)
else:  # pragma: no cover - exercised only where numba is missing
    _copy = _write = None


@dataclass(frozen=True)
class _Table:
    """Fixed pieces of one kind, any shape: where each starts in the fixed buffer, its length."""

    start: np.ndarray
    length: np.ndarray

    @property
    def pairs(self) -> np.ndarray:
        """(start, length) along a last axis, made once (the one-pass writer reads these)."""
        made = self.__dict__.get("_pairs")
        if made is None:
            made = np.stack([self.start, self.length], axis=-1)
            object.__setattr__(self, "_pairs", made)
        return made


class _Fixed:
    """The fixed pieces of one model version's answers, in one byte buffer."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._size = 0
        self.buffer = np.empty(0, dtype=np.uint8)

    def table(self, pieces: Any) -> _Table:
        """A table of ``pieces`` (bytes, or nested lists / object arrays of them)."""
        values = np.empty(np.shape(pieces), dtype=object)
        values[...] = pieces
        start = np.empty(values.shape, dtype=np.intp)
        length = np.empty(values.shape, dtype=np.intp)
        for at, piece in np.ndenumerate(values):
            start[at], length[at] = self._size, len(piece)
            self._parts.append(piece)
            self._size += len(piece)
        return _Table(start, length)

    def freeze(self) -> None:
        """Join the pieces into :attr:`buffer` (after the last table)."""
        self.buffer = np.frombuffer(b"".join(self._parts), dtype=np.uint8)
        self._local = threading.local()

    def scratch(self, name: str, size: int) -> np.ndarray:
        """A byte array of at least ``size`` for this thread's answers: ``"source"`` starts with
        :attr:`buffer`, ``"out"`` receives the answer.

        Kept from one answer to the next (up to :data:`KEEP_BYTES`): a fresh 2.7 MB array on
        every full 1,000-customer answer cost ~2,000 page faults, more than copying into it.
        """
        kept = getattr(self._local, name, None)
        if kept is not None and kept.shape[0] >= size:
            return kept
        grown = np.empty(max(size, 0 if kept is None else 2 * kept.shape[0]), dtype=np.uint8)
        if name == "source":
            grown[: self.buffer.shape[0]] = self.buffer
        if grown.shape[0] <= KEEP_BYTES:
            setattr(self._local, name, grown)
        return grown


class _Answer:
    """One answer being laid out: its slots and the request's own texts."""

    def __init__(self, fixed: _Fixed, slots: int) -> None:
        self.fixed = fixed
        self.start = np.empty(slots, dtype=np.intp)
        self.length = np.empty(slots, dtype=np.intp)
        self._texts: list[bytes] = []
        self._size = fixed.buffer.shape[0]

    def text(self, data: bytes) -> int:
        """Add ``data`` to the source; where it starts there."""
        at = self._size
        self._texts.append(data)
        self._size += len(data)
        return at

    def put(self, slots: Any, table: _Table, index: Any = ()) -> None:
        """Slots ``slots`` take the table's pieces at ``index``."""
        self.start[slots] = table.start[index]
        self.length[slots] = table.length[index]

    def put_text(self, slot: int, data: bytes) -> None:
        """Slot ``slot`` takes ``data``."""
        self.start[slot] = self.text(data)
        self.length[slot] = len(data)

    def numbers(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each value's JSON text, formatted by one orjson call: (starts, lengths) in the source."""
        text = orjson.dumps(values, option=_NUMPY)  # "[a,b,...]": no comma within a number
        base = self.text(text)
        bounds = np.empty(values.shape[0] + 1, dtype=np.intp)
        commas = np.flatnonzero(np.frombuffer(text, dtype=np.uint8) == _COMMA)
        if commas.shape[0] != max(values.shape[0] - 1, 0):
            raise AssertionError("a number's text holds a comma")  # never: orjson's numbers
        bounds[0], bounds[1:-1], bounds[-1] = 0, commas, len(text) - 1
        return base + bounds[:-1] + 1, bounds[1:] - bounds[:-1] - 1

    def bytes(self) -> bytes:
        """The slots' pieces, one after another."""
        joined = b"".join(self._texts)
        fixed = self.fixed.buffer
        if _copy is None:  # no numba: the same pieces joined in Python (tested)
            source = fixed.tobytes() + joined
            return b"".join(
                [
                    source[s : s + n]
                    for s, n in zip(self.start.tolist(), self.length.tolist(), strict=True)
                ]
            )
        f = fixed.shape[0]
        source = self.fixed.scratch("source", f + len(joined))
        source[f : f + len(joined)] = np.frombuffer(joined, dtype=np.uint8)
        size = int(self.length.sum())
        out = self.fixed.scratch("out", size)
        _copy(source, self.start, self.length, out)
        return out[:size].tobytes()


class BatchEncoder:
    """The fixed JSON pieces of one engine's answers, serialised once."""

    def __init__(self, engine: ScoringEngine) -> None:
        t = engine.tables
        self.engine = engine
        self.uplift = engine.has_uplift_model
        k, m = len(t.segment_names), len(t.campaigns)
        self.fixed = fixed = _Fixed()
        #: (channel asked?) -> (k, m) item openings: the campaign's fields up to the probability
        self.items: dict[bool, _Table] = {}
        #: the same for a customer with an id when the pool has control groups: the item's
        #: rules end with the control-group draw it passed (None: no control groups)
        self.items_with_id: dict[bool, _Table] | None = {} if t.has_holdout else None
        for with_channel, table in t.items.items():
            self.items[with_channel] = fixed.table(
                [
                    [orjson.dumps(table[s][j])[:-1] + b',"probability":' for j in range(m)]
                    for s in range(k)
                ]
            )
            if self.items_with_id is not None:
                with_id = []
                for s in range(k):
                    row = []
                    for j in range(m):
                        item = table[s][j]
                        rule = engine.control_rule(item["campaign_id"])
                        if rule is not None:
                            item = {**item, "rules": [*item["rules"], rule]}
                        row.append(orjson.dumps(item)[:-1] + b',"probability":')
                    with_id.append(row)
                self.items_with_id[with_channel] = fixed.table(with_id)
        #: per segment: its fields up to the distance's value
        self.heads = fixed.table(
            [
                b'"segment_id":%d,"segment_name":%s,"distance":'
                % (s, orjson.dumps(t.segment_names[s]))
                for s in range(k)
            ]
        )
        #: (k, 2) per segment and atypical flag: from the flag to the campaigns' opening bracket
        self.middles = fixed.table(
            [
                [
                    b',"atypical":%s,"recommended_campaigns":%s,"campaigns":['
                    % (b"true" if flag else b"false", orjson.dumps(t.defaults[s]))
                    for flag in (0, 1)
                ]
                for s in range(k)
            ]
        )
        #: the numbers' labels, and an item's end (row 1: the customer's last item)
        self.labels = fixed.table([_WITHOUT, _UPLIFT, _EXPECTED_VALUE, _EXPECTED_GAIN])
        self.ends = fixed.table([b"},", b"}"])
        #: an answer's opening for a customer with an id, without the comma before it
        self.id_open = fixed.table([_ID_OPEN[1:]])
        self.ranking = b'],"ranking":' + orjson.dumps(engine.ranking) + b',"held_out":'
        self.note = b',"holdout_note":' + orjson.dumps(NO_ID_NOTE) if t.has_holdout else b""
        self.campaign_ids = engine.campaign_ids
        #: the pieces of the compact form (``"answer": "compact"``)
        self.compact = CompactEncoder(self)
        fixed.freeze()
        if _copy is not None:  # compiled (or loaded from numba's cache) now, not in a request
            one = np.ones(1, dtype=np.intp)
            _copy(np.zeros(1, dtype=np.uint8), one - 1, one, np.empty(1, dtype=np.uint8))
            text, pairs = np.frombuffer(b"[]", dtype=np.uint8), np.zeros((3, 2), dtype=np.intp)
            rows, none = pairs[:0], one[:0]
            _write(
                fixed.buffer, text, text, text, rows, none, rows, none, none, rows, none, 0, 1,
                rows, pairs[:2], rows, none, rows, pairs, np.empty(1, dtype=np.uint8),
            )  # fmt: skip

    def tails(
        self, stats: Callable[[int], dict[str, Any]], segments: np.ndarray
    ) -> dict[int, bytes]:
        """Per segment present: ``,"segment_stats":{...}}`` (the answer's last field)."""
        return {
            s: b',"segment_stats":' + orjson.dumps(stats(s)) + b"}"
            for s in np.unique(segments).tolist()
        }


def _opens(ids: Sequence[Any], positions: Sequence[int]) -> tuple[bytes, np.ndarray, np.ndarray]:
    """Each answer's opening: ``{"customer_id":...,`` (or ``{`` without an id), with the comma
    that separates it from the entry before, as one text and each opening's (start, length)."""
    n = len(ids)
    listed = _ids_text(ids)
    if listed is not None:
        # no id holds a comma: orjson's text of the whole list, each comma widened into the
        # close of one opening and the start of the next; the commas give each id's length
        # (0.33 -> 0.09 ms for 1,000 customers, bench/RESULTS.md)
        listed = listed[1:-1]
        text = _ID_OPEN + listed.replace(b",", b"," + _ID_OPEN) + b","
        ends = np.empty(n + 1, dtype=np.intp)
        ends[0] = -1
        ends[1:-1] = np.flatnonzero(np.frombuffer(listed, dtype=np.uint8) == _COMMA)
        ends[-1] = len(listed)
        length = np.diff(ends) - 1 + len(_ID_OPEN) + 1
    else:
        pieces = [b",{" if cid is None else _ID_OPEN + orjson.dumps(cid) + b"," for cid in ids]
        text = b"".join(pieces)
        length = np.fromiter(map(len, pieces), dtype=np.intp, count=n)
    start = np.zeros(n, dtype=np.intp)
    np.cumsum(length[:-1], out=start[1:])
    if n and positions[0] == 0:  # the first entry: no comma before it
        start[0] += 1
        length[0] -= 1
    return text, start, length


def _ids_text(ids: Sequence[Any]) -> bytes | None:
    """orjson's text of the ids when each is a text or an integer and none holds a comma (the
    commas then separate the ids), else None."""
    kinds = set(map(type, ids))
    if ids and kinds <= {str, int} and (str not in kinds or "," not in "".join(map(str, ids))):
        return orjson.dumps(list(ids))
    return None


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
    ``before`` and ``after`` (the rest of the body: laid out with it, not copied again).

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

    ids_text = _ids_text(ids)
    if _write is not None and ids_text is not None:
        return _full_in_one_pass(
            encoder, r, choice, ids_text, stats, channel, total, errors, before, after
        )

    # slots: per customer 4 head pieces + stride per offer + 1 tail; per error 1
    answer, start, first = _slots(encoder.fixed, total, positions, 5 + stride * counts)
    answer.put_text(0, before + b"[")
    answer.put_text(-1, b"]" + after)

    # every number of the answer in one orjson call
    p = r.probability[cust, camp]
    numbers = [a.distance, p, r.expected_value[cust, camp], r.gain[cust, camp]]
    if uplift:
        w = r.probability_without[cust, camp]
        numbers += [w, p - w]
    at, length = answer.numbers(np.concatenate(numbers))

    _put_opens(answer, first, ids, positions)
    answer.put(first + 1, encoder.heads, seg)
    answer.start[first + 2], answer.length[first + 2] = at[:n], length[:n]
    answer.put(first + 3, encoder.middles, (seg, a.atypical.astype(np.intp)))

    if t:
        offsets, _, slot = _offer_slots(first, counts, stride)
        index = (seg[cust], camp)
        answer.put(slot, encoder.items[channel], index)
        if encoder.items_with_id is not None:
            # offers to customers with an id passed the control-group draw: their rules say so
            known = np.fromiter((cid is not None for cid in ids), dtype=bool, count=n)[cust]
            with_id = encoder.items_with_id[channel]
            answer.put(slot[known], with_id, (index[0][known], index[1][known]))

        def put_numbers(into: np.ndarray, block: int) -> None:
            answer.start[into] = at[n + block * t : n + (block + 1) * t]
            answer.length[into] = length[n + block * t : n + (block + 1) * t]

        put_numbers(slot + 1, 0)
        k = 2
        if uplift:
            answer.put(slot + 2, encoder.labels, 0)
            put_numbers(slot + 3, 3)
            answer.put(slot + 4, encoder.labels, 1)
            put_numbers(slot + 5, 4)
            k = 6
        answer.put(slot + k, encoder.labels, 2)
        put_numbers(slot + k + 1, 1)
        answer.put(slot + k + 2, encoder.labels, 3)
        put_numbers(slot + k + 3, 2)
        last = np.zeros(t, dtype=np.intp)
        last[offsets[counts > 0] + counts[counts > 0] - 1] = 1
        answer.put(slot + k + 4, encoder.ends, last)

    # the tail: ranking, control groups, reason, segment stats; most customers share their
    # segment's, the others (held out, nothing offered, no id under control groups) get their own
    stats_of = encoder.tails(stats, seg)
    plain_start = np.zeros(encoder.heads.start.shape[0], dtype=np.intp)
    plain_length = np.zeros_like(plain_start)
    for s, tail in stats_of.items():
        piece = encoder.ranking + b"[]" + tail
        plain_start[s], plain_length[s] = answer.text(piece), len(piece)
    tail_slot = first + 4 + stride * counts
    answer.start[tail_slot] = plain_start[seg]
    answer.length[tail_slot] = plain_length[seg]
    special = set(_special(choice))
    if encoder.note:
        special.update(i for i, cid in enumerate(ids) if cid is None)
    for i in special:
        held, reason = choice.held[i], choice.reasons[i]
        tail = encoder.ranking + orjson.dumps([encoder.campaign_ids[j] for j in held])
        if ids[i] is None:
            tail += encoder.note
        if reason is not None:
            tail += b',"reason":' + orjson.dumps(reason)
        answer.put_text(int(tail_slot[i]), tail + stats_of[int(seg[i])])
    _put_errors(answer, start, errors)
    return answer.bytes()


def _full_in_one_pass(
    encoder: BatchEncoder,
    r: Ranking,
    choice: Choice,
    ids_text: bytes,
    stats: Callable[[int], dict[str, Any]],
    channel: bool,
    total: int,
    errors: dict[int, Any],
    before: bytes,
    after: bytes,
) -> bytes:
    """:func:`encode_results` for customers that all have an id: one pass (:func:`_written`)."""
    a = r.assignment
    seg = a.segment
    cust, camp = choice.customer, choice.campaign
    n, t = seg.shape[0], cust.shape[0]
    p = r.probability[cust, camp]
    columns = [p]
    labels = _Table(encoder.labels.start[2:], encoder.labels.length[2:])
    if encoder.uplift:
        w = r.probability_without[cust, camp]
        columns += [w, p - w]
        labels = encoder.labels
    columns += [r.expected_value[cust, camp], r.gain[cust, camp]]
    width = len(columns)
    values = np.empty(n + width * t, dtype=np.float64)
    values[:n] = a.distance
    for c, column in enumerate(columns):
        values[n + c :: width] = column
    stats_of = encoder.tails(stats, seg)
    present = sorted(stats_of)
    plain = [encoder.ranking + b"[]" + stats_of[s] for s in present]
    tails = {}
    for i in _special(choice):  # every customer has an id here: no holdout note
        held, reason = choice.held[i], choice.reasons[i]
        tail = encoder.ranking + orjson.dumps([encoder.campaign_ids[j] for j in held])
        if reason is not None:
            tail += b',"reason":' + orjson.dumps(reason)
        tails[i] = tail + stats_of[int(seg[i])]
    # offers to customers with an id passed the control-group draw: their rules say so
    items = (
        encoder.items[channel] if encoder.items_with_id is None else encoder.items_with_id[channel]
    )
    return _written(
        encoder,
        values,
        ids_text,
        (encoder.heads, seg),
        (encoder.middles, (seg, a.atypical.astype(np.intp))),
        choice.counts,
        (items, (seg[cust], camp)),
        0,
        width,
        labels,
        encoder.ends,
        (plain, np.searchsorted(present, seg)),
        tails,
        total,
        errors,
        before + b"[",
        b"]" + after,
    )


def _slots(
    fixed: _Fixed, total: int, positions: Sequence[int], customer_sizes: np.ndarray
) -> tuple[_Answer, np.ndarray, np.ndarray]:
    """An answer laid out as slots: ``before`` (slot 0), ``results``' entries, ``after`` (the
    last slot); ``customer_sizes`` slots for each scored customer (at ``positions``), one for
    every error entry. Returns the answer, each entry's first slot and each scored customer's
    first slot."""
    sizes = np.ones(total, dtype=np.intp)
    pos = np.asarray(positions, dtype=np.intp)
    sizes[pos] = customer_sizes
    start = np.ones(total, dtype=np.intp)
    np.cumsum(sizes[:-1], out=start[1:])
    start[1:] += 1
    return _Answer(fixed, int(sizes.sum()) + 2), start, start[pos]


def _put_opens(
    answer: _Answer, slots: np.ndarray, ids: Sequence[Any], positions: Sequence[int]
) -> None:
    text, start, length = _opens(ids, positions)
    answer.start[slots] = answer.text(text) + start
    answer.length[slots] = length


def _offer_slots(
    first: np.ndarray, counts: np.ndarray, stride: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each customer's first offer, each offer's rank within its customer, and each offer's
    first slot (after the customer's 4 head pieces, ``stride`` slots an offer)."""
    offsets = np.zeros(counts.shape[0], dtype=np.intp)
    np.cumsum(counts[:-1], out=offsets[1:])
    rank_in = np.arange(int(counts.sum())) - np.repeat(offsets, counts)
    return offsets, rank_in, np.repeat(first + 4, counts) + stride * rank_in


def _put_errors(answer: _Answer, start: np.ndarray, errors: dict[int, Any]) -> None:
    """Each error entry in its own slot."""
    for i, entry in errors.items():
        answer.put_text(int(start[i]), (b"," if i else b"") + orjson.dumps(entry, option=_NUMPY))


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
_PLAIN_TAIL = b'],"held_out":[]}'


class CompactEncoder:
    """The fixed JSON pieces of one engine's compact answers, serialised once."""

    def __init__(self, encoder: BatchEncoder) -> None:
        engine = encoder.engine
        t = engine.tables
        self.encoder = encoder
        fixed = encoder.fixed
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
        #: how many numbers an offer array holds
        self.width = len(fields) - 1
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
        self.heads = fixed.table([b'"segment_id":%d,"distance":' % s for s in range(k)])
        self.middles = fixed.table(
            [b',"atypical":false,"offers":[', b',"atypical":true,"offers":[']
        )
        #: (2, m) per campaign: an offer's opening, up to its numbers, as a customer's first
        #: offer (row 1) or after another (row 0: closing the one before)
        self.offers = fixed.table(
            [
                [b"],[" + orjson.dumps(cid) + b"," for cid in ids],
                [b"[" + orjson.dumps(cid) + b"," for cid in ids],
            ]
        )
        #: a customer's end when nothing is held out and no reason given: without offers
        #: (row 0) or closing the last offer (row 1)
        self.plain_tails = fixed.table([_PLAIN_TAIL, b"]" + _PLAIN_TAIL])
        #: an offer's end (not last, last): none, the next opening or the tail closes it
        self.ends = fixed.table([b"", b""])

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
    width = compact.width

    # every number in one orjson call: the distances, then each offer's numbers side by side
    # (an offer's text is then one piece: from its first number to its last)
    p = r.probability[cust, camp]
    columns = [p]
    if encoder.uplift:
        w = r.probability_without[cust, camp]
        columns += [w, p - w]
    columns += [r.expected_value[cust, camp], r.gain[cust, camp]]
    values = np.empty(n + width * t, dtype=np.float64)
    values[:n] = a.distance
    for c, column in enumerate(columns):
        values[n + c :: width] = column
    head = before + compact.tables(stats, seg, channel) + b',"results":['
    ids_text = _ids_text(ids)
    if _write is not None and ids_text is not None:
        offered = counts > 0
        tails = {}
        for i in _special(choice):
            tails[i] = (b"]" if offered[i] else b"") + _compact_tail(compact, choice, i)
        return _written(
            encoder,
            values,
            ids_text,
            (compact.heads, seg),
            (compact.middles, a.atypical.astype(np.intp)),
            counts,
            (compact.offers, camp),  # row 0 of (2, m): after another offer; row 1: first
            len(encoder.campaign_ids),
            width,
            None,
            compact.ends,
            ([_PLAIN_TAIL, b"]" + _PLAIN_TAIL], offered.astype(np.intp)),
            tails,
            total,
            errors,
            head,
            b"]" + after,
        )

    # slots: per customer 4 head pieces + 2 per offer + 1 tail; per error 1
    answer, start, first = _slots(encoder.fixed, total, positions, 5 + 2 * counts)
    answer.put_text(0, head)
    answer.put_text(-1, b"]" + after)
    at, length = answer.numbers(values)

    _put_opens(answer, first, ids, positions)
    answer.put(first + 1, compact.heads, seg)
    answer.start[first + 2], answer.length[first + 2] = at[:n], length[:n]
    answer.put(first + 3, compact.middles, a.atypical.astype(np.intp))
    if t:
        _, rank_in, slot = _offer_slots(first, counts, 2)
        answer.put(slot, compact.offers, ((rank_in == 0).astype(np.intp), camp))
        q = n + width * np.arange(t)
        answer.start[slot + 1] = at[q]
        answer.length[slot + 1] = at[q + width - 1] + length[q + width - 1] - at[q]

    tail_slot = first + 4 + 2 * counts
    offered = (counts > 0).astype(np.intp)
    answer.put(tail_slot, compact.plain_tails, offered)
    for i in _special(choice):
        tail = _compact_tail(compact, choice, i)
        answer.put_text(int(tail_slot[i]), (b"]" if offered[i] else b"") + tail)
    _put_errors(answer, start, errors)
    return answer.bytes()


def _special(choice: Choice) -> list[int]:
    """The customers whose answers end in a tail of their own: held out of a campaign, or told
    why nothing is offered."""
    return choice.special.tolist()


def _compact_tail(compact: CompactEncoder, choice: Choice, i: int) -> bytes:
    """A compact answer's own tail: the campaigns it is held out of, the reason."""
    tail = b'],"held_out":' + orjson.dumps(
        [compact.encoder.campaign_ids[j] for j in choice.held[i]]
    )
    reason = choice.reasons[i]
    if reason is not None:
        tail += b',"reason":' + orjson.dumps(reason)
    return tail + b"}"


def _written(
    encoder: BatchEncoder,
    values: np.ndarray,
    ids_text: bytes,
    heads: tuple[_Table, Any],
    middles: tuple[_Table, Any],
    counts: np.ndarray,
    pieces: tuple[_Table, Any],
    first: int,
    width: int,
    labels: _Table | None,
    ends: _Table,
    plain: tuple[list[bytes], np.ndarray],
    tails: dict[int, bytes],
    total: int,
    errors: dict[int, Any],
    before: bytes,
    after: bytes,
) -> bytes:
    """An answer written by one numba pass (``_write_answer``): the same bytes as its slots
    (tested), without laying ~20,000-50,000 of them out first.

    ``values``: the distances, then each offer's ``width`` numbers; ``pieces``: each offer's
    opening (``first`` rows further for a customer's first); ``plain``: the tails most
    customers share and which one each takes; ``tails``: the others' own.
    """
    n = counts.shape[0]
    parts = [before, after]
    size = len(before) + len(after)
    shared, which = plain
    tail_rows = np.empty((len(shared) + len(tails), 2), dtype=np.intp)
    tail = np.array(which, dtype=np.intp)
    for k, (i, text) in enumerate([*enumerate(shared), *tails.items()]):
        tail_rows[k] = size, len(text)
        parts.append(text)
        size += len(text)
        if k >= len(shared):
            tail[i] = k
    entries = np.full((total, 2), -1, dtype=np.intp)
    for i, entry in errors.items():
        text = orjson.dumps(entry, option=_NUMPY)
        entries[i] = size, len(text)
        parts.append(text)
        size += len(text)
    fixed, opening = encoder.fixed, encoder.id_open
    edges = np.array(
        [[0, len(before)], [len(before), len(after)], [opening.start[0], opening.length[0]]],
        dtype=np.intp,
    )
    head_rows, head = _rows(*heads)
    middle_rows, middle = _rows(*middles)
    piece_rows, piece = _rows(*pieces)
    label_rows = np.zeros((0, 2), dtype=np.intp) if labels is None else labels.pairs
    numbers = np.frombuffer(orjson.dumps(values, option=_NUMPY), dtype=np.uint8)
    ids = np.frombuffer(ids_text, dtype=np.uint8)
    t = piece.shape[0]
    # the most bytes the answer can take: every piece at its longest
    bound = size + numbers.shape[0] + ids.shape[0] + total
    bound += n * int(edges[2, 1] + 1 + head_rows[:, 1].max(initial=0))
    bound += n * int(middle_rows[:, 1].max(initial=0) + tail_rows[:, 1].max(initial=0))
    bound += t * int(piece_rows[:, 1].max(initial=0) + label_rows[:, 1].sum())
    bound += t * int(ends.length.max())
    out = fixed.scratch("out", bound)
    written = _write(
        fixed.buffer,
        np.frombuffer(b"".join(parts), dtype=np.uint8),
        numbers,
        ids,
        head_rows,
        head,
        middle_rows,
        middle,
        counts.astype(np.intp, copy=False),
        piece_rows,
        piece,
        first,
        width,
        label_rows,
        ends.pairs,
        tail_rows,
        tail,
        entries,
        edges,
        out,
    )
    if written < 0:  # never: the bound counts every piece (tests hold the bytes to the slots')
        raise AssertionError("the answer did not fit its bound")
    return out[:written].tobytes()


def _rows(table: _Table, index: Any) -> tuple[np.ndarray, np.ndarray]:
    """The table's (start, length) rows, flat, and the row of each piece at ``index`` (an
    index array, or a tuple of them into a table of more dimensions)."""
    if isinstance(index, tuple):
        index = np.ravel_multi_index(index, table.start.shape)
    return table.pairs.reshape(-1, 2), np.asarray(index, dtype=np.intp)


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
