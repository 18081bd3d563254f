# shellcheck shell=bash
# Sourced by scripts/test.sh: Debian's nginx, for the reliability scenarios that put it in front
# of the service (tests/reliability/test_behind_nginx.py, deploy/nginx-loopback.conf).
#
#   nginx_ensure   # install nginx-light with apt-get when nginx is absent
#
# Idempotent: a machine that has nginx installs nothing. The tests start their own nginx on a
# free loopback port with a configuration of their own and stop it by pid; the package's
# service is never started (and nothing here enables it).

nginx_ensure() {
    if command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; then
        return 0
    fi
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if ! command -v sudo >/dev/null 2>&1; then
            echo "error: the reliability tests behind a proxy need nginx;" \
                "install it as root: apt-get install nginx-light" >&2
            return 1
        fi
        sudo="sudo"
    fi
    echo "==> installing nginx-light (apt-get)"
    # another apt-get may hold the lock for a while on a shared machine: wait for it
    $sudo apt-get -o DPkg::Lock::Timeout=600 update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -q \
        --no-install-recommends nginx-light
    # where the package started its default site (port 80 on every address), stop it: it was
    # absent a moment ago, so nothing of anyone else's is stopped
    $sudo nginx -s quit 2>/dev/null || true
}
