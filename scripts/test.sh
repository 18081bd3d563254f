#!/usr/bin/env bash
# `make test`: set up the dev environment, make sure Redis answers, run ruff and pytest.
#
# Arguments are passed to pytest (`make test ARGS="-x -k recommend"`). A Redis server started
# here is stopped on exit, whether the checks pass, fail or are interrupted.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/venv.sh
source scripts/venv.sh
# shellcheck source=scripts/redis.sh
source scripts/redis.sh
# shellcheck source=scripts/browser.sh
source scripts/browser.sh
# shellcheck source=scripts/nginx.sh
source scripts/nginx.sh
# shellcheck source=scripts/wrk.sh
source scripts/wrk.sh

trap redis_stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ensure_venv requirements-dev.txt
# The stream job's own environment (PyFlink + the scoring core; tests/stream runs the job in it).
"$ROOT/scripts/stream-venv.sh"
# the tree compiler's own environment: trained bundles then carry compiled trees
"$ROOT/scripts/compile-venv.sh"
redis_ensure
export REDIS_URL
browser_ensure
nginx_ensure
wrk_ensure

# Run every check even when an earlier one fails, so one run reports everything; fail at the end.
failed=()
echo "==> ruff check"
"$VENV/bin/ruff" check . || failed+=("ruff check")
echo "==> ruff format --check"
"$VENV/bin/ruff" format --check . || failed+=("ruff format")
echo "==> pytest $*"
"$VENV/bin/python" -m pytest "$@" || failed+=("pytest")

if [ ${#failed[@]} -gt 0 ]; then
    echo "==> FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "==> all checks passed"
