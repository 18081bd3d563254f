"""LightGBM models compiled to native code (lleaves), kept in the bundle beside LightGBM's.

Two models are compiled the same way: the response model and, in an uplift bundle, the control
model (response without the campaign), each with its own object file and check sample.

Walking 200 trees of 31 leaves through LightGBM's C API costs several microseconds per row; the
same trees compiled to machine code by lleaves (LLVM) cost a fraction of that, for one row or a
million (bench/RESULTS.md). Chosen over treelite/tl2cgen by measurement on the production-sized
model: lleaves was faster for both 6 and 7,000 rows, compiled in half the time and needs no C
compiler on the training machine (its LLVM comes inside the llvmlite wheel).

Two environments. lleaves 1.3 needs llvmlite < 0.44, but the service and the Dask engine need
llvmlite 0.50 (numba). So training compiles in the compiler's own environment
(``.venv-compile``, requirements-compile.txt, made by scripts/compile-venv.sh; or any
interpreter named by ``TREE_COMPILER_PYTHON``) by running ``python -m scoring.compiled_trees
compile MODEL.txt OUT.o`` there, and the service loads the object code with its own llvmlite
through LLVM's MCJIT, as lleaves itself does (:class:`CompiledForest`, about twenty lines written
here because lleaves' loader cannot be installed beside llvmlite 0.50). The calling convention is
lleaves' ``forest_root(double *rows, double *out, int start, int end)``. A response model's
artifact also holds ``forest_campaigns``, which scores one customer row for every campaign in
one walk of the trees (scoring/tree_codegen.py: the same bits as ``forest_root``, a third of its
time for a batch); :meth:`CompiledForest.predict_campaigns` calls it.

The artifact is native code, so it follows the pickles' trust rule: it is written by training,
listed and hashed in the manifest, and loaded only after ``scoring.bundle.verify``. Loading it
also requires:

- the platform it was built for: the same target triple, no CPU feature it was compiled with
  missing on this CPU, and lleaves' major version (its calling convention);
- agreement with LightGBM within :data:`TOLERANCE` on the fixed sample stored beside it
  (held-out rows of the training data, plus copies with missing values), checked at every load.

When the artifact is absent, llvmlite is not installed, the platform differs or the check fails,
the bundle is served through LightGBM's C API instead and :attr:`CompiledStatus.reason` says why.
"""

from __future__ import annotations

import array
import ctypes
import json
import logging
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scoring.tree_codegen import ENTRY, GROUPED_ENTRY

log = logging.getLogger(__name__)

#: bundle file names of the compiled response model and its check sample
OBJECT_FILE = "response_model.o"
SAMPLE_FILE = "response_model_check.npy"
#: the same for an uplift bundle's control model (response without the campaign)
CONTROL_OBJECT_FILE = "control_model.o"
CONTROL_SAMPLE_FILE = "control_model_check.npy"
#: largest |compiled - LightGBM| allowed on the check sample (probabilities)
TOLERANCE = 1e-9
#: rows of the check sample taken from the held-out data (each also copied with gaps)
SAMPLE_ROWS = 256
ABI = "lleaves-1"
#: the interpreter of the compiler's environment (default: .venv-compile beside the project)
COMPILER_ENV = "TREE_COMPILER_PYTHON"
#: the CPU to compile for: unset or "host" for this machine's CPU and features; an LLVM CPU name
#: ("generic", "x86-64-v2", ...) for that CPU's baseline, so the artifact runs on any machine of
#: the same architecture (an image built on one machine and served on another)
COMPILER_CPU_ENV = "TREE_COMPILER_CPU"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
#: the entry point takes the rows' and the output's addresses as plain integers: building ctypes
#: arrays over the buffers cost about 0.9 of a one-customer call's 8.6 us (bench/RESULTS.md)
_ENTRY_TYPE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int)


@dataclass(frozen=True)
class CompiledArtifact:
    """What training writes: object code, the platform it targets, the check sample."""

    object_code: bytes
    platform: dict[str, Any]
    sample: np.ndarray


@dataclass(frozen=True)
class CompiledStatus:
    """Which prediction path a loaded bundle uses, and why."""

    compiled: bool
    reason: str

    def describe(self) -> str:
        """One line for logs and /version."""
        return ("compiled trees" if self.compiled else "LightGBM C API") + f" ({self.reason})"


def _host() -> dict[str, str]:
    """This machine as LLVM sees it: target triple, CPU name, CPU features (+x,-y,...)."""
    import llvmlite.binding as llvm

    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    try:
        features = llvm.get_host_cpu_features().flatten()
    except RuntimeError:  # LLVM cannot detect them: lleaves then compiles without any
        features = ""
    return {
        "triple": llvm.get_process_triple(),
        "cpu": llvm.get_host_cpu_name(),
        "features": features,
    }


def available() -> str | None:
    """None when compiled trees can be loaded here, else why not."""
    try:
        import llvmlite.binding  # noqa: F401
    except ImportError as exc:
        return f"llvmlite is not installed ({exc.name})"
    return None


def compiler_python() -> str | None:
    """The interpreter that compiles: ``TREE_COMPILER_PYTHON``, else .venv-compile's, else None."""
    named = os.environ.get(COMPILER_ENV)
    if named:
        return named
    default = PROJECT_ROOT / ".venv-compile" / "bin" / "python"
    return str(default) if default.is_file() else None


def check_sample(held_out: np.ndarray, seed: int = 0) -> np.ndarray:
    """The fixed sample the compiled trees must reproduce: held-out rows, and copies of them
    with a random quarter of each row's values missing (so the missing-value branches run)."""
    rng = np.random.default_rng(seed)
    n = min(SAMPLE_ROWS, held_out.shape[0])
    rows = np.asarray(held_out[rng.choice(held_out.shape[0], size=n, replace=False)], np.float64)
    gaps = rows.copy()
    gaps[rng.random(gaps.shape) < 0.25] = np.nan
    return np.ascontiguousarray(np.vstack([rows, gaps]))


def _compile_here(
    model_path: Path, object_path: Path, campaign_slot: int | None = None, campaigns: int = 0
) -> dict[str, Any]:
    """Compile with the lleaves installed in this interpreter; return the platform record."""
    from importlib.metadata import version

    import llvmlite

    from scoring import tree_codegen

    platform = _host()
    cpu = os.environ.get(COMPILER_CPU_ENV, "").strip()
    target: dict[str, Any] = {}
    if cpu and cpu != "host":
        # that CPU's baseline and no extra feature: loadable wherever the triple matches
        platform.update(cpu=cpu, features="")
        target = {"target_cpu": cpu, "target_cpu_features": ""}
    built = tree_codegen.compile_object(
        model_path, object_path, campaign_slot=campaign_slot, campaigns=campaigns, **target
    )
    return {
        "compiler": "lleaves",
        "lleaves": version("lleaves"),
        "llvmlite": llvmlite.__version__,
        "abi": ABI,
        **built,
        **platform,
    }


def compile_model(
    model_text: str,
    held_out: np.ndarray,
    *,
    campaign_slot: int | None = None,
    campaigns: int = 0,
) -> CompiledArtifact:
    """Compile a LightGBM model (its text format) for this machine with lleaves.

    With ``campaign_slot`` (the model column of the campaign's pool position) and ``campaigns``
    (the pool's size), the artifact also scores a customer for every campaign in one walk
    (``forest_campaigns``, scoring/tree_codegen.py).

    Runs in the compiler's environment (:func:`compiler_python`). Raises RuntimeError when there
    is none or it fails; training then writes the bundle without the artifact.
    """
    python = compiler_python()
    if python is None:
        raise RuntimeError(
            "no tree compiler: run scripts/compile-venv.sh (creates .venv-compile) or set "
            f"{COMPILER_ENV}"
        )
    with tempfile.TemporaryDirectory(prefix="lleaves-") as tmp:
        model_path = Path(tmp) / "model.txt"
        model_path.write_text(model_text)
        object_path = Path(tmp) / OBJECT_FILE
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")])
        )
        command = [python, "-m", "scoring.compiled_trees", "compile", str(model_path)]
        command.append(str(object_path))
        if campaign_slot is not None and campaigns > 0:
            command += [str(campaign_slot), str(campaigns)]
        run = subprocess.run(
            command,
            capture_output=True,
            text=True,
            env=env,
            timeout=1800,
        )
        if run.returncode != 0 or not object_path.is_file():
            tail = (run.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"the tree compiler ({python}) failed: {tail}")
        platform = json.loads(run.stdout.strip().splitlines()[-1])
        code = object_path.read_bytes()
    return CompiledArtifact(code, platform, check_sample(held_out))


def platform_mismatch(platform: dict[str, Any]) -> str | None:
    """None when an artifact built for ``platform`` runs here, else the first difference."""
    why = available()
    if why is not None:
        return why
    here = _host()
    if platform.get("compiler") != "lleaves" or platform.get("abi") != ABI:
        return (
            f"compiled by {platform.get('compiler')!r} ({platform.get('abi')}), this code "
            f"loads {ABI} artifacts"
        )
    if _major(platform.get("lleaves")) != _major(ABI.split("-")[1]):
        return f"built with lleaves {platform.get('lleaves')}, this code loads lleaves 1.x"
    if platform.get("triple") != here["triple"]:
        return f"built for {platform.get('triple')}, this machine is {here['triple']}"
    # Features this CPU lacks (LLVM lists it with "-"); a name this LLVM does not know at all
    # (LLVM versions rename a few) is left to the check sample.
    needed = {f[1:] for f in str(platform.get("features", "")).split(",") if f.startswith("+")}
    lacking = {f[1:] for f in here["features"].split(",") if f.startswith("-")}
    missing = sorted(needed & lacking)
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        return f"built for a CPU with {shown}, which this CPU lacks"
    return None


def _major(v: Any) -> str:
    return str(v).split(".")[0]


class CompiledForest:
    """Probabilities from the compiled trees: the same numbers as LightGBM's, faster."""

    def __init__(
        self, engine: Any, entry: Any, n_features: int, grouped: Any = None, slot: int = -1
    ) -> None:
        self._engine = engine  # keeps the execution engine (and the code) alive
        self._entry = entry
        self.n_features = n_features
        #: ``forest_campaigns`` (None: the artifact has none, or it failed its check at load)
        self._grouped = grouped
        #: the model column of the campaign, and how many campaigns ``forest_campaigns`` scores
        #: (-1 and 0 without it)
        self.campaign_slot = slot if grouped is not None else -1
        self.campaigns = 0
        #: the campaign values ``forest_campaigns`` scores (0.0, 1.0, ...), as a set, a list and
        #: their positions in its output; a zeroed output buffer to copy
        self._codes: frozenset[float] = frozenset()
        self._all: list[float] = []
        self._position: dict[float, int] = {}
        self._zeros = array.array("d")

    @classmethod
    def load(
        cls, object_path: Path, n_features: int, grouped: dict[str, Any] | None = None
    ) -> CompiledForest:
        """Load verified object code into an MCJIT engine, as lleaves does from its cache;
        ``grouped`` (the platform record's entry) also binds ``forest_campaigns``."""
        import llvmlite.binding as llvm

        host = _host()
        target = llvm.Target.from_triple(host["triple"])
        machine = target.create_target_machine(
            cpu=host["cpu"], features=host["features"], reloc="pic", codemodel="large"
        )
        engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), machine)
        code = object_path.read_bytes()
        # the object cache hands MCJIT our (verified) code instead of compiling the empty module
        engine.set_object_cache(getbuffer_func=lambda _module: code)
        engine.finalize_object()
        engine.run_static_constructors()
        address = engine.get_function_address(ENTRY)
        if not address:
            raise RuntimeError(f"no {ENTRY} in {object_path.name}")
        forest = cls(engine, _ENTRY_TYPE(address), n_features)
        address = engine.get_function_address(GROUPED_ENTRY) if grouped else 0
        if address:  # (absent: every row through forest_root; load_checked says so)
            forest._bind_grouped(
                _ENTRY_TYPE(address), int(grouped["campaign_slot"]), int(grouped["campaigns"])
            )
        return forest

    def _bind_grouped(self, entry: Any, slot: int, campaigns: int) -> None:
        if not (0 <= slot < self.n_features and campaigns > 0):
            raise ValueError(f"campaign column {slot} of {self.n_features}, {campaigns} campaigns")
        self._grouped, self.campaign_slot, self.campaigns = entry, slot, campaigns
        self._all = [float(j) for j in range(campaigns)]
        self._codes = frozenset(self._all)
        self._position = {v: j for j, v in enumerate(self._all)}
        self._zeros = array.array("d", bytes(8 * campaigns))

    def drop_grouped(self) -> None:
        """Serve every row through ``forest_root`` (``forest_campaigns`` failed its check)."""
        self._grouped, self.campaign_slot, self.campaigns = None, -1, 0
        self._codes, self._all, self._position = frozenset(), [], {}

    def predict_campaigns(self, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """(n, campaigns) probabilities of each customer row of (n, n_features) ``rows`` with
        its campaign column set to 0, 1, ..., campaigns - 1 (that column is not read): one walk
        of the trees per customer, the same bits as :meth:`predict` of those rows.

        ``out`` (a C-contiguous float64 (n, campaigns) array) receives them when given.
        """
        if self._grouped is None:
            raise RuntimeError("these compiled trees have no campaign-grouped entry")
        rows = np.ascontiguousarray(rows, dtype=np.float64)
        n = rows.shape[0]
        if rows.ndim != 2 or rows.shape[1] != self.n_features:
            raise ValueError(f"rows have shape {rows.shape}, the model {self.n_features} columns")
        shape = (n, self.campaigns)
        if out is None:
            out = np.empty(shape, dtype=np.float64)
        elif out.dtype != np.float64 or not out.flags.c_contiguous or out.shape != shape:
            raise ValueError(f"out must be a C-contiguous float64 array of shape {shape}")
        if n:
            self._grouped(rows.ctypes.data, out.ctypes.data, 0, n)
        return out

    def predict(self, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Probability of response for each row of a (n, n_features) float64 array.

        ``out`` (a contiguous float64 array of at least n values) receives them when given.
        """
        rows = np.ascontiguousarray(rows, dtype=np.float64)
        n = rows.shape[0]
        if rows.ndim != 2 or rows.shape[1] != self.n_features:
            raise ValueError(f"rows have shape {rows.shape}, the model {self.n_features} columns")
        if out is None:
            out = np.empty(n, dtype=np.float64)
        elif out.dtype != np.float64 or not out.flags.c_contiguous or out.shape[0] < n:
            raise ValueError("out must be a contiguous float64 array of at least n values")
        if n:
            # lleaves' entry point releases the GIL and walks rows [0, n)
            self._entry(rows.ctypes.data, out.ctypes.data, 0, n)
        return out[:n]

    def predict_rows(self, rows: list[list[float]]) -> list[float]:
        """Probabilities for a few rows given as Python lists (no numpy on this path)."""
        n, width = len(rows), self.n_features
        flat = array.array("d")
        for row in rows:
            if len(row) != width:
                raise ValueError(f"row has {len(row)} values, the model {width}")
            flat.extend(row)
        # array.array converts the floats in C: a ctypes array built from them one by one
        # cost about 5 us per 6-row request (bench/RESULTS.md)
        return self._walk(flat, n)

    def predict_variants(self, row: list[float], slot: int, values: list[float]) -> list[float]:
        """``predict_rows`` of copies of ``row`` with ``row[slot]`` set to each of ``values``.

        Values that are campaigns of ``forest_campaigns`` (the campaign column, whole numbers
        below ``campaigns``) take one walk for all of them, which gives the same bits."""
        n, width = len(values), self.n_features
        if len(row) != width:
            raise ValueError(f"row has {len(row)} values, the model {width}")
        if not 0 <= slot < width:
            raise ValueError(f"slot {slot} is outside the model's {width} columns")
        every = slot == self.campaign_slot and values == self._all
        if every or (slot == self.campaign_slot and self._codes.issuperset(values)):
            flat = array.array("d", row)
            # a buffer per call (the entry releases the GIL while it writes), copied from a
            # prebuilt one: a third of the time of building it from bytes
            wide = self._zeros * 1
            self._grouped(flat.buffer_info()[0], wide.buffer_info()[0], 0, 1)
            if every:  # every campaign, in pool order
                return wide.tolist()
            probabilities, at = wide.tolist(), self._position
            return [probabilities[at[v]] for v in values]
        flat = array.array("d", row) * n
        for i, v in enumerate(values):
            flat[i * width + slot] = v
        return self._walk(flat, n)

    def _walk(self, flat: array.array, n: int) -> list[float]:
        """The probabilities of the ``n`` rows laid out in ``flat`` (row after row)."""
        out = array.array("d", bytes(8 * n))
        if n:
            # both buffers stay referenced (and unresized) until the call returns
            self._entry(flat.buffer_info()[0], out.buffer_info()[0], 0, n)
        return out.tolist()


def load_checked(
    object_path: Path,
    platform: dict[str, Any],
    sample: np.ndarray,
    booster: Any,
) -> tuple[CompiledForest | None, CompiledStatus]:
    """The compiled forest when it may be used here and agrees with ``booster``; else None.

    The caller has verified both files' hashes (``scoring.bundle.verify``) before this runs.
    """
    mismatch = platform_mismatch(platform)
    if mismatch is not None:
        return None, CompiledStatus(False, mismatch)
    if platform.get("n_features") != booster.num_feature():
        # the compiled code reads that many values per row: never run it on other rows
        return None, CompiledStatus(
            False,
            f"{platform.get('n_features')} features compiled, the model has "
            f"{booster.num_feature()}",
        )
    try:
        forest = CompiledForest.load(object_path, booster.num_feature(), platform.get("grouped"))
    except Exception as exc:  # noqa: BLE001 -- any failure to load native code: fall back
        return None, CompiledStatus(False, f"cannot load {object_path.name}: {exc}")
    expected = booster.predict(sample)
    got = forest.predict(sample)
    worst = float(np.max(np.abs(got - expected))) if len(sample) else 0.0
    if not worst <= TOLERANCE:  # NaN fails too
        return None, CompiledStatus(
            False, f"differs from LightGBM by {worst:.3g} on the check sample (> {TOLERANCE:g})"
        )
    reason = f"lleaves {platform.get('lleaves')}, {len(sample)} check rows within {worst:.1g}"
    if forest.campaigns:
        reason += "; " + _check_grouped(forest, sample, booster)
    elif platform.get("grouped"):
        reason += f"; {GROUPED_ENTRY} not used: not in {object_path.name}"
    return forest, CompiledStatus(True, reason)


def _check_grouped(forest: CompiledForest, sample: np.ndarray, booster: Any) -> str:
    """Keep ``forest_campaigns`` only if, on the check sample's rows with each campaign, it
    gives the same bits as ``forest_root`` and agrees with LightGBM; says which."""
    m, slot = forest.campaigns, forest.campaign_slot
    rows = np.repeat(sample, m, axis=0)
    rows[:, slot] = np.tile(np.arange(m, dtype=np.float64), len(sample))
    one_walk = forest.predict_campaigns(sample).ravel()
    worst = float(np.max(np.abs(one_walk - booster.predict(rows)))) if len(rows) else 0.0
    if not (np.array_equal(one_walk, forest.predict(rows)) and worst <= TOLERANCE):
        forest.drop_grouped()
        log.warning("compiled trees: %s is not used (it differs on its check)", GROUPED_ENTRY)
        return f"{GROUPED_ENTRY} not used: it differs from {ENTRY} or LightGBM"
    return f"one walk for {m} campaigns"


USAGE = f"""usage: python -m scoring.compiled_trees compile MODEL.txt OUT.o [SLOT CAMPAIGNS]

Compile a LightGBM model file to a native object (run in the compiler's environment,
.venv-compile; training calls this). SLOT CAMPAIGNS: the campaign's column in the model's rows
and the pool's size; given, the object also holds {GROUPED_ENTRY} (one walk per customer for
every campaign). {COMPILER_CPU_ENV}: the CPU to compile for (unset or host: this machine).
Prints the platform record (JSON) on its last line."""


def main(argv: list[str] | None = None) -> int:
    """``python -m scoring.compiled_trees compile MODEL.txt OUT.o [SLOT CAMPAIGNS]``, in the
    compiler's environment (SLOT: the campaign's model column, CAMPAIGNS: the pool's size).

    Prints the platform record (JSON) on its last line of output.
    """
    args = sys.argv[1:] if argv is None else argv
    if args[:1] in (["-h"], ["--help"]):
        print(USAGE)
        return 0
    if len(args) not in (3, 5) or args[0] != "compile":
        print(USAGE, file=sys.stderr)
        return 2
    grouped = (int(args[3]), int(args[4])) if len(args) == 5 else (None, 0)
    print(json.dumps(_compile_here(Path(args[1]), Path(args[2]), *grouped)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
