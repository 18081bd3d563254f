#!/usr/bin/env bash
# Create or update .venv-compile, the tree compiler's own environment (requirements-compile.txt).
#
# Training compiles the response model to native code in it (scoring/compiled_trees.py); without
# it, bundles are written without compiled trees and served through LightGBM (same numbers).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${COMPILE_VENV:-$ROOT/.venv-compile}
# shellcheck source=scripts/venv.sh
source "$ROOT/scripts/venv.sh"
ensure_venv requirements-compile.txt
