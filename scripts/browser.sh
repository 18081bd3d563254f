# shellcheck shell=bash
# Sourced by scripts/test.sh: Debian's Chromium and its WebDriver for the browser tests.
#
#   browser_ensure   # install chromium and chromium-driver with apt-get when either is absent
#
# Idempotent: a machine that has both installs nothing. The tests drive this system browser
# through Selenium; nothing downloads a browser build of its own.

# shellcheck source=scripts/apt.sh
source "$(dirname "${BASH_SOURCE[0]}")/apt.sh"

browser_ensure() {
    if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
        return 0
    fi
    apt_install "the browser tests need chromium and chromium-driver" chromium chromium-driver
}
