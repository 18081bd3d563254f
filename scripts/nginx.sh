# shellcheck shell=bash
# Sourced by scripts/test.sh: Debian's nginx, for the reliability scenarios that put it in front
# of the service (tests/reliability/test_behind_nginx.py, deploy/nginx-loopback.conf).
#
#   nginx_ensure   # install nginx-light with apt-get when nginx is absent
#
# Idempotent: a machine that has nginx installs nothing. The tests start their own nginx on a
# free loopback port with a configuration of their own and stop it by pid; the package's
# service is never started (and nothing here enables it).

# shellcheck source=scripts/apt.sh
source "$(dirname "${BASH_SOURCE[0]}")/apt.sh"

nginx_ensure() {
    if command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; then
        return 0
    fi
    apt_install "the reliability tests behind a proxy need nginx" nginx-light || return 1
    # where the package started its default site (port 80 on every address), stop it: it was
    # absent a moment ago, so nothing of anyone else's is stopped
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo nginx -s quit 2>/dev/null || true
}
