# shellcheck shell=bash
# Sourced by the test scripts: make sure a Redis server answers at $REDIS_URL.
#
#   redis_ensure   # use $REDIS_URL if it answers, else start redis-server on a free port
#   redis_stop     # stop the server redis_ensure started (no-op when it reused one)
#
# The caller installs the trap that calls redis_stop, so the server goes away on success,
# failure and interrupt alike.

REDIS_PID=""
REDIS_DIR=""

free_port() {
    # Ask the kernel for a free loopback port; the tiny race before it is reused is acceptable
    # because callers retry on a failed start.
    "${VENV:-.venv}/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

redis_ping() {
    local url=$1
    if command -v redis-cli >/dev/null 2>&1; then
        [ "$(timeout 3 redis-cli -u "$url" ping 2>/dev/null)" = "PONG" ]
    else
        "${VENV:-.venv}/bin/python" - "$url" <<'PY' >/dev/null 2>&1
import sys

import redis

redis.Redis.from_url(sys.argv[1], socket_timeout=2, socket_connect_timeout=2).ping()
PY
    fi
}

redis_ensure() {
    local port attempt
    if [ -n "${REDIS_URL:-}" ] && redis_ping "$REDIS_URL"; then
        echo "==> using the Redis server at $REDIS_URL"
        return 0
    fi
    [ -n "${REDIS_URL:-}" ] && echo "==> REDIS_URL=$REDIS_URL does not answer; starting our own"
    if ! command -v redis-server >/dev/null 2>&1; then
        echo "error: no Redis server answers and redis-server is not installed:" >&2
        echo "       install redis-server (apt-get install redis-server), or set REDIS_URL" >&2
        return 1
    fi
    REDIS_DIR=$(mktemp -d "${TMPDIR:-/tmp}/segment-redis.XXXXXX")
    for attempt in 1 2 3; do
        port=$(free_port)
        redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
            --daemonize no --dir "$REDIS_DIR" >"$REDIS_DIR/redis.log" 2>&1 &
        REDIS_PID=$!
        for _ in $(seq 1 50); do
            if redis_ping "redis://127.0.0.1:$port/0"; then
                export REDIS_URL="redis://127.0.0.1:$port/0"
                echo "==> started redis-server (pid $REDIS_PID) at $REDIS_URL"
                return 0
            fi
            kill -0 "$REDIS_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill "$REDIS_PID" 2>/dev/null || true
        wait "$REDIS_PID" 2>/dev/null || true
        REDIS_PID=""
        echo "==> redis-server did not come up on port $port (attempt $attempt)" >&2
    done
    cat "$REDIS_DIR/redis.log" >&2
    return 1
}

redis_stop() {
    if [ -n "$REDIS_PID" ]; then
        kill "$REDIS_PID" 2>/dev/null || true
        wait "$REDIS_PID" 2>/dev/null || true
        REDIS_PID=""
    fi
    if [ -n "$REDIS_DIR" ]; then
        rm -rf "$REDIS_DIR"
        REDIS_DIR=""
    fi
}
