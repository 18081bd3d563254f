"""The compiled forest's native code: lleaves' ``forest_root`` and, beside it, an entry point that
scores one customer for every campaign in one walk (run in the compiler's environment only).

Why an entry point of our own. A customer is scored on one row per campaign, and the rows differ
only in the campaign column; lleaves walks each row through every tree on its own. Measured on the
production-sized model (194 trees of 31 leaves, 6 campaigns, 1,000 generated customers): the six
separate walks evaluate 4,306 decision nodes per customer, while walking the six rows together
(a node that does not split on the campaign is evaluated once for all the campaigns that reach
it; a split on the campaign is decided here, at compile time, and sends each campaign its way)
evaluates 815 (0.19x); the small subtrees at the bottom are walked without branches
(:data:`BRANCH_FREE`). lleaves has no such mode, so this module writes it, reusing lleaves' own
parser and its code for each numerical and categorical decision and for the objective, so a node
decides exactly as in ``forest_root``.

``forest_campaigns(double *rows, double *out, int start, int end)``: ``rows`` holds one row per
customer (its campaign column is not read), ``out`` receives ``campaigns`` probabilities per
customer, customer after customer (campaign ``j`` is the column value ``j``). Each probability is
the same bits as ``forest_root``'s for that customer's row with the campaign set: the trees are
added in the same order, in the same blocks of :data:`FBLOCKSIZE` trees (lleaves' cache blocking
sums each block from 0.0, then adds the previous blocks), with the same objective. The service
checks this at every load against ``forest_root`` and LightGBM (scoring/compiled_trees.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: the entry point lleaves compiles (and its calling convention, from lleaves 1.x); defined here,
#: not in scoring.compiled_trees, so that module can import these without an import circle
ENTRY = "forest_root"
#: the entry point that scores one customer row for every campaign
GROUPED_ENTRY = "forest_campaigns"

#: lleaves' tree block size (its default); the grouped entry must use the same blocks
FBLOCKSIZE = 34
#: subtrees at most this many numerical splits deep are walked without branches: every decision
#: made, the leaf picked by selects. Measured on the production-sized model (1,000 customers in
#: walk order, thread CPU, 21 interleaved rounds, twice): 1 (lleaves' two-leaf select) 930-939 us,
#: 3: 848-861, 4: 834-839, 5: 840, 8: 888; one customer and the demo model unchanged
BRANCH_FREE = 4


def compile_object(
    model_path: Path,
    object_path: Path,
    *,
    campaign_slot: int | None = None,
    campaigns: int = 0,
    target_cpu: str | None = None,
    target_cpu_features: str | None = None,
) -> dict[str, Any]:
    """Compile the LightGBM model at ``model_path`` to object code at ``object_path``, as
    ``lleaves.Model.compile(cache=...)`` does, with :data:`GROUPED_ENTRY` added when
    ``campaign_slot`` is given. Returns what was built: ``n_features`` and, when added, the
    grouped entry's ``campaign_slot`` and ``campaigns``."""
    import llvmlite.binding as llvm
    from lleaves.compiler.ast import parse_to_ast
    from lleaves.compiler.codegen import gen_forest
    from lleaves.llvm_binding import compile_module_to_asm
    from llvmlite import ir

    forest = parse_to_ast(str(model_path))
    forest.raw_score = False
    module_ir = ir.Module(name="forest")
    gen_forest(forest, module_ir, FBLOCKSIZE, ENTRY, True)
    built: dict[str, Any] = {"n_features": forest.n_args}
    if campaign_slot is not None and campaigns > 0 and forest.n_classes == 1:
        _gen_grouped(forest, module_ir, campaign_slot, campaigns)
        built["grouped"] = {
            "entry": GROUPED_ENTRY,
            "campaign_slot": campaign_slot,
            "campaigns": campaigns,
        }
    # the rest as lleaves.compiler.tree_compiler.compile_to_module and Model.compile
    module_ir.triple = llvm.get_process_triple()
    module = llvm.parse_assembly(str(module_ir))
    module.name = str(model_path)
    module.verify()
    pmb = llvm.PassManagerBuilder()
    pmb.opt_level = 3
    pmb.inlining_threshold = 1
    passes = llvm.ModulePassManager()
    pmb.populate(passes)
    passes.run(module)
    compile_module_to_asm(
        module,
        str(object_path),
        fcodemodel="large",
        target_cpu=target_cpu,
        target_cpu_features=target_cpu_features,
    )
    return built


def campaign_goes_left(node: Any, value: int) -> bool:
    """Whether a row whose campaign column holds ``value`` (a pool position, never missing)
    takes ``node``'s left branch: lleaves' decision (codegen ``_populate_*_node_block``)
    evaluated here for a known value."""
    from lleaves.compiler.utils import MissingType

    if node.decision_type.is_categorical:
        words = node.cat_threshold
        return 0 <= value < 32 * len(words) and bool((words[value // 32] >> (value % 32)) & 1)
    kind = node.decision_type
    if kind.missing_type == MissingType.MZero and value == 0:
        # zero is "missing" here: it goes the default way
        return kind.is_default_left
    return float(value) <= node.threshold


def _gen_grouped(forest: Any, module: Any, slot: int, campaigns: int) -> None:
    """Add :data:`GROUPED_ENTRY` and one private function per tree to ``module``."""
    from lleaves.compiler.codegen import codegen as cg
    from llvmlite import ir

    acc_type = ir.PointerType(cg.DOUBLE)
    funcs = []
    for tree in forest.trees:
        args = [cg.INT_CAT if f.is_categorical else cg.DOUBLE for f in tree.features]
        func = ir.Function(
            module, ir.FunctionType(ir.VoidType(), [*args, acc_type]), name=f"grouped_{tree.idx}"
        )
        func.linkage = "private"
        _TreeWriter(func, slot, cg).write(tree.root_node, tuple(range(campaigns)))
        funcs.append(func)
    root = ir.Function(
        module,
        ir.FunctionType(ir.VoidType(), (cg.DOUBLE_PTR, cg.DOUBLE_PTR, cg.INT, cg.INT)),
        name=GROUPED_ENTRY,
    )
    _gen_root(forest, root, funcs, slot, campaigns, cg)


class _TreeWriter:
    """Writes one tree as a walk of a set of campaigns: each block knows which campaigns reach
    it, a split on the campaign sends each its way (both ways: the left walk, then the right),
    a leaf adds its value to each of its campaigns' sums."""

    def __init__(self, func: Any, slot: int, cg: Any) -> None:
        self.func, self.slot, self.cg = func, slot, cg
        self.acc = func.args[-1]

    def write(self, root: Any, campaigns: tuple[int, ...]) -> None:
        from llvmlite import ir

        entry = self.func.append_basic_block("entry")
        done = self.func.append_basic_block("done")
        ir.IRBuilder(done).ret_void()
        ir.IRBuilder(entry).branch(self._node(root, campaigns, done))

    def _add(self, builder: Any, campaigns: tuple[int, ...], value: Any) -> None:
        for j in campaigns:
            at = builder.gep(self.acc, (self.cg.iconst(j),))
            # the same operand order as forest_root's sum (leaf + sum so far)
            builder.store(builder.fadd(value, builder.load(at)), at)

    def _node(self, node: Any, campaigns: tuple[int, ...], then: Any) -> Any:
        """The first block of ``node``'s walk for ``campaigns``, which goes on to ``then``."""
        from llvmlite import ir

        cg, func = self.cg, self.func
        if node.is_leaf:
            block = func.append_basic_block(str(node))
            builder = ir.IRBuilder(block)
            self._add(builder, campaigns, cg.dconst(node.value))
            builder.branch(then)
            return block
        if node.split_feature == self.slot:
            left = tuple(j for j in campaigns if campaign_goes_left(node, j))
            right = tuple(j for j in campaigns if j not in left)
            if not right:
                return self._node(node.left, left, then)
            if not left:
                return self._node(node.right, right, then)
            return self._node(node.left, left, self._node(node.right, right, then))
        block = func.append_basic_block(str(node))
        builder = ir.IRBuilder(block)
        categorical = node.decision_type.is_categorical
        if self._flat(node, BRANCH_FREE):
            # a small subtree of numerical splits: every decision made, the leaf picked by
            # selects (no branch to mispredict); lleaves does this for two leaves
            self._add(builder, campaigns, self._picked(builder, node))
            builder.branch(then)
            return block
        left_block = self._node(node.left, campaigns, then)
        right_block = self._node(node.right, campaigns, then)
        if categorical:
            bits = func.append_basic_block(str(node) + "_cat_bitset_comp")
            bits_builder = ir.IRBuilder(bits)
            comp = cg._populate_categorical_node_block(
                func, builder, bits_builder, node, bits, right_block
            )
            bits_builder.cbranch(comp, left_block, right_block)
        else:
            comp = cg._populate_numerical_node_block(func, builder, node, True)
            builder.cbranch(comp, left_block, right_block)
        return block

    def _flat(self, node: Any, height: int) -> bool:
        """Whether ``node``'s subtree is at most ``height`` numerical splits deep, none on the
        campaign."""
        if node.is_leaf:
            return True
        if height == 0 or node.decision_type.is_categorical or node.split_feature == self.slot:
            return False
        return self._flat(node.left, height - 1) and self._flat(node.right, height - 1)

    def _picked(self, builder: Any, node: Any) -> Any:
        """The leaf value of a :meth:`_flat` subtree, by selects."""
        if node.is_leaf:
            return self.cg.dconst(node.value)
        comp = self.cg._populate_numerical_node_block(self.func, builder, node, True)
        left, right = self._picked(builder, node.left), self._picked(builder, node.right)
        return builder.select(comp, left, right)


def _gen_root(forest: Any, root: Any, funcs: list, slot: int, campaigns: int, cg: Any) -> None:
    """The loop over customers, tree block by tree block as lleaves' ``forest_root``."""
    from llvmlite import ir

    data, out, start, end = root.args
    entry = root.append_basic_block("entry")
    builder = ir.IRBuilder(entry)
    acc = builder.alloca(cg.DOUBLE, campaigns, "sums")
    index = builder.alloca(cg.LONG, 1, "customer")
    last = entry
    blocks = [funcs[i : i + FBLOCKSIZE] for i in range(0, len(funcs), FBLOCKSIZE)]
    for b, chunk in enumerate(blocks):
        setup = root.append_basic_block(f"block-{b}")
        ir.IRBuilder(last).branch(setup)
        builder = ir.IRBuilder(setup)
        builder.store(builder.zext(start, cg.LONG), index)
        test = root.append_basic_block(f"block-{b}-test")
        builder.branch(test)
        builder = ir.IRBuilder(test)
        i = builder.load(index)
        body = root.append_basic_block(f"block-{b}-body")
        last = root.append_basic_block(f"block-{b}-end")
        builder.cbranch(builder.icmp_signed("<", i, builder.zext(end, cg.LONG)), body, last)
        builder = ir.IRBuilder(body)
        i = builder.load(index)
        base = builder.mul(i, cg.lconst(forest.n_args))
        args = []
        for k, feature in enumerate(forest.features):
            if k == slot:
                # never read: every campaign's branch is decided in the tree functions
                args.append(cg.iconst(0) if feature.is_categorical else cg.dconst(0.0))
                continue
            value = builder.load(builder.gep(data, (builder.add(base, cg.lconst(k)),)))
            if feature.is_categorical:
                missing = builder.fcmp_ordered("uno", value, cg.dconst(0.0))
                value = builder.select(missing, cg.iconst(-(2**31)), builder.fptosi(value, cg.INT))
            args.append(value)
        sums = [builder.gep(acc, (cg.iconst(j),)) for j in range(campaigns)]
        for at in sums:
            builder.store(cg.dconst(0.0), at)
        for func in chunk:
            builder.call(func, [*args, acc])
        row = builder.mul(i, cg.lconst(campaigns))
        for j, at in enumerate(sums):
            target = builder.gep(out, (builder.add(row, cg.lconst(j)),))
            value = builder.load(at)
            if b > 0:
                value = builder.fadd(value, builder.load(target))
            if b == len(blocks) - 1:
                (value,) = cg._populate_objective_func_block(
                    builder,
                    [value],
                    forest.objective_func,
                    forest.objective_func_config,
                    forest.raw_score,
                    forest.average_output,
                    len(forest.trees),
                    True,
                )
            builder.store(value, target)
        builder.store(builder.add(i, cg.lconst(1)), index)
        builder.branch(test)
    ir.IRBuilder(last).ret_void()
