"""Path attribution (Saabas): per-leaf feature contribution tables of a LightGBM model.

``explain`` answers which features pushed a campaign's response log-odds up or down. LightGBM's
exact TreeSHAP (``pred_contrib``) costs about a millisecond per row on the production-sized model
(~200 trees of 31 leaves; bench/RESULTS.md), ten times a whole plain /recommend. Path attribution
(Saabas; the ``treeinterpreter`` method) gives each split on a row's path the change in the
node's expected value it causes: the child's value minus the parent's, credited to the split's
feature. A leaf's path is fixed, so each leaf's contribution vector over the features is fixed
too and is computed here once, when the bundle loads (from the booster the manifest already
hashes: nothing new is stored). Explaining a row is then its leaf index in every tree (one
LightGBM ``pred_leaf`` call) and a gather-sum over (trees x features); or, where numba is
installed (the service's requirements), both in one native pass with the same bits
(:mod:`scoring.attribution_walk`, checked against this path at load).

A node's value is the cover-weighted mean of its leaves' outputs (LightGBM's ``internal_count``
/ ``leaf_count``), so the root's value summed over the trees is the same expected value
TreeSHAP's bias column holds, and a row's contributions sum exactly (up to float rounding) to
its raw score minus that expected value, as TreeSHAP's do.

It is an approximation of SHAP: it credits a feature by where its split sits in the tree (order
dependent), where TreeSHAP averages over orders. On the production-sized model the two agree on
the top features for most rows (bench/RESULTS.md, "explain"); the service names the method in
every explained answer (``explain_method``) and serves exact TreeSHAP when
``EXPLAIN_METHOD=treeshap`` (README). Written here rather than taken from a library: the
``fasttreeshap`` package (exact, faster TreeSHAP) has no wheel for our Python and no release
since 2023, and ``treeinterpreter`` handles scikit-learn trees only; the table is some thirty
lines over ``Booster.dump_model()``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: the explain methods the service offers: path attribution (default) and exact TreeSHAP
METHODS = ("path", "treeshap")
#: rows gathered at once: the (rows x trees x features) gather of 64 rows of a 200-tree,
#: 15-feature model is 1.5 MB, which stays in cache (a 6,000-row batch would be 140 MB). A
#: sparse (rows x leaves) product with the table was 3.7x faster at 1,000 rows but 2.5x slower
#: at 3, and it adds in another order: one method for every size keeps a customer's
#: contributions the same to the bit in a batch and alone.
GATHER_ROWS = 64


class PathAttribution:
    """Per-leaf contribution vectors of every tree of a LightGBM booster (log-odds)."""

    def __init__(self, booster: Any) -> None:
        dump = booster.dump_model()
        if dump.get("num_tree_per_iteration", 1) != 1:
            raise ValueError(
                f"num_tree_per_iteration={dump['num_tree_per_iteration']}: path attribution "
                "supports one tree per iteration (binary or regression models)"
            )
        self.n_features = int(dump["max_feature_idx"]) + 1
        trees = [t["tree_structure"] for t in dump["tree_info"]]
        self.n_trees = len(trees)
        width = max(int(t.get("num_leaves", 1)) for t in dump["tree_info"])
        #: (trees x leaves, features): row ``t * width + leaf`` is that leaf's contributions
        table = np.zeros((self.n_trees, width, self.n_features), dtype=np.float64)
        expected = 0.0
        for t, root in enumerate(trees):
            expected += _fill(root, table[t], np.zeros(self.n_features))[0]
        self.table = table.reshape(self.n_trees * width, self.n_features)
        #: sum over the trees of each root's value: what the contributions are measured from
        self.expected_value = expected
        self._offsets = np.arange(self.n_trees, dtype=np.intp) * width
        self._trees, self._width = trees, width

    def walker(self, leaves_of: Any) -> Any:
        """A :class:`scoring.attribution_walk.PathWalker` over these tables (one native pass
        instead of ``pred_leaf`` + :meth:`contributions`) when numba is here and, on its check
        rows, it reaches the leaves ``leaves_of(rows)`` (LightGBM's ``pred_leaf``) gives with
        the same contributions to the bit; else None."""
        from scoring import attribution_walk

        if not attribution_walk.available():
            return None
        walk = attribution_walk.PathWalker(self._trees, self.table, self._width)
        return walk if walk.agrees(leaves_of, self.contributions) else None

    def contributions(self, leaves: np.ndarray) -> np.ndarray:
        """(n, features) contributions from (n, trees) leaf indices (``pred_leaf``)."""
        idx = leaves.astype(np.intp)
        idx += self._offsets
        n = idx.shape[0]
        if n <= GATHER_ROWS:
            # einsum sums the (n, trees, features) gather over trees in one pass: about half
            # the time of .sum(axis=1), whose reduction over a middle axis walks it twice
            return np.einsum("ntf->nf", self.table[idx])
        out = np.empty((n, self.n_features), dtype=np.float64)
        for start in range(0, n, GATHER_ROWS):
            block = idx[start : start + GATHER_ROWS]
            np.einsum("ntf->nf", self.table[block], out=out[start : start + GATHER_ROWS])
        return out


def _fill(node: dict[str, Any], table: np.ndarray, path: np.ndarray) -> tuple[float, float]:
    """Fill ``table`` (one tree's leaves x features) below ``node``, whose path so far credits
    ``path``; returns the node's (value, cover).

    Children are valued first (a node's value is the cover-weighted mean of its children's),
    then each child's subtree is credited the child's value minus this node's on the split
    feature. Recursion depth is the tree's depth (at most num_leaves - 1).
    """
    if "leaf_value" in node:
        table[int(node.get("leaf_index", 0))] = path
        return float(node["leaf_value"]), float(node.get("leaf_count", 0))
    left, right = node["left_child"], node["right_child"]
    # values first, on throwaway rows: a subtree's value does not depend on the path above it
    lv, lc = _value(left)
    rv, rc = _value(right)
    cover = lc + rc
    value = (lv * lc + rv * rc) / cover if cover > 0 else float(node["internal_value"])
    f = int(node["split_feature"])
    for child, child_value in ((left, lv), (right, rv)):
        step = path.copy()
        step[f] += child_value - value
        _fill(child, table, step)
    return value, cover


def _value(node: dict[str, Any]) -> tuple[float, float]:
    """A node's (cover-weighted mean leaf output, cover)."""
    if "leaf_value" in node:
        return float(node["leaf_value"]), float(node.get("leaf_count", 0))
    lv, lc = _value(node["left_child"])
    rv, rc = _value(node["right_child"])
    cover = lc + rc
    return ((lv * lc + rv * rc) / cover if cover > 0 else float(node["internal_value"])), cover
