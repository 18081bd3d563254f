"""What every benchmark shares: the machine description, measured child processes, results files.

Numbers from these benchmarks are only comparable with the machine they were measured on, so
every results file records the cores, CPU model, memory, load average, library versions, date,
git revision and the command that produced it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"
#: scratch space for generated data and bundles (gitignored)
OUT_DIR = ROOT / "bench" / "out"
#: the project's interpreter; benchmarks run children with it so they use the same packages
PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv").is_dir() else sys.executable
#: the key the benchmarks' servers accept (loopback only, never a real key)
BENCH_API_KEY = "bench-key-not-secret"

_LIBRARIES = (
    "numpy",
    "pandas",
    "pyarrow",
    "scikit-learn",
    "lightgbm",
    "flask",
    "gunicorn",
    "marshmallow",
    "orjson",
    "werkzeug",
)


# ---- the machine --------------------------------------------------------------------------------
def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or the platform's guess elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memory_total_gb() -> float | None:
    """Total memory in GB from /proc/meminfo, or None when unavailable."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries whose speed the benchmarks measure."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
    ).stdout.strip()


def git_revision() -> str | None:
    """The checked-out commit (with ``-dirty`` when the tree has changes), or None."""
    try:
        sha = _git("rev-parse", "--short", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}-dirty" if dirty else sha


def command_line(module: str, argv: Sequence[str]) -> str:
    """The command that ran a benchmark (``bench/run.sh`` passes its own as BENCH_COMMAND)."""
    here = shlex.join(["python", "-m", module, *argv])
    outer = os.environ.get("BENCH_COMMAND")
    return f"{outer}: {here}" if outer else here


def machine_info(module: str, argv: Sequence[str]) -> dict[str, Any]:
    """Everything a reader needs to judge a figure: machine, load, versions, date, command."""
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux: no affinity API
        allowed = list(range(os.cpu_count() or 1))
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": os.cpu_count(),
        "cores_allowed": allowed,
        "cpu_model": cpu_model(),
        "memory_gb": memory_total_gb(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "os": f"{platform.system()} {platform.release()}",
        "versions": library_versions(),
        "git_revision": git_revision(),
        "command": command_line(module, argv),
    }


# ---- child processes ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ChildRun:
    """A finished child process: wall time, its own peak resident memory and its output."""

    wall_s: float
    max_rss_mb: float
    returncode: int
    stdout: str
    stderr: str

    def check(self, what: str) -> ChildRun:
        """Raise with the child's stderr tail when it failed."""
        if self.returncode != 0:
            tail = "\n".join(self.stderr.strip().splitlines()[-25:])
            raise RuntimeError(f"{what} failed with exit code {self.returncode}:\n{tail}")
        return self


def run_child(
    cmd: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    cwd: Path = ROOT,
    timeout: float = 1800.0,
) -> ChildRun:
    """Run ``cmd`` and measure its wall time and peak RSS (``wait4``'s ru_maxrss, this child only).

    ``resource.getrusage(RUSAGE_CHILDREN)`` would report the largest of *all* children waited
    for so far; ``os.wait4`` gives this one child's figure.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(list(cmd), cwd=cwd, env=env, stdout=out, stderr=err, text=True)
        deadline = start + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.02)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        # ru_maxrss is in kilobytes on Linux
        return ChildRun(wall, usage.ru_maxrss / 1024, proc.returncode, out.read(), err.read())


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a child: ours, with the project importable, plus ``extra``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def taskset(cores: str | None) -> list[str]:
    """``taskset -c cores`` as a command prefix when taskset exists and the cores are allowed."""
    if cores is None or shutil.which("taskset") is None:
        return []
    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:
        return []
    wanted = {int(c) for c in cores.split(",")}
    if not wanted <= allowed:
        return []
    return ["taskset", "-c", cores]


# ---- the data and the model ---------------------------------------------------------------------
def training_available() -> bool:
    """True when the training package has its CLI and the demo config exists."""
    return (ROOT / "training" / "__main__.py").is_file() and (
        ROOT / "examples" / "demo.toml"
    ).is_file()


#: the bundle shapes the benchmarks train: generator shape and training config of each
SHAPES = {
    "demo": ROOT / "examples" / "demo.toml",
    # 12 features, 5 segments, 6 campaigns, ~200 trees of 31 leaves (issue 12)
    "production": ROOT / "examples" / "production.toml",
}


def generate_demo_data(
    out_dir: Path, customers: int, seed: int = 42, shape: str = "demo"
) -> ChildRun:
    """Write the demo tables with ``python -m training generate`` (customers, campaigns, responses)."""
    cmd = [PYTHON, "-m", "training", "generate", "--out", str(out_dir)]
    cmd += ["--customers", str(customers), "--seed", str(seed), "--shape", shape]
    return run_child(cmd, env=child_env()).check(f"generating {customers} {shape} customers")


def train_demo_bundle(
    data_dir: Path,
    model_root: Path,
    *extra: str,
    shape: str = "demo",
    config: Path | None = None,
) -> ChildRun:
    """Train ``config`` (default: the config of ``shape``) on ``data_dir`` into ``model_root``
    with the training CLI, as a child process (its wall time and peak memory measured)."""
    config = config or SHAPES[shape]
    cmd = [PYTHON, "-m", "training", "train", "--config", str(config)]
    cmd += ["--data-dir", str(data_dir), "--output", str(model_root), *extra]
    return run_child(cmd, env=child_env()).check(f"training {config.name} on {data_dir}")


_STAGE_LINE = re.compile(r"stage (\S+) done in ([\d.]+) s \(peak RSS ([\d.]+) MiB\)")


def logged_stages(log: str) -> list[tuple[str, float, float]]:
    """(stage, seconds, peak RSS MiB) from the CLI's "stage X done in ..." lines, in run order."""
    return [(m[1], float(m[2]), float(m[3])) for m in _STAGE_LINE.finditer(log)]


def _source_note(model_root: Path) -> Path:
    return model_root.parent / f"{model_root.name}.source"


def bundle_source(model_root: Path) -> str:
    """How the bundle under ``model_root`` was made (as :func:`prepare_bundle` noted it)."""
    note = _source_note(model_root)
    if note.is_file():
        return note.read_text(encoding="utf-8").strip()
    return f"bundle root {model_root}"


def prepare_bundle(
    model_root: Path, *, customers: int = 75_000, seed: int = 42, shape: str = "demo"
) -> str:
    """Put a bundle under ``model_root`` (with ``current``) and say where it came from.

    The bundle of ``shape`` (``demo`` or ``production``, see :data:`SHAPES`) trained by the
    real pipeline when training exists; otherwise the small bundle the tests build (3 segments,
    4 campaigns), which is enough to exercise the service.
    """
    if (model_root / "current").exists():
        return bundle_source(model_root)
    model_root.mkdir(parents=True, exist_ok=True)
    if training_available():
        data_dir = model_root.parent / f"{model_root.name}-data"
        generate_demo_data(data_dir, customers, seed, shape)
        train_demo_bundle(data_dir, model_root, shape=shape)
        shutil.rmtree(data_dir, ignore_errors=True)
        source = f"{shape} bundle trained by the pipeline on {customers:,} generated customers"
        trees = _tree_shape(model_root)
        if trees:
            source += f" ({trees})"
    else:
        sys.path.insert(0, str(ROOT / "tests"))
        from bundle_builder import build_bundle

        build_bundle(model_root, n=min(customers, 20_000), seed=seed, version="bench-test-bundle")
        source = "test bundle from tests/bundle_builder.py (training package not available)"
    _source_note(model_root).write_text(source + "\n", encoding="utf-8")
    return source


def _tree_shape(model_root: Path) -> str:
    """'N trees of at most L leaves, AUC x' of the bundle's response model ('' without one)."""
    try:
        manifest = json.loads((model_root / "current" / "manifest.json").read_text())
        model = manifest["metrics"]["response_model"]
        leaves = model["params"]["num_leaves"]
        return f"{model['best_iteration']} trees of at most {leaves} leaves, AUC {model['auc']:.3f}"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def bundle_for(model_root: Path | None, scratch: Path, customers: int) -> tuple[Path, str]:
    """The bundle root to benchmark and where it came from: the given one, or a new one."""
    if model_root is not None:
        return model_root, bundle_source(model_root)
    model_root = scratch / "model_artifacts"
    print(f"preparing a bundle ({customers:,} demo customers) ...", flush=True)
    return model_root, prepare_bundle(model_root, customers=customers)


def demo_customers(n: int, seed: int = 7, shape: str = "demo") -> Any:
    """A pandas frame of ``n`` generated customers of ``shape`` (no responses needed)."""
    try:
        from training.generate import generate_demo
    except ImportError:
        generate_demo = None
    if generate_demo is not None:
        return generate_demo(n, seed, shape).customers
    sys.path.insert(0, str(ROOT / "tests"))
    from bundle_builder import synthetic_customers

    return synthetic_customers(n, seed)[0]


# ---- reporting ----------------------------------------------------------------------------------
def median(values: Sequence[float]) -> float:
    """Median of the rounds (NaN when there were none)."""
    return statistics.median(values) if values else float("nan")


def fmt(value: Any, digits: int = 0) -> str:
    """A number for a table: thousands separators, fixed digits; '-' for missing."""
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        return f"{value:,.{digits}f}"
    return str(value)


def _numeric_cell(cell: Any) -> bool:
    if isinstance(cell, int | float):
        return True
    text = str(cell).replace(",", "").replace(".", "").lstrip("-")
    return text.isdigit() or str(cell) == "-"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table; numbers right-aligned."""
    align = []
    for j, _ in enumerate(headers):
        numeric = bool(rows) and all(_numeric_cell(r[j]) for r in rows)
        align.append("---:" if numeric else "---")
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def write_results(name: str, payload: dict[str, Any], directory: Path = RESULTS_DIR) -> Path:
    """Write ``<directory>/<name>.json`` (pretty, stable key order) and return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    path.write_text(json.dumps(payload, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    return path


#: what each size flag means, for ``--help`` (every benchmark reads no flag as ``--quick``)
MODE_HELP = {
    "smoke": "tiny sizes: only checks that the benchmark runs (what the tests use)",
    "quick": "smaller sizes and shorter runs (the default)",
    "full": "the sizes the issues name",
}


def mode_parser(doc: str, modes: Sequence[str]) -> argparse.ArgumentParser:
    """An argument parser whose size flags (``--smoke``, ``--quick``, ``--full``) exclude each other."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    size = ap.add_mutually_exclusive_group()
    for mode in modes:
        size.add_argument(
            f"--{mode}", dest="mode", action="store_const", const=mode, help=MODE_HELP.get(mode)
        )
    return ap


def sized_args(
    doc: str, modes: dict[str, dict[str, Any]], argv: Sequence[str], *, example: str, rounds: str
) -> tuple[argparse.Namespace, list[int], int]:
    """A by-size benchmark's flags (mode, ``--sizes``, ``--rounds``, ``--results``): the parsed
    arguments, the customer counts and the rounds (the mode's unless given)."""
    ap = mode_parser(doc, modes)
    ap.add_argument("--sizes", help=f"comma-separated customer counts, e.g. {example}")
    ap.add_argument("--rounds", type=int, help=rounds)
    ap.add_argument("--results", type=Path, help="results folder (default bench/results)")
    args = ap.parse_args(argv)
    mode = modes[args.mode or "quick"]
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else mode["sizes"]
    return args, sizes, args.rounds or mode["rounds"]


def by_size(name: str, sizes: Sequence[int], run: Any) -> list[dict[str, Any]]:
    """``run(n, scratch)`` for each size, in one scratch folder removed afterwards."""
    scratch = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    try:
        return [run(n, scratch) for n in sizes]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def publish(name: str, result: dict[str, Any], table: str, directory: Path | None = None) -> Path:
    """Write the results JSON, print the Markdown table and where the JSON went."""
    path = write_results(name, result, directory or RESULTS_DIR)
    print()
    print(table)
    print(f"\nwrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return path


def log_tail(log: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a child's log file, for an error message ("(no log)" if unreadable)."""
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
