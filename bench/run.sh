#!/usr/bin/env bash
# `make bench`: run the benchmarks and refresh bench/RESULTS.md.
#
#   bench/run.sh [--quick | --full | --smoke] [serving] [batch] [training] [profile] [evidence]
#                [transactions]
#   bench/run.sh --full recycling   # opt-in: latency through worker recycles and SIGHUP roll-outs
#   bench/run.sh features stream     # opt-in: feature-store load, the PyFlink stream job
#
#   --quick   (default) smaller sizes and shorter runs: a sanity check in a few minutes
#   --full    the sizes the issues name: 3 rounds x 5 s per endpoint with 1 and 2 workers,
#             1,000,000 customers scored, training at 10,000 / 100,000 / 1,000,000 customers,
#             10,000,000 transaction rows -> features and the CLV fit on their ~1M customers
#   --smoke   tiny sizes; what tests/bench/test_bench_smoke.py runs to keep the scripts working
# Names pick benchmarks (default: all). Results: bench/results/*.json, tables on the terminal,
# and the figures section of bench/RESULTS.md (only for --quick and --full).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/venv.sh
source scripts/venv.sh
ensure_venv requirements-dev.txt
# shellcheck source=scripts/wrk.sh
source scripts/wrk.sh
# the serving benchmarks load the servers with wrk
wrk_ensure
# the tree compiler's own environment: trained bundles then carry compiled trees
"$ROOT/scripts/compile-venv.sh"
PY="$VENV/bin/python"

MODE=--quick
SELECTED=()
for arg in "$@"; do
    case "$arg" in
        --quick | --full | --smoke) MODE=$arg ;;
        serving | batch | training | profile | evidence | transactions | features | stream | recycling)
            SELECTED+=("$arg")
            ;;
        -h | --help)
            sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "bench/run.sh: unknown argument '$arg' (try --help)" >&2
            exit 2
            ;;
    esac
done
if [ ${#SELECTED[@]} -eq 0 ]; then
    SELECTED=(serving batch training profile evidence transactions)
fi
wants() {
    local name
    for name in "${SELECTED[@]}"; do
        [ "$name" = "$1" ] && return 0
    done
    return 1
}

export BENCH_COMMAND="bench/run.sh $MODE ${SELECTED[*]}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/bench-run.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

RESULTS=()
if [ "$MODE" = "--smoke" ]; then
    # smoke runs must never overwrite the committed figures
    RESULTS=(--results "$WORK/results")
fi

PRODUCTION=()
if wants serving || wants batch || wants profile || wants recycling; then
    customers=75000
    [ "$MODE" = "--smoke" ] && customers=5000
    echo "==> preparing the shared demo bundle ($customers customers)"
    "$PY" -m bench.demo_bundle --out "$WORK/model_artifacts" --customers "$customers"
    if [ "$MODE" != "--smoke" ]; then
        # issue 12: 12 features, 6 campaigns, ~200 trees of 31 leaves, trained by our CLI
        echo "==> preparing the production-sized bundle ($customers customers)"
        "$PY" -m bench.demo_bundle --out "$WORK/production_artifacts" --customers "$customers" \
            --shape production
        PRODUCTION=(--production-root "$WORK/production_artifacts")
    fi
fi
if wants serving; then
    echo "==> serving"
    "$PY" -m bench.serving "$MODE" --model-root "$WORK/model_artifacts" "${PRODUCTION[@]}" \
        "${RESULTS[@]}"
fi
if wants recycling; then
    # one worker: recycles and SIGHUP roll-outs against no recycling, on the production-sized
    # bundle when there is one (its load is the one a replacement used to wait for)
    echo "==> recycling"
    root="$WORK/model_artifacts"
    [ ${#PRODUCTION[@]} -gt 0 ] && root="${PRODUCTION[1]}"
    "$PY" -m bench.recycling "$MODE" --model-root "$root" "${RESULTS[@]}"
fi
if wants profile; then
    echo "==> profile of one request"
    "$PY" -m bench.profile_request "$MODE" --model-root "$WORK/model_artifacts" "${RESULTS[@]}"
fi
if wants batch; then
    echo "==> offline batch scoring"
    "$PY" -m bench.batch_scoring "$MODE" --model-root "$WORK/model_artifacts" "${PRODUCTION[@]}" \
        "${RESULTS[@]}"
fi
if wants training; then
    echo "==> training"
    "$PY" -m bench.training "$MODE" "${RESULTS[@]}"
fi
if wants features; then
    echo "==> feature-store load (training features load)"
    "$PY" -m bench.feature_load
fi
if wants stream; then
    echo "==> stream job (PyFlink) and requests by customer id"
    scripts/stream-venv.sh
    "$PY" -m bench.stream
fi
if wants evidence; then
    echo "==> algorithm comparison and reports: time added to training"
    "$PY" -m bench.evidence "$MODE" "${RESULTS[@]}"
fi
if wants transactions; then
    echo "==> transactions -> features, BG/NBD + Gamma-Gamma fit and valuation"
    "$PY" -m bench.transactions "$MODE" "${RESULTS[@]}"
fi
if [ "$MODE" != "--smoke" ]; then
    "$PY" -m bench.report
fi
