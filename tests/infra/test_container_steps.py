"""The image's build and start steps hold without a Docker engine: files, order, user, commands."""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.infra.dockerfile import (
    Stage,
    copy_sources,
    dockerignore_excludes,
    env_defaults,
    parse_dockerfile,
)

ROOT = Path(__file__).resolve().parents[2]
GLOBAL_ARGS, STAGES = parse_dockerfile(ROOT / "Dockerfile")
BY_NAME = {stage.name: stage for stage in STAGES if stage.name}
FIRST_PARTY = {"scoring", "api", "training", "wsgi", "tests", "bench"}


def _chain(stage: Stage) -> list[Stage]:
    """The stage and the stages it builds on, base first."""
    chain = [stage]
    while chain[0].base in BY_NAME:
        chain.insert(0, BY_NAME[chain[0].base])
    return chain


def _final_chain() -> list[Stage]:
    """The stages of the default image (build args at their defaults)."""
    base = STAGES[-1].base
    for key, value in GLOBAL_ARGS.items():
        base = base.replace("${" + key + "}", value)
    return [*_chain(BY_NAME[base]), STAGES[-1]]


def _final(keyword: str) -> list:
    """Instructions with ``keyword`` along the default image's chain."""
    return [i for stage in _final_chain() for i in stage.all(keyword)]


def _copy_target(source: str, dest: str) -> str:
    """Where COPY puts ``source``: a folder's contents go to dest, a file into dest/ or as dest."""
    if (ROOT / source).is_dir() or not dest.endswith("/"):
        return dest.rstrip("/")
    return f"{dest}{Path(source).name}"


#: modules of optional engines the image does not run, and the requirements file that pins
#: their extra dependencies (checked against that file instead of requirements.txt)
OPTIONAL_MODULES = {
    "training/engines/dask.py": "requirements-dask.txt",
    "training/engines/dask_transactions.py": "requirements-dask.txt",
    # the tree compiler (lleaves) runs in its own environment, .venv-compile
    "scoring/compiled_trees.py": "requirements-compile.txt",
    "scoring/tree_codegen.py": "requirements-compile.txt",
}


def _pinned_requirements(name: str = "requirements.txt") -> dict[str, str]:
    """A requirements file as {normalised name: version}; fails on any unpinned line.

    A pin may carry an environment marker (``pkg==1.0; python_version < "3.13"``).
    """
    pins = {}
    for line in (ROOT / name).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-r "):
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)==([A-Za-z0-9_.+-]+)(?:\s*;\s*\S.*)?", line)
        assert match, f"{name} line not pinned with ==: {line!r}"
        pins[re.sub(r"[-_.]+", "-", match[1]).lower()] = match[2]
    return pins


def test_every_copied_file_exists_and_is_in_the_build_context():
    """A COPY from the context names files that exist and that .dockerignore lets through."""
    checked = 0
    for stage in STAGES:
        for instruction in stage.all("COPY"):
            sources, _, from_stage = copy_sources(instruction)
            if from_stage:
                assert from_stage in BY_NAME, f"line {instruction.line}: no stage {from_stage}"
                continue
            for source in sources:
                assert (ROOT / source).exists(), f"line {instruction.line}: {source} is missing"
                assert not dockerignore_excludes(ROOT, source.rstrip("/")), (
                    f"line {instruction.line}: {source} is excluded by .dockerignore"
                )
                checked += 1
    assert checked >= 5


def test_dockerignore_keeps_local_state_and_bundles_out():
    """The virtualenv, generated data, local bundles and keys never reach the build context."""
    for path in (".venv", "data", "model_artifacts", ".run", ".git", ".pytest_cache"):
        assert dockerignore_excludes(ROOT, path), path
    assert not dockerignore_excludes(ROOT, "scoring/engine.py")


def test_dependencies_are_installed_from_pinned_requirements_before_the_code():
    """pip installs requirements.txt (all pinned) in a layer that precedes every code COPY."""
    _pinned_requirements()
    installs = [
        (stage, i)
        for stage in STAGES
        for i in stage.all("RUN")
        if re.search(r"pip install\b.*-r\s+\S+", i.args)
    ]
    # the service's requirements once; the tree compiler's own environment in its own stage
    service = [(s, i) for s, i in installs if s.name != "compiler"]
    assert len(service) == 1
    assert [s.name for s, _ in installs if s.name == "compiler"] == ["compiler"]
    stage, install = service[0]
    requirement_path = re.search(r"-r\s+(\S+)", install.args)[1]
    copied = {}
    for instruction in stage.all("COPY"):
        sources, dest, _ = copy_sources(instruction)
        copied[dest] = (sources, instruction.line)
    assert requirement_path in copied, f"{requirement_path} is never copied into {stage.name}"
    assert copied[requirement_path][0] == ["requirements.txt"]
    assert copied[requirement_path][1] < install.line
    # no code is copied before the install: the dependency layer survives code changes
    code_lines = [
        i.line
        for s in STAGES
        for i in s.all("COPY")
        if any(src.rstrip("/") in FIRST_PARTY or src.endswith(".py") for src in copy_sources(i)[0])
    ]
    assert code_lines and min(code_lines) > install.line


def _third_party_imports(files: list[Path] | None = None) -> set[str]:
    """Top-level modules imported by the code the image copies, minus stdlib and our own.

    Optional engines (``OPTIONAL_MODULES``) are left out unless ``files`` names them.
    """
    if files is None:
        files = [ROOT / "wsgi.py", ROOT / "gunicorn.conf.py"]
        for package in ("scoring", "api", "training"):
            files += sorted((ROOT / package).rglob("*.py"))
        files = [f for f in files if f.relative_to(ROOT).as_posix() not in OPTIONAL_MODULES]
    names: set[str] = set()
    for path in files:
        if not path.exists():
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in FIRST_PARTY}


def test_requirements_cover_every_third_party_import():
    """The image installs only requirements.txt, so every import of the code must be pinned."""
    pins = _pinned_requirements()
    distributions = importlib.metadata.packages_distributions()
    missing = []
    for module in sorted(_third_party_imports()):
        dists = {re.sub(r"[-_.]+", "-", d).lower() for d in distributions.get(module, [module])}
        if not dists & set(pins):
            missing.append(f"{module} (distribution {', '.join(sorted(dists))})")
    assert not missing, f"imported but not in requirements.txt: {missing}"


def _direct_requirements() -> list[str]:
    """Normalised names of requirements.txt's direct dependencies (before the transitive block)."""
    text = (ROOT / "requirements.txt").read_text(encoding="utf-8")
    direct = text.split("# Transitive dependencies", 1)[0]
    return [
        re.sub(r"[-_.]+", "-", line.split("==")[0]).lower()
        for line in direct.splitlines()
        if line.strip() and not line.startswith("#")
    ]


#: direct pins no module of ours imports, because a library we use picks them up when installed
USED_BY_A_LIBRARY = {
    "hiredis": "redis-py parses replies with it when installed (the caps MGET, bench/RESULTS.md)",
}


def test_every_direct_requirement_is_imported():
    """A direct pin the code never imports is dead weight in the image (kneed was one)."""
    distributions = importlib.metadata.packages_distributions()
    optional = [ROOT / path for path in OPTIONAL_MODULES]
    imported = set()
    for module in _third_party_imports() | _third_party_imports(optional):
        imported |= {re.sub(r"[-_.]+", "-", d).lower() for d in distributions.get(module, [module])}
    unused = [
        name for name in _direct_requirements() if name not in imported | set(USED_BY_A_LIBRARY)
    ]
    assert unused == [], f"pinned as direct dependencies but never imported: {unused}"


def test_optional_engines_pin_their_imports():
    """An optional engine's imports are pinned in its own requirements file (or the base one)."""
    distributions = importlib.metadata.packages_distributions()
    for module_path, requirements in OPTIONAL_MODULES.items():
        pins = _pinned_requirements("requirements.txt") | _pinned_requirements(requirements)
        missing = []
        for module in sorted(_third_party_imports([ROOT / module_path])):
            dists = {re.sub(r"[-_.]+", "-", d).lower() for d in distributions.get(module, [module])}
            if not dists & set(pins):
                missing.append(module)
        assert not missing, f"{module_path} imports {missing}, not pinned in {requirements}"


def test_cmd_is_exec_form_gunicorn_with_existing_config_and_app():
    """CMD runs gunicorn with gunicorn.conf.py and wsgi:app, both copied into WORKDIR."""
    cmd = _final("CMD")[-1].exec_form()
    assert cmd is not None, "CMD must use the exec (JSON array) form"
    assert cmd[0] == "gunicorn"
    config = cmd[cmd.index("-c") + 1]
    module, attribute = cmd[-1].split(":")
    workdir = _final("WORKDIR")[-1].args
    copied = set()
    for instruction in _final("COPY"):
        sources, dest, from_stage = copy_sources(instruction)
        if from_stage is None:
            copied.update(_copy_target(source, dest) for source in sources)
    for name in (config, f"{module}.py"):
        assert (ROOT / name).is_file(), f"{name} does not exist"
        assert str(Path(workdir) / name) in copied, f"{name} is not copied into {workdir}"
    tree = ast.parse((ROOT / f"{module}.py").read_text(encoding="utf-8"))
    assigned = {
        target.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    assert attribute in assigned, f"{module}.py does not define {attribute}"


def test_image_runs_as_a_non_root_user():
    """The final image switches to a numeric non-root user."""
    user = _final("USER")[-1].args.split(":")[0]
    assert user not in {"root", "0"}
    assert user.isdigit()


def test_healthcheck_probes_readiness_on_the_bound_port_without_curl():
    """HEALTHCHECK uses python (slim has no curl) against /readyz, which answers 503 while no
    verified bundle is loaded (/healthz would say healthy); EXPOSE matches BIND."""
    health = _final("HEALTHCHECK")[-1].exec_form()
    assert health and health[0] == "python" and "/readyz" in health[-1]
    env = {k: v for stage in _final_chain() for k, v in env_defaults(stage).items()}
    port = env["BIND"].rsplit(":", 1)[1]
    assert env["BIND"].startswith("0.0.0.0:"), "inside a container gunicorn must listen on all"
    assert [i.args for i in _final("EXPOSE")] == [port]


def test_no_secret_is_baked_into_the_image():
    """No ENV or ARG gives a key, token or password a value; .run/ (local keys) is not copied."""
    secretish = re.compile(r"KEY|SECRET|TOKEN|PASSWORD", re.IGNORECASE)
    for stage in STAGES:
        for key, value in env_defaults(stage).items():
            assert not (secretish.search(key) and value), f"ENV {key} carries a value"
        for instruction in stage.all("ARG"):
            key, _, value = instruction.args.partition("=")
            assert not (secretish.search(key) and value), f"ARG {key} carries a value"
    assert dockerignore_excludes(ROOT, ".run/api_key")


def test_bake_bundle_arg_selects_an_existing_stage_either_way():
    """BAKE_BUNDLE=0 and =1 both name a stage; the baked one trains with an existing config."""
    final_base = STAGES[-1].base
    assert "${BAKE_BUNDLE}" in final_base
    for value in ("0", "1"):
        assert final_base.replace("${BAKE_BUNDLE}", value) in BY_NAME
    baked = BY_NAME[final_base.replace("${BAKE_BUNDLE}", "1")]
    sources = [copy_sources(i) for i in baked.all("COPY")]
    trainer = BY_NAME[next(s[2] for s in sources if s[2])]
    train_run = " ".join(i.args for i in trainer.all("RUN"))
    config = re.search(r"--config\s+(\S+)", train_run)[1]
    assert (ROOT / config).is_file(), f"the bake stage trains with {config}, which is missing"
    assert GLOBAL_ARGS["BAKE_BUNDLE"] == "0", "the default image expects a mounted bundle"


# ----------------------------------------------------------------------------------------------
# the same install and start commands, run for real in a fresh virtual environment
# ----------------------------------------------------------------------------------------------


def _free_port() -> int:
    """A free loopback port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_image_steps_work_in_a_fresh_virtualenv(tmp_path):
    """Install, bake (small) and start exactly as the Dockerfile says; its HEALTHCHECK passes."""
    if os.environ.get("SKIP_IMAGE_STEPS") == "1":
        pytest.skip("SKIP_IMAGE_STEPS=1")
    venv, app = tmp_path / "venv", tmp_path / "app"
    # container paths -> paths of this run
    paths = {"/opt/venv": str(venv), "/app": str(app), "/tmp/": f"{tmp_path}/tmp-"}

    # one pass, and only where a path starts: the replacements themselves live under /tmp
    container_path = re.compile(r"(?<![\w/.-])(" + "|".join(map(re.escape, paths)) + ")")

    def local(text: str) -> str:
        return container_path.sub(lambda match: paths[match[1]], text)

    deps = BY_NAME["deps"]
    for instruction in deps.all("COPY"):
        sources, dest, _ = copy_sources(instruction)
        shutil.copy(ROOT / sources[0], local(dest))
    # `python` in the image is 3.11; here it is the interpreter running the tests
    build_env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    for instruction in deps.all("RUN"):
        subprocess.run(
            ["bash", "-c", local(instruction.args)], env=build_env, check=True, timeout=900
        )

    # the app stage minus its root-only system steps (apt-get, useradd)
    for instruction in [*BY_NAME["app"].all("COPY"), *BY_NAME["bundle"].all("COPY")]:
        sources, dest, from_stage = copy_sources(instruction)
        if from_stage:
            continue
        for source in sources:
            target = Path(_copy_target(source, local(dest)))
            target.parent.mkdir(parents=True, exist_ok=True)
            if (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(ROOT / source, target)
    env = {k: local(v) for k, v in env_defaults(BY_NAME["app"]).items() if k != "PATH"}
    env.update(
        PATH=f"{venv}/bin:{os.environ['PATH']}",
        HOME=str(tmp_path),
        BIND=f"127.0.0.1:{_free_port()}",
        API_KEYS="image-steps-key",
        ADMIN_API_KEYS="image-steps-admin",
    )
    # the bake stage, on a small table so the test stays quick
    for instruction in BY_NAME["bundle"].all("RUN"):
        command = local(instruction.args).replace(" generate ", " generate --customers 2000 ", 1)
        subprocess.run(["bash", "-c", command], cwd=app, env=env, check=True, timeout=600)
    assert (app / "model_artifacts" / "current").is_dir()

    cmd = _final("CMD")[-1].exec_form()
    health = _final("HEALTHCHECK")[-1].exec_form()
    server = subprocess.Popen(
        cmd, cwd=app, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        healthy = False
        for _ in range(300):
            if server.poll() is not None:
                break
            if subprocess.run(health, cwd=app, env=env, capture_output=True).returncode == 0:
                healthy = True
                break
            time.sleep(0.2)
        assert healthy, "the HEALTHCHECK never passed"
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            output, _ = server.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            output, _ = server.communicate()
    assert "Traceback" not in output, output[-3000:]
