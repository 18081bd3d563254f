# shellcheck shell=bash
# Sourced by scripts/browser.sh, scripts/nginx.sh and scripts/wrk.sh: the one way this project
# installs a Debian package that a test or benchmark drives for real.
#
#   apt_install "the browser tests need chromium" chromium chromium-driver
#
# As root it runs apt-get; otherwise through sudo; without sudo it names the packages to install
# and fails, so a missing tool is an error rather than a skipped test.

apt_install() {
    local why=$1 sudo=""
    shift
    if [ "$(id -u)" -ne 0 ]; then
        if ! command -v sudo >/dev/null 2>&1; then
            echo "error: $why; install as root: apt-get install $*" >&2
            return 1
        fi
        sudo="sudo"
    fi
    echo "==> installing $* (apt-get)"
    # another apt-get may hold the lock for a while on a shared machine: wait for it
    $sudo apt-get -o DPkg::Lock::Timeout=600 update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -q \
        --no-install-recommends "$@"
}
