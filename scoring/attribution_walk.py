"""Path attribution in one native pass: walk every tree and sum the leaves' contributions.

:class:`scoring.attribution.PathAttribution` explains a row from its leaf index in every tree
(LightGBM's ``pred_leaf``) and a gather-sum over a dense (leaves x features) table. On the
production-sized model (~200 trees of 31 leaves) that costs three passes over three large data
structures per request: LightGBM's trees, a 0.7 MB table, the (rows x trees x features) gather.
Under the serving load the compiled response model and the rest of the request evict them, and
explain cost several times what its parts cost alone (bench/RESULTS.md, "Explain"). Here one
numba kernel walks compact copies of the trees (made from the same ``dump_model()``) and adds
each reached leaf's non-zero contributions as it goes: one pass, about a third of the table's
bytes, no temporaries.

The walk follows LightGBM's own decision rules (``Tree::NumericalDecision`` and
``CategoricalDecision`` in LightGBM 4, whose major.minor the bundle loader pins): a value with
``|x| <= 1e-35`` is zero (LightGBM drops it from a dense row), NaN is zero unless the split's
missing type is NaN, the zero / NaN missing types go the split's default way, a categorical
value is truncated to an int and looked up in the split's category bitset, NaN or negative go
right. :meth:`PathWalker.check` compares its leaves with LightGBM's ``pred_leaf`` on rows built
at every threshold (and the floats either side), every category, zero and NaN; the caller uses
the walker only when they agree. The sum adds tree by tree in tree order, as the table's
gather-sum does, so both give the same bits.

Written here (numba, which the service already carries for llvmlite's version) rather than
taken from a library: LightGBM has no path-attribution output, and treelite / lleaves compile
predictions, not per-feature sums.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

try:  # numba is a service requirement; without it the table path serves explain alone
    import numba
except ImportError:  # pragma: no cover - exercised only where numba is missing
    numba = None

#: node kinds: numerical split with missing type None / Zero / NaN, categorical split
_NUM_NONE, _NUM_ZERO, _NUM_NAN, _CAT = 0, 1, 2, 3
_MISSING = {"None": _NUM_NONE, "Zero": _NUM_ZERO, "NaN": _NUM_NAN}
#: LightGBM's kZeroThreshold (a float: 1e-35f)
ZERO_THRESHOLD = float(np.float32(1e-35))


class PathWalker:
    """Compact trees + sparse per-leaf contributions, summed by a numba kernel."""

    def __init__(self, trees: list[dict[str, Any]], table: np.ndarray, width: int) -> None:
        """``trees``: the dump's ``tree_structure`` per tree; ``table``: the (trees x width,
        features) leaf contributions of :class:`scoring.attribution.PathAttribution`."""
        self.n_features = table.shape[1]
        self.width = width
        feat, thr, kind, left_default, left, right = [], [], [], [], [], []
        cat_start, cat_len, bits = [], [], []
        roots = []

        def add(node: dict[str, Any], t: int) -> int:
            # children encoded as node index (>= 0) or ~(global leaf row) (< 0)
            if "leaf_value" in node:
                return ~(t * width + int(node.get("leaf_index", 0)))
            at = len(feat)
            feat.append(int(node["split_feature"]))
            left_default.append(bool(node.get("default_left", False)))
            if node["decision_type"] == "==":
                cats = [int(c) for c in str(node["threshold"]).split("||")]
                words = np.zeros(max(cats) // 32 + 1, dtype=np.uint32)
                for c in cats:
                    words[c // 32] |= np.uint32(1 << (c % 32))
                kind.append(_CAT)
                thr.append(0.0)
                cat_start.append(len(bits))
                cat_len.append(len(words))
                bits.extend(words.tolist())
            elif node["decision_type"] == "<=":
                kind.append(_MISSING[node.get("missing_type", "None")])
                thr.append(float(node["threshold"]))
                cat_start.append(0)
                cat_len.append(0)
            else:
                raise ValueError(f"unknown decision_type {node['decision_type']!r}")
            left.append(0)
            right.append(0)
            left[at] = add(node["left_child"], t)
            right[at] = add(node["right_child"], t)
            return at

        for t, root in enumerate(trees):
            roots.append(add(root, t))
        self.roots = np.array(roots, dtype=np.int32)
        # one flat array per node field: numba indexes these faster than a packed (nodes x 4)
        # array (measured: 21-35 us against 49-62 us for 6 rows of the production model)
        self.feat = np.array(feat, dtype=np.int32)
        self.thr = np.array(thr, dtype=np.float64)
        self.kind = np.array(kind, dtype=np.int8)
        self.default_left = np.array(left_default, dtype=np.bool_)
        #: children: node index (>= 0) or ~(global leaf row) (< 0)
        self.left = np.array(left, dtype=np.int32)
        self.right = np.array(right, dtype=np.int32)
        #: categorical splits: first word in ``bits`` and words of the left categories' bitset
        self.cat_start = np.array(cat_start, dtype=np.int32)
        self.cat_len = np.array(cat_len, dtype=np.int32)
        self.bits = np.array(bits, dtype=np.uint32)
        # the table's non-zero entries leaf by leaf, in feature order (adding an exact zero
        # changes no bit of a sum that starts at +0.0, so skipping them keeps the table's bits)
        nz = table != 0.0
        self.leaf_ptr = np.concatenate([[0], np.cumsum(nz.sum(axis=1))]).astype(np.int32)
        rows_, cols = np.nonzero(nz)
        self.leaf_feat = cols.astype(np.int32)
        self.leaf_val = table[rows_, cols].astype(np.float64)
        # the kernel's arguments, put together once (explain is a per-request path)
        self._sum_args = (*self._trees, self.leaf_ptr, self.leaf_feat, self.leaf_val)

    def contributions(self, rows: np.ndarray) -> np.ndarray:
        """(n, features) path contributions of (n, features) model rows."""
        rows = np.ascontiguousarray(rows, dtype=np.float64)
        out = np.zeros((rows.shape[0], self.n_features), dtype=np.float64)
        _walk_sum(rows, *self._sum_args, out)
        return out

    def leaves(self, rows: np.ndarray) -> np.ndarray:
        """(n, trees) leaf index reached in every tree (what LightGBM's ``pred_leaf`` gives)."""
        rows = np.ascontiguousarray(rows, dtype=np.float64)
        out = np.zeros((rows.shape[0], self.roots.shape[0]), dtype=np.int32)
        _walk_leaves(rows, *self._trees, self.width, out)
        return out

    @property
    def _trees(self) -> tuple[np.ndarray, ...]:
        return (
            self.roots,
            self.feat,
            self.thr,
            self.kind,
            self.default_left,
            self.left,
            self.right,
            self.cat_start,
            self.cat_len,
            self.bits,
        )

    def check_rows(self, seed: int = 0, n: int = 512) -> np.ndarray:
        """Rows that test every split's edge: each feature drawn from its thresholds, the
        floats either side of them, its categories (and one past them), zero, tiny values,
        negatives and NaN."""
        rng = np.random.default_rng(seed)
        pools: list[list[float]] = [
            [0.0, -0.0, 1e-40, -1e-40, -1.0, -0.5, math.nan] for _ in range(self.n_features)
        ]
        for i, f in enumerate(self.feat.tolist()):
            if self.kind[i] == _CAT:
                # every category of the bitset's words and one past them, and halves
                for c in range(32 * int(self.cat_len[i]) + 1):
                    pools[f].extend((float(c), c + 0.5))
            else:
                x = float(self.thr[i])
                pools[f].extend((x, np.nextafter(x, -np.inf), np.nextafter(x, np.inf)))
        cols = [rng.choice(np.array(p, dtype=np.float64), size=n) for p in pools]
        return np.column_stack(cols) if cols else np.zeros((n, 0))

    def agrees(self, leaves_of: Any, contributions_of: Any) -> bool:
        """True when, on :meth:`check_rows`, this walk reaches the leaves ``leaves_of(rows)``
        gives (LightGBM's ``pred_leaf``) and its sums have the bits ``contributions_of(leaves)``
        gives (the tables' gather-sum)."""
        rows = self.check_rows()
        leaves = leaves_of(rows)
        return bool(
            np.array_equal(self.leaves(rows), leaves)
            and np.array_equal(self.contributions(rows), contributions_of(leaves))
        )


def top_k(values: np.ndarray, k: int) -> np.ndarray:
    """(n, min(k, features)) column indices of each row's ``k`` largest magnitudes: the same
    as ``np.argsort(-np.abs(values), axis=1, kind="stable")[:, :k]`` (ties in column order,
    NaN last), without its sort and temporaries (20 us for 6 rows; this is a few)."""
    values = np.ascontiguousarray(values, dtype=np.float64)
    out = np.empty((values.shape[0], min(k, values.shape[1])), dtype=np.intp)
    _top_k(values, out)
    return out


def available() -> bool:
    """Whether numba (and so :class:`PathWalker`) can run here."""
    return numba is not None


def _jit(fn: Any) -> Any:
    """numba's compiled ``fn``, cached on disk beside this module (a worker then loads it in
    milliseconds) or, where no cache directory is writable, compiled at each start (~1 s)."""
    try:
        return numba.njit(cache=True, nogil=True, boundscheck=False)(fn)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return numba.njit(nogil=True, boundscheck=False)(fn)


if numba is not None:

    @_jit
    def _leaf(x, node, feat, thr, kind, default_left, left, right, cat_start, cat_len, bits):
        """~(global leaf row) that row ``x`` reaches from node ``node`` (LightGBM's decisions)."""
        while node >= 0:
            fval = x[feat[node]]
            nan = math.isnan(fval)
            if not nan and abs(fval) <= ZERO_THRESHOLD:
                fval = 0.0  # LightGBM leaves such a value out of a dense row: it reads 0
            k = kind[node]
            if k == _CAT:
                go_left = False
                # NaN, a negative int and (x86's cvttsd2si) anything past int32 go right
                if not nan and fval > -1.0 and fval < 2147483648.0:
                    c = int(fval)
                    w = c // 32
                    if w < cat_len[node]:
                        go_left = ((bits[cat_start[node] + w] >> np.uint32(c % 32)) & 1) == 1
            elif nan and k == _NUM_NAN:
                go_left = default_left[node]
            else:
                if nan:
                    fval = 0.0
                if k == _NUM_ZERO and fval == 0.0:
                    go_left = default_left[node]
                else:
                    go_left = fval <= thr[node]
            node = left[node] if go_left else right[node]
        return ~node

    @_jit
    def _walk_leaves(
        rows,
        roots,
        feat,
        thr,
        kind,
        default_left,
        left,
        right,
        cat_start,
        cat_len,
        bits,
        width,
        out,
    ):
        for i in range(rows.shape[0]):
            x = rows[i]
            for t in range(roots.shape[0]):
                leaf = _leaf(
                    x,
                    roots[t],
                    feat,
                    thr,
                    kind,
                    default_left,
                    left,
                    right,
                    cat_start,
                    cat_len,
                    bits,
                )
                out[i, t] = leaf - t * width

    @_jit
    def _walk_sum(
        rows,
        roots,
        feat,
        thr,
        kind,
        default_left,
        left,
        right,
        cat_start,
        cat_len,
        bits,
        leaf_ptr,
        leaf_feat,
        leaf_val,
        out,
    ):
        # each row adds its trees in tree order: the bits of the table's gather-sum
        for i in range(rows.shape[0]):
            x = rows[i]
            o = out[i]
            for t in range(roots.shape[0]):
                leaf = _leaf(
                    x,
                    roots[t],
                    feat,
                    thr,
                    kind,
                    default_left,
                    left,
                    right,
                    cat_start,
                    cat_len,
                    bits,
                )
                for j in range(leaf_ptr[leaf], leaf_ptr[leaf + 1]):
                    o[leaf_feat[j]] += leaf_val[j]

    @_jit
    def _top_k(values, out):
        n, m = values.shape
        taken = np.zeros(m, dtype=np.bool_)
        for i in range(n):
            taken[:] = False
            for r in range(out.shape[1]):
                best = -1
                best_abs = 0.0
                for f in range(m):
                    if taken[f]:
                        continue
                    a = abs(values[i, f])
                    # strictly larger wins (ties keep the first column); NaN ranks last
                    if best < 0 or (not math.isnan(a) and (math.isnan(best_abs) or a > best_abs)):
                        best, best_abs = f, a
                taken[best] = True
                out[i, r] = best
