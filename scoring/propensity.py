"""LightGBM propensity prediction: compiled trees when the bundle has them, else LightGBM's C API
without the per-call set-up of ``Booster.predict``.

With a :class:`scoring.compiled_trees.CompiledForest` (verified and checked against the booster
when the bundle loaded), probabilities come from native code; a large forest walks a batch's
customers grouped by segment and ordered by its most-split feature (:func:`walk_order`).
Feature contributions (``explain``) come from one native walk of the trees that sums the
per-leaf tables of :mod:`scoring.attribution` as it goes (:mod:`scoring.attribution_walk`; else
LightGBM's ``pred_leaf`` and a gather-sum over the tables, the same bits) or, as an option,
LightGBM's exact TreeSHAP.

``Booster.predict`` builds a new predictor object, deep-copies its parameters and checks its
input on every call: about 40 µs before any tree is walked, which is a large share of a
single-customer request. This wrapper calls the same C function (``LGBM_BoosterPredictForMat``)
with everything prepared once. It produces the same numbers as ``Booster.predict`` (tested
against it); the bundle loader has already pinned LightGBM's major.minor version, so the
private handle it relies on is the one it was written for.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from lightgbm import basic as _lgb

from scoring.attribution import METHODS, PathAttribution

log = logging.getLogger(__name__)

_PREDICT_NORMAL = 0
_PREDICT_LEAF = 2
_PREDICT_CONTRIB = 3
_ROW_MAJOR = 1
_FLOAT64 = 1
_DOUBLE_P = ctypes.POINTER(ctypes.c_double)
#: up to this many rows, LightGBM's single-row fast path (set up once per thread) is cheaper
#: than one matrix call, whose C side builds a predictor on every call
SINGLE_ROW_MAX = 32
#: from this many trees on, compiled trees walk a batch's rows faster campaign by campaign than
#: customer by customer. Measured 2026-12-06 (bench/RESULTS.md, 1,000 customers, CPU time): 194
#: trees of 31 leaves 4.26 ms customer-major, 3.69 campaign-major; 20 trees of 15 leaves 0.24
#: and 0.35 (a small forest gains from a customer's rows taking nearly the same paths in a row)
CAMPAIGN_MAJOR_TREES = 64


def walk_order(segment: np.ndarray, column: np.ndarray) -> np.ndarray:
    """Positions of customers grouped by ``segment`` and, within a segment, by ``column``
    (missing values last): consecutive customers then take similar paths through the trees, so
    the CPU predicts the compiled trees' branches better. Measured 2026-12-06 on a busy machine
    (1,000 customers x 6 campaigns, 194 trees of 31 leaves, CPU time, medians of 15 interleaved
    rounds): the compiled trees took 3.59 ms as given, 3.05 by segment, 2.95 by segment then
    the most-split column; ``ScoringEngine.propensities`` 3.65 -> 3.09 ms with the ~40 us this
    order costs. A 20-tree forest gained about what the order costs, so only a forest of
    :data:`CAMPAIGN_MAJOR_TREES` or more is ordered. Which order does not change any
    probability: each row is walked alone."""
    key = segment.astype(np.float64)
    finite = column[np.isfinite(column)]
    if finite.size:
        lo, hi = float(finite.min()), float(finite.max())
        # the column mapped into [0, 0.5] (missing: 0.75) and added to the segment id, so the
        # segments stay apart
        part = (column - lo) * (0.5 / (hi - lo) if hi > lo else 0.0)
        key += np.where(np.isfinite(part), part, 0.75)
    return np.argsort(key)


class PropensityModel:
    """Response probabilities (and feature contributions) from a LightGBM Booster."""

    def __init__(
        self,
        booster: Any,
        *,
        threads: int = 1,
        compiled: Any = None,
        order_slots: Sequence[int] = (),
    ) -> None:
        self.booster = booster
        self.n_features = booster.num_feature()
        #: the compiled trees (None: LightGBM computes the probabilities)
        self.compiled = compiled
        #: the batch row order this model walks faster (scoring.features.ResponseLayout.dense_rows):
        #: campaign by campaign for a large compiled forest, else customer by customer
        self.campaign_major = compiled is not None and booster.num_trees() >= CAMPAIGN_MAJOR_TREES
        #: a large compiled forest also walks a batch's customers in :func:`walk_order` by this
        #: model column, the one of ``order_slots`` (customer features) it splits on most
        #: (None: customers as given)
        self.order_slot = self._most_split(order_slots) if self.campaign_major else None
        self._threads = max(1, int(threads or 1))
        self._params = _lgb._c_str(f"num_threads={int(threads)}" if threads else "")
        self._fast = hasattr(booster, "_handle") and hasattr(_lgb, "_LIB")
        self._local = threading.local()
        self._pool: ThreadPoolExecutor | None = None
        self._attribution: PathAttribution | None = None
        #: the one-pass native walk of path attribution (None: pred_leaf + the tables)
        self._walker: Any = None

    def _most_split(self, slots: Sequence[int]) -> int | None:
        counts = self.booster.feature_importance("split")
        best = max(slots, key=lambda slot: counts[slot], default=None)
        return None if best is None or counts[best] == 0 else int(best)

    def _fast_config(self, kind: int = _PREDICT_NORMAL) -> ctypes.c_void_p:
        """This thread's single-row FastConfig handle for prediction ``kind`` (not shareable
        between threads)."""
        name = "handle" if kind == _PREDICT_NORMAL else f"handle_{kind}"
        handle = getattr(self._local, name, None)
        if handle is None:
            handle = ctypes.c_void_p()
            _lgb._safe_call(
                _lgb._LIB.LGBM_BoosterPredictForMatSingleRowFastInit(
                    self.booster._handle,
                    ctypes.c_int(kind),
                    ctypes.c_int(0),
                    ctypes.c_int(-1),
                    ctypes.c_int(_FLOAT64),
                    ctypes.c_int32(self.n_features),
                    _lgb._c_str("num_threads=1"),
                    ctypes.byref(handle),
                )
            )
            setattr(self._local, name, handle)
            # freed with the thread's local storage when this model is dropped
            setattr(self._local, f"finalizer_{kind}", _FastConfigFree(handle))
        return handle

    def _single_rows(
        self, rows: np.ndarray, kind: int = _PREDICT_NORMAL, width: int = 1
    ) -> np.ndarray:
        rows = np.ascontiguousarray(rows, dtype=np.float64)
        handle = self._fast_config(kind)
        out = np.empty(rows.shape[0] * width, dtype=np.float64)
        got = ctypes.c_int64(0)
        fn = _lgb._LIB.LGBM_BoosterPredictForMatSingleRowFast
        base = rows.ctypes.data
        step = rows.strides[0]
        out_p = out.ctypes.data
        for i in range(rows.shape[0]):
            _lgb._safe_call(
                fn(
                    handle,
                    ctypes.c_void_p(base + i * step),
                    ctypes.byref(got),
                    ctypes.c_void_p(out_p + 8 * width * i),
                )
            )
        return out if width == 1 else out.reshape(rows.shape[0], width)

    def _call(self, rows: np.ndarray, kind: int, width: int) -> np.ndarray:
        rows = np.ascontiguousarray(rows, dtype=np.float64)
        n = rows.shape[0]
        out = np.empty(n * width, dtype=np.float64)
        got = ctypes.c_int64(0)
        _lgb._safe_call(
            _lgb._LIB.LGBM_BoosterPredictForMat(
                self.booster._handle,
                rows.ctypes.data_as(_DOUBLE_P),
                ctypes.c_int(_FLOAT64),
                ctypes.c_int32(n),
                ctypes.c_int32(rows.shape[1]),
                ctypes.c_int(_ROW_MAJOR),
                ctypes.c_int(kind),
                ctypes.c_int(0),
                ctypes.c_int(-1),
                self._params,
                ctypes.byref(got),
                out.ctypes.data_as(_DOUBLE_P),
            )
        )
        if got.value != out.shape[0]:
            raise RuntimeError(f"LightGBM returned {got.value} values, expected {out.shape[0]}")
        return out if width == 1 else out.reshape(n, width)

    def predict_rows(self, rows: list[list[float]]) -> list[float]:
        """Probabilities for a few rows given as Python lists (the one-customer request path).

        Skips numpy entirely: each row goes to LightGBM's single-row fast path as a ctypes
        array, which costs a microsecond where building an ndarray costs several.
        """
        if self.compiled is not None:
            return self.compiled.predict_rows(rows)
        if not self._fast:
            return self.booster.predict(np.asarray(rows, dtype=np.float64)).tolist()
        handle = self._fast_config()
        fn = _lgb._LIB.LGBM_BoosterPredictForMatSingleRowFast
        row_type = ctypes.c_double * self.n_features
        out = ctypes.c_double(0.0)
        got = ctypes.c_int64(0)
        result = []
        for row in rows:
            if len(row) != self.n_features:
                raise ValueError(f"row has {len(row)} values, the model {self.n_features}")
            _lgb._safe_call(fn(handle, row_type(*row), ctypes.byref(got), ctypes.byref(out)))
            result.append(out.value)
        return result

    def predict_variants(self, row: list[float], slot: int, values: list[float]) -> list[float]:
        """``predict_rows`` of copies of ``row`` with ``row[slot]`` set to each of ``values``
        (one customer's row for each campaign)."""
        if self.compiled is not None:
            return self.compiled.predict_variants(row, slot, values)
        rows = []
        for v in values:
            r = list(row)
            r[slot] = v
            rows.append(r)
        return self.predict_rows(rows)

    def predict(self, rows: np.ndarray) -> np.ndarray:
        """Probability of response for each row (n, n_features) -> (n,)."""
        if rows.shape[0] == 0:
            return np.empty(0, dtype=np.float64)
        if rows.shape[1] != self.n_features:
            raise ValueError(f"rows have {rows.shape[1]} columns, the model {self.n_features}")
        if self.compiled is not None:
            return self._compiled_predict(rows)
        if not self._fast:
            return self.booster.predict(rows)
        if rows.shape[0] <= SINGLE_ROW_MAX:
            return self._single_rows(rows)
        return self._call(rows, _PREDICT_NORMAL, 1)

    def campaigns_at_once(self, campaign_slot: int, campaigns: int) -> bool:
        """Whether :meth:`predict_campaigns` scores rows whose model column ``campaign_slot``
        holds the pool position of one of ``campaigns`` campaigns (the compiled trees' one-walk
        entry, built for that column and pool size)."""
        forest = self.compiled
        return (
            forest is not None
            and forest.campaigns == campaigns > 0
            and forest.campaign_slot == campaign_slot
        )

    def predict_campaigns(self, rows: np.ndarray) -> np.ndarray:
        """(n, campaigns) probabilities of customer rows (n, n_features) with each campaign, in
        one walk of the trees per customer (see :meth:`campaigns_at_once`); split across
        ``threads`` like :meth:`predict`. The same bits as :meth:`predict` of the n x campaigns
        rows."""
        forest = self.compiled
        n = rows.shape[0]
        if self._threads == 1 or n * forest.campaigns < 10_000:
            return forest.predict_campaigns(rows)
        rows = np.ascontiguousarray(rows, dtype=np.float64)
        out = np.empty((n, forest.campaigns), dtype=np.float64)
        bounds = np.linspace(0, n, self._threads + 1).astype(int).tolist()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self._threads)
        done = self._pool.map(
            lambda k: forest.predict_campaigns(
                rows[bounds[k] : bounds[k + 1]], out[bounds[k] : bounds[k + 1]]
            ),
            range(self._threads),
        )
        for _ in done:
            pass
        return out

    def _compiled_predict(self, rows: np.ndarray) -> np.ndarray:
        """Compiled trees over ``rows``, split across ``threads`` (the native code drops the GIL)."""
        n = rows.shape[0]
        if self._threads == 1 or n < 10_000:
            return self.compiled.predict(rows)
        rows = np.ascontiguousarray(rows, dtype=np.float64)
        out = np.empty(n, dtype=np.float64)
        bounds = np.linspace(0, n, self._threads + 1).astype(int).tolist()
        # one pool for the model's life: callers score big tables block by block
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self._threads)
        done = self._pool.map(
            lambda k: self.compiled.predict(rows[bounds[k] : bounds[k + 1]], out[bounds[k] :]),
            range(self._threads),
        )
        for _ in done:
            pass
        return out

    def contributions(self, rows: np.ndarray, method: str = "path") -> np.ndarray:
        """Per-feature contributions in log-odds (n, n_features), by ``method``: "path"
        (Saabas path attribution from per-leaf tables, :mod:`scoring.attribution`) or
        "treeshap" (LightGBM's exact TreeSHAP, its bias column dropped)."""
        if rows.shape[0] == 0:
            return np.empty((0, self.n_features), dtype=np.float64)
        if method == "path":
            if self._attribution is None:
                self.prepare_explain()
            if self._walker is not None:
                return self._walker.contributions(rows)
            return self.attribution.contributions(self.leaves(rows))
        if method != "treeshap":
            raise ValueError(f"method={method!r} should be one of {METHODS}")
        if not self._fast:
            return self.booster.predict(rows, pred_contrib=True)[:, :-1]
        return self._call(rows, _PREDICT_CONTRIB, self.n_features + 1)[:, :-1]

    @property
    def attribution(self) -> PathAttribution:
        """The per-leaf contribution tables (built on first use: a bundle nobody asks to
        explain does not pay for them; :meth:`prepare_explain` builds them at load)."""
        if self._attribution is None:
            attribution = PathAttribution(self.booster)
            self._attribution = attribution
            self._walker = attribution.walker(self.leaves)
            if self._walker is None:
                log.info("explain: path attribution from pred_leaf and tables (no native walk)")
        return self._attribution

    def prepare_explain(self) -> None:
        """Build the path-attribution tables now (at load, before a worker forks)."""
        _ = self.attribution

    def leaves(self, rows: np.ndarray) -> np.ndarray:
        """(n, trees) index of the leaf each row reaches in every tree (``pred_leaf``)."""
        n_trees = self.attribution.n_trees
        if not self._fast:
            return self.booster.predict(rows, pred_leaf=True).reshape(rows.shape[0], n_trees)
        if rows.shape[0] <= SINGLE_ROW_MAX:
            return self._single_rows(rows, _PREDICT_LEAF, n_trees)
        return self._call(rows, _PREDICT_LEAF, n_trees)


class _FastConfigFree:
    """Frees a LightGBM FastConfig handle when garbage-collected."""

    def __init__(self, handle: ctypes.c_void_p) -> None:
        self.handle = handle

    def __del__(self) -> None:
        if self.handle and _lgb is not None and getattr(_lgb, "_LIB", None) is not None:
            _lgb._LIB.LGBM_FastConfigFree(self.handle)
            self.handle = None
