"""The response model compiled to native code (lleaves), kept in the bundle beside LightGBM's.

Walking 200 trees of 31 leaves through LightGBM's C API costs several microseconds per row; the
same trees compiled to machine code by lleaves (LLVM) cost a fraction of that, for one row or a
million (bench/RESULTS.md). Chosen over treelite/tl2cgen by measurement on the production-sized
model: lleaves was faster for both 6 and 7,000 rows, compiled in half the time and needs no C
compiler on the training machine (its LLVM comes inside the llvmlite wheel).

The artifact is native code, so it follows the pickles' trust rule: it is written by training,
listed and hashed in the manifest, and loaded only after ``scoring.bundle.verify``. Loading it
also requires:

- the platform it was built for: the same target triple, every CPU feature it was compiled with
  present on this CPU, and the same lleaves major.minor (its calling convention);
- agreement with LightGBM within :data:`TOLERANCE` on the fixed sample stored beside it
  (held-out rows of the training data, plus copies with missing values), checked at every load.

When the artifact is absent, lleaves is not installed (it needs llvmlite < 0.44, which has no
wheels for Python 3.13), the platform differs or the check fails, the bundle is served through
LightGBM's C API instead and :attr:`CompiledStatus.reason` says why.
"""

from __future__ import annotations

import ctypes
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: bundle file names
OBJECT_FILE = "response_model.o"
SAMPLE_FILE = "response_model_check.npy"
#: largest |compiled - LightGBM| allowed on the check sample (probabilities)
TOLERANCE = 1e-9
#: rows of the check sample taken from the held-out data (each also copied with gaps)
SAMPLE_ROWS = 256
_DOUBLE_P = ctypes.POINTER(ctypes.c_double)


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


def _llvm_platform() -> dict[str, Any]:
    """This machine as lleaves targets it: triple, CPU name, enabled features, versions."""
    import lleaves
    import llvmlite
    import llvmlite.binding as llvm

    llvm.initialize()
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    try:
        features = llvm.get_host_cpu_features().flatten()
    except RuntimeError:  # LLVM cannot detect them: lleaves then compiles without any
        features = ""
    return {
        "compiler": "lleaves",
        "lleaves": lleaves.__version__ if hasattr(lleaves, "__version__") else _version("lleaves"),
        "llvmlite": llvmlite.__version__,
        "triple": llvm.get_process_triple(),
        "cpu": llvm.get_host_cpu_name(),
        "features": features,
    }


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


def available() -> str | None:
    """None when lleaves can be used here, else why not."""
    try:
        import lleaves  # noqa: F401
        import llvmlite.binding  # noqa: F401
    except ImportError as exc:
        return f"lleaves is not installed ({exc.name})"
    return None


def check_sample(held_out: np.ndarray, seed: int = 0) -> np.ndarray:
    """The fixed sample the compiled trees must reproduce: held-out rows, and copies of them
    with a random quarter of each row's values missing (so the missing-value branches run)."""
    rng = np.random.default_rng(seed)
    n = min(SAMPLE_ROWS, held_out.shape[0])
    rows = np.asarray(held_out[rng.choice(held_out.shape[0], size=n, replace=False)], np.float64)
    gaps = rows.copy()
    gaps[rng.random(gaps.shape) < 0.25] = np.nan
    return np.ascontiguousarray(np.vstack([rows, gaps]))


def compile_model(model_text: str, held_out: np.ndarray) -> CompiledArtifact:
    """Compile a LightGBM model (its text format) for this machine with lleaves.

    Raises RuntimeError when lleaves is not available; training catches it and writes the
    bundle without the artifact (it is then served through LightGBM).
    """
    why = available()
    if why is not None:
        raise RuntimeError(why)
    import lleaves

    with tempfile.TemporaryDirectory(prefix="lleaves-") as tmp:
        text_path = Path(tmp) / "model.txt"
        text_path.write_text(model_text)
        obj_path = Path(tmp) / OBJECT_FILE
        model = lleaves.Model(model_file=str(text_path))
        model.compile(cache=str(obj_path))
        code = obj_path.read_bytes()
    return CompiledArtifact(code, _llvm_platform(), check_sample(held_out))


def platform_mismatch(platform: dict[str, Any]) -> str | None:
    """None when an artifact built for ``platform`` runs here, else the first difference."""
    why = available()
    if why is not None:
        return why
    here = _llvm_platform()
    if platform.get("compiler") != "lleaves":
        return f"compiled by {platform.get('compiler')!r}, this code loads lleaves artifacts"
    if _major_minor(platform.get("lleaves")) != _major_minor(here["lleaves"]):
        return f"built with lleaves {platform.get('lleaves')}, installed is {here['lleaves']}"
    if platform.get("triple") != here["triple"]:
        return f"built for {platform.get('triple')}, this machine is {here['triple']}"
    needed = {f for f in str(platform.get("features", "")).split(",") if f.startswith("+")}
    present = {f for f in here["features"].split(",") if f.startswith("+")}
    missing = sorted(f[1:] for f in needed - present)
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        return f"built for a CPU with {shown}, which this CPU lacks"
    return None


def _major_minor(v: Any) -> tuple[str, ...]:
    return tuple(str(v).split(".")[:2])


class CompiledForest:
    """Probabilities from the compiled trees: the same numbers as LightGBM's, faster."""

    def __init__(self, model: Any, n_features: int) -> None:
        self._model = model  # keeps the execution engine (and the code) alive
        self._entry = model._c_entry_func
        self.n_features = n_features

    @classmethod
    def load(cls, object_path: Path, model_text_path: Path) -> CompiledForest:
        """Load verified object code; lleaves reads the model text only for its shape."""
        import lleaves

        model = lleaves.Model(model_file=str(model_text_path))
        # With an existing cache file lleaves loads that object code and compiles nothing.
        model.compile(cache=str(object_path))
        return cls(model, model.num_feature())

    def predict(self, rows: np.ndarray) -> np.ndarray:
        """Probability of response for each row of a (n, n_features) float64 array."""
        rows = np.ascontiguousarray(rows, dtype=np.float64)
        n = rows.shape[0]
        out = np.empty(n, dtype=np.float64)
        if n:
            # lleaves' entry point releases the GIL and walks rows [0, n)
            self._entry(rows.ctypes.data_as(_DOUBLE_P), out.ctypes.data_as(_DOUBLE_P), 0, n)
        return out

    def predict_rows(self, rows: list[list[float]]) -> list[float]:
        """Probabilities for a few rows given as Python lists (no numpy on this path)."""
        n, width = len(rows), self.n_features
        flat: list[float] = []
        for row in rows:
            if len(row) != width:
                raise ValueError(f"row has {len(row)} values, the model {width}")
            flat.extend(row)
        data = (ctypes.c_double * (n * width))(*flat)
        out = (ctypes.c_double * n)()
        self._entry(data, out, 0, n)
        return out[:]


def load_checked(
    object_path: Path,
    model_text_path: Path,
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
    try:
        forest = CompiledForest.load(object_path, model_text_path)
    except Exception as exc:  # noqa: BLE001 -- any failure to load native code: fall back
        return None, CompiledStatus(False, f"cannot load {object_path.name}: {exc}")
    if forest.n_features != booster.num_feature():
        return None, CompiledStatus(
            False, f"{forest.n_features} features compiled, the model has {booster.num_feature()}"
        )
    expected = booster.predict(sample)
    got = forest.predict(sample)
    worst = float(np.max(np.abs(got - expected))) if len(sample) else 0.0
    if not worst <= TOLERANCE:  # NaN fails too
        return None, CompiledStatus(
            False, f"differs from LightGBM by {worst:.3g} on the check sample (> {TOLERANCE:g})"
        )
    return forest, CompiledStatus(
        True, f"lleaves {platform.get('lleaves')}, {len(sample)} check rows within {worst:.1g}"
    )
