# shellcheck shell=bash
# Sourced by scripts/test.sh and bench/run.sh: Debian's wrk, the HTTP load generator the serving
# benchmarks use beside the Python one (tests/bench/test_bench_smoke.py runs both).
#
#   wrk_ensure   # install wrk with apt-get when it is absent
#
# Idempotent: a machine that has wrk installs nothing.

wrk_ensure() {
    if command -v wrk >/dev/null 2>&1; then
        return 0
    fi
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if ! command -v sudo >/dev/null 2>&1; then
            echo "error: the serving benchmarks need wrk; install it as root: apt-get install wrk" >&2
            return 1
        fi
        sudo="sudo"
    fi
    echo "==> installing wrk (apt-get)"
    # another apt-get may hold the lock for a while on a shared machine: wait for it
    $sudo apt-get -o DPkg::Lock::Timeout=600 update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -q \
        --no-install-recommends wrk
}
