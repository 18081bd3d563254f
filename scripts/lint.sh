#!/usr/bin/env bash
# `make lint`: ruff (lint and format check) and shellcheck over the shell scripts.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/venv.sh
source scripts/venv.sh
ensure_venv requirements-dev.txt

status=0
"$VENV/bin/ruff" check . || status=1
"$VENV/bin/ruff" format --check . || status=1
mapfile -t shell_files < <(find . \( -path ./.venv -o -path ./.venv-stream \) -prune -o \( -name '*.sh' -o -path ./.ci/run \) \
    -type f -print | sort)
"$VENV/bin/shellcheck" -x "${shell_files[@]}" || status=1
exit $status
