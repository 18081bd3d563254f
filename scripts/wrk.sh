# shellcheck shell=bash
# Sourced by scripts/test.sh and bench/run.sh: Debian's wrk, the HTTP load generator the serving
# benchmarks use beside the Python one (tests/bench/test_bench_smoke.py runs both).
#
#   wrk_ensure   # install wrk with apt-get when it is absent
#
# Idempotent: a machine that has wrk installs nothing.

# shellcheck source=scripts/apt.sh
source "$(dirname "${BASH_SOURCE[0]}")/apt.sh"

wrk_ensure() {
    if command -v wrk >/dev/null 2>&1; then
        return 0
    fi
    apt_install "the serving benchmarks need wrk" wrk
}
