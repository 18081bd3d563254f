# shellcheck shell=bash
# Sourced by scripts/test.sh: Debian's Chromium and its WebDriver for the browser tests.
#
#   browser_ensure   # install chromium and chromium-driver with apt-get when either is absent
#
# Idempotent: a machine that has both installs nothing. The tests drive this system browser
# through Selenium; nothing downloads a browser build of its own.

browser_ensure() {
    if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
        return 0
    fi
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if ! command -v sudo >/dev/null 2>&1; then
            echo "error: the browser tests need chromium and chromium-driver;" \
                "install them as root: apt-get install chromium chromium-driver" >&2
            return 1
        fi
        sudo="sudo"
    fi
    echo "==> installing chromium and chromium-driver (apt-get)"
    # another apt-get may hold the lock for a while on a shared machine: wait for it
    $sudo apt-get -o DPkg::Lock::Timeout=600 update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -q \
        --no-install-recommends chromium chromium-driver
}
