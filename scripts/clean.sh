#!/usr/bin/env bash
# `make clean`: remove caches and generated files; keeps .venv, data/ and model_artifacts/
# unless asked (`make clean-all` also removes those).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

find . \( -path ./.venv -o -path ./.venv-stream -o -path ./.venv-compile \) -prune -o -type d -name __pycache__ -print0 | xargs -0 rm -rf
rm -rf .pytest_cache .ruff_cache ./*.egg-info .run/prometheus
if [ "${1:-}" = "--all" ]; then
    rm -rf .venv .venv-stream .venv-compile .run data
    find model_artifacts -mindepth 1 -maxdepth 1 ! -name .gitkeep -exec rm -rf {} + 2>/dev/null || true
fi
