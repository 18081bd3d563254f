#!/usr/bin/env bash
# `make run`: set up the environment, train the demo bundle if none exists, serve with gunicorn.
#
# Environment (all optional):
#   HOST / PORT      where to listen (default 127.0.0.1 / 8000); BIND=host:port wins over both
#   API_KEYS         comma-separated scoring keys; generated once into .run/api_key when unset
#   ADMIN_API_KEYS   comma-separated admin keys;   generated once into .run/admin_key when unset
#   MODEL_ROOT       bundle root (default model_artifacts)
#   REDIS_URL        use Redis for the profile cache; unset means the in-process cache
#   PYTHON           interpreter that creates .venv (default: python3, must be >= 3.11)
# Everything else (WEB_CONCURRENCY, GUNICORN_THREADS, LOG_LEVEL, ...) passes through to
# gunicorn.conf.py and the service settings.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/venv.sh
source scripts/venv.sh

ensure_venv requirements.txt
# the tree compiler's own environment: trained bundles then carry compiled trees
"$ROOT/scripts/compile-venv.sh"
PY="$VENV/bin/python"

export MODEL_ROOT=${MODEL_ROOT:-model_artifacts}
if [ ! -e "$MODEL_ROOT/current" ]; then
    if [ ! -d data/demo ]; then
        echo "==> generating the demo data into data/demo"
        "$PY" -m training generate --out data/demo --seed 42
    fi
    echo "==> training the demo bundle into $MODEL_ROOT"
    "$PY" -m training train --config examples/demo.toml --data-dir data/demo --output "$MODEL_ROOT"
else
    echo "==> serving the bundle $MODEL_ROOT/current -> $(readlink "$MODEL_ROOT/current" || echo '?')"
fi

# Keys: taken from the environment, else generated once and kept (mode 600) under .run/.
mkdir -p .run
chmod 700 .run
key_from_file() {
    local file=$1
    if [ ! -s "$file" ]; then
        (umask 077 && "$PY" -c 'import secrets; print(secrets.token_urlsafe(32))' >"$file")
    fi
    cat "$file"
}
if [ -z "${API_KEYS:-}" ]; then
    API_KEYS=$(key_from_file .run/api_key)
    echo "==> API_KEYS unset: using the key in .run/api_key"
fi
if [ -z "${ADMIN_API_KEYS:-}" ]; then
    ADMIN_API_KEYS=$(key_from_file .run/admin_key)
    echo "==> ADMIN_API_KEYS unset: using the key in .run/admin_key"
fi
export API_KEYS ADMIN_API_KEYS

HOST=${HOST:-127.0.0.1}
PORT=${PORT:-8000}
export BIND=${BIND:-$HOST:$PORT}

if [ -n "${REDIS_URL:-}" ]; then
    echo "==> profile cache: Redis at $REDIS_URL"
else
    echo "==> profile cache: in-process (set REDIS_URL to use Redis)"
fi

first_key=${API_KEYS%%,*}
cat <<MSG

==> starting gunicorn on http://$BIND  (Ctrl-C stops it). Try:

curl -s http://$BIND/predict-segment -H 'Content-Type: application/json' -H 'X-API-Key: $first_key' -d '{"total_spend": 1250.0, "order_count": 14, "days_since_last_purchase": 12, "unique_products": 9, "discount_usage": 0.2, "return_rate": 0.05, "mobile_usage": 0.8}'

MSG
exec "$VENV/bin/gunicorn" -c gunicorn.conf.py wsgi:app
