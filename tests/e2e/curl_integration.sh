#!/usr/bin/env bash
# End-to-end check through gunicorn, Redis and curl: every endpoint, bad inputs, auth, batch,
# and a reload to a second bundle. Stops everything it started, also when a check fails.
#
#   tests/e2e/curl_integration.sh            # uses .venv/bin/python; REDIS_URL if it answers
#   PYTHON=/path/to/python KEEP_TMP=1 tests/e2e/curl_integration.sh
#
# Prints one line per check and "N passed, M failed"; exits non-zero when any check failed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
VENV=$(cd "$(dirname "$PYTHON")/.." && pwd)
export VENV
# shellcheck source=scripts/redis.sh
source "$ROOT/scripts/redis.sh"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/segment-e2e.XXXXXX")
GUNICORN_PID=""
CACHE_PREFIX="e2e-$$-$RANDOM"

cleanup() {
    local rc=$?
    if [ -n "$GUNICORN_PID" ] && kill -0 "$GUNICORN_PID" 2>/dev/null; then
        kill -TERM "$GUNICORN_PID" 2>/dev/null || true
        # gunicorn stops its workers on TERM; give it a moment, then insist
        for _ in $(seq 1 50); do
            kill -0 "$GUNICORN_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$GUNICORN_PID" 2>/dev/null || true
        wait "$GUNICORN_PID" 2>/dev/null || true
    fi
    if [ -n "${REDIS_URL:-}" ]; then
        # remove only our own keys from a shared server; never FLUSHDB
        "$PYTHON" - "$REDIS_URL" "$CACHE_PREFIX" <<'PY' >/dev/null 2>&1 || true
import sys

import redis

client = redis.Redis.from_url(sys.argv[1], socket_timeout=2)
for key in client.scan_iter(match=sys.argv[2] + ":*"):
    client.delete(key)
PY
    fi
    redis_stop
    if [ "${KEEP_TMP:-0}" = "1" ] || [ "$rc" -ne 0 ]; then
        echo "(files kept in $TMP)"
    else
        rm -rf "$TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

PASSED=0
FAILED=0
FAILURES=()

ok() {
    PASSED=$((PASSED + 1))
    echo "  ok    $1"
}
not_ok() {
    FAILED=$((FAILED + 1))
    FAILURES+=("$1")
    echo "  FAIL  $1: $2"
}

# call NAME EXPECTED_STATUS PY_EXPR CURL_ARGS...
#   EXPECTED_STATUS is a regex (200, 4.., 40[13]); PY_EXPR is evaluated with `b` = the parsed
#   JSON body (or `t` = the raw text) and must be true. An empty PY_EXPR checks the status only.
call() {
    local name=$1 expected=$2 check=$3 status
    shift 3
    status=$(curl -sS -o "$TMP/body" -w '%{http_code}' --max-time 20 "$@" 2>"$TMP/curl.err") \
        || status="curl-error($(head -c 200 "$TMP/curl.err"))"
    if ! [[ $status =~ ^($expected)$ ]]; then
        not_ok "$name" "status $status, expected $expected; body: $(head -c 300 "$TMP/body")"
        return 0
    fi
    if [ -n "$check" ] && ! "$PYTHON" - "$TMP/body" "$check" <<'PY' 2>"$TMP/check.err"; then
import json
import sys

t = open(sys.argv[1], encoding="utf-8").read()
try:
    b = json.loads(t)
except ValueError:
    b = None
if not eval(sys.argv[2]):
    sys.exit(1)
PY
        not_ok "$name" "check failed: $check; body: $(head -c 400 "$TMP/body") $(tail -n 1 "$TMP/check.err")"
        return 0
    fi
    ok "$name"
}

# the error envelope, optionally naming a field: {"error": {"code", "message", "fields"?}}
envelope() {
    local field=${1:-}
    local expr="isinstance(b, dict) and set(b) == {'error'} and isinstance(b['error'].get('code'), str) and isinstance(b['error'].get('message'), str) and 'Traceback' not in t"
    if [ -n "$field" ]; then
        expr="$expr and '$field' in json.dumps(b['error'].get('fields', {}))"
    fi
    echo "$expr"
}

# ---------------------------------------------------------------- bundles
echo "==> training two small bundles in $TMP"
"$PYTHON" -m training generate --out "$TMP/data" --customers 3000 --seed 7 >"$TMP/train1.log" 2>&1 \
    || { cat "$TMP/train1.log"; exit 1; }
"$PYTHON" -m training train --config examples/demo.toml --data-dir "$TMP/data" \
    --output "$TMP/artifacts" >>"$TMP/train1.log" 2>&1 || { cat "$TMP/train1.log"; exit 1; }
FIRST=$(readlink "$TMP/artifacts/current")
echo "    first bundle:  $FIRST"

# the second bundle comes from other data, trained into a separate root and moved beside the
# first, so `current` keeps naming the first one until the reload test
"$PYTHON" -m training generate --out "$TMP/data2" --customers 3000 --seed 8 >"$TMP/train2.log" 2>&1 \
    || { cat "$TMP/train2.log"; exit 1; }
"$PYTHON" -m training train --config examples/demo.toml --data-dir "$TMP/data2" \
    --output "$TMP/artifacts2" >>"$TMP/train2.log" 2>&1 || { cat "$TMP/train2.log"; exit 1; }
SECOND=$(readlink "$TMP/artifacts2/current")
if [ "$SECOND" = "$FIRST" ]; then
    echo "error: both bundles are named $FIRST; version names must differ" >&2
    exit 1
fi
mv "$TMP/artifacts2/$SECOND" "$TMP/artifacts/$SECOND"
echo "    second bundle: $SECOND"
# a copy of the second bundle with one byte changed: verification must refuse it
TAMPERED="${SECOND}-tampered"
cp -r "$TMP/artifacts/$SECOND" "$TMP/artifacts/$TAMPERED"
printf ' ' >>"$TMP/artifacts/$TAMPERED/profiles.json"

# ---------------------------------------------------------------- Redis and gunicorn
redis_ensure
PORT=$(free_port)
API_KEY="e2e-key-$RANDOM$RANDOM"
ADMIN_KEY="e2e-admin-$RANDOM$RANDOM"
mkdir -p "$TMP/prom"
echo "==> starting gunicorn (2 workers) on 127.0.0.1:$PORT"
env MODEL_ROOT="$TMP/artifacts" \
    API_KEYS="other-key,$API_KEY" \
    ADMIN_API_KEYS="$ADMIN_KEY" \
    REDIS_URL="$REDIS_URL" \
    CACHE_PREFIX="$CACHE_PREFIX" \
    MAX_BATCH_ITEMS=5 \
    MAX_BODY_BYTES=65536 \
    PROMETHEUS_MULTIPROC_DIR="$TMP/prom" \
    WEB_CONCURRENCY=2 \
    BIND="127.0.0.1:$PORT" \
    LOG_LEVEL=info \
    "$PYTHON" -m gunicorn -c gunicorn.conf.py wsgi:app >"$TMP/gunicorn.log" 2>&1 &
GUNICORN_PID=$!

BASE="http://127.0.0.1:$PORT"
for _ in $(seq 1 300); do
    if [ "$(curl -s -o /dev/null -w '%{http_code}' "$BASE/readyz" || true)" = "200" ]; then
        break
    fi
    if ! kill -0 "$GUNICORN_PID" 2>/dev/null; then
        echo "error: gunicorn exited during start-up:" >&2
        tail -n 40 "$TMP/gunicorn.log" >&2
        exit 1
    fi
    sleep 0.1
done

JSON=(-H "Content-Type: application/json")
AUTH=(-H "X-API-Key: $API_KEY")
CUSTOMER='{"total_spend": 1250.0, "order_count": 14, "days_since_last_purchase": 12, "unique_products": 9, "discount_usage": 0.2, "return_rate": 0.05, "mobile_usage": 0.8}'
# the same customer with one field replaced: with_field NAME JSON_VALUE
with_field() {
    "$PYTHON" -c 'import json, sys; c = json.loads(sys.argv[1]); c[sys.argv[2]] = json.loads(sys.argv[3]); print(json.dumps(c))' \
        "$CUSTOMER" "$1" "$2"
}
without_field() {
    "$PYTHON" -c 'import json, sys; c = json.loads(sys.argv[1]); del c[sys.argv[2]]; print(json.dumps(c))' \
        "$CUSTOMER" "$1"
}

echo "==> health, version, docs"
call "GET /healthz" 200 "" "$BASE/healthz"
call "GET /readyz reports the bundle and Redis" 200 \
    "b['ready'] is True and b['model_version'] == '$FIRST' and b['redis'] not in ('disabled', None)" \
    "$BASE/readyz"
call "GET /version names the first bundle" 200 "b['model_version'] == '$FIRST'" "$BASE/version"
call "GET /openapi.json is OpenAPI 3 with both scoring paths" 200 \
    "b['openapi'].startswith('3.') and '/predict-segment' in b['paths'] and '/recommend' in b['paths']" \
    "$BASE/openapi.json"

echo "==> scoring"
call "POST /predict-segment" 200 \
    "isinstance(b['segment_id'], int) and isinstance(b['segment_name'], str) and b['model_version'] == '$FIRST' and isinstance(b['recommended_campaigns'], list) and isinstance(b['atypical'], bool)" \
    "${JSON[@]}" "${AUTH[@]}" -d "$CUSTOMER" "$BASE/predict-segment"
call "POST /predict-segment echoes customer_id" 200 "b['customer_id'] == 'c-42'" \
    "${JSON[@]}" "${AUTH[@]}" -d "$(with_field customer_id '"c-42"')" "$BASE/predict-segment"
call "POST /predict-segment with order_count 0" 200 "isinstance(b['segment_id'], int)" \
    "${JSON[@]}" "${AUTH[@]}" -d "$(with_field order_count 0)" "$BASE/predict-segment"
CAMPAIGNS="b['campaigns']"
call "POST /recommend ranks campaigns by expected value" 200 \
    "b['model_version'] == '$FIRST' and len($CAMPAIGNS) >= 2 and [c['expected_value'] for c in $CAMPAIGNS] == sorted((c['expected_value'] for c in $CAMPAIGNS), reverse=True) and all(0 <= c['probability'] <= 1 and abs(c['expected_value'] - c['probability'] * c['value']) < 1e-9 and c['eligibility'] for c in $CAMPAIGNS)" \
    "${JSON[@]}" "${AUTH[@]}" -d "$CUSTOMER" "$BASE/recommend"
call "POST /recommend top_k=2" 200 "len($CAMPAIGNS) == 2" \
    "${JSON[@]}" "${AUTH[@]}" -d "$(with_field top_k 2)" "$BASE/recommend"
call "POST /recommend channel=push keeps only push campaigns" 200 \
    "$CAMPAIGNS and all(c['channel'] in ('push', 'any') for c in $CAMPAIGNS)" \
    "${JSON[@]}" "${AUTH[@]}" -d "$(with_field channel '"push"')" "$BASE/recommend"
call "POST /recommend exclude drops the named campaign" 200 \
    "$CAMPAIGNS and all(c['campaign_id'] != 'savings_plan' for c in $CAMPAIGNS)" \
    "${JSON[@]}" "${AUTH[@]}" -d "$(with_field exclude '["savings_plan"]')" "$BASE/recommend"
call "POST /recommend explain=true adds contributions" 200 \
    "all(c['contributions'] and all('feature' in x for x in c['contributions']) for c in $CAMPAIGNS)" \
    "${JSON[@]}" "${AUTH[@]}" -d "$(with_field explain true)" "$BASE/recommend"

echo "==> batch"
BAD_ITEM=$(with_field order_count -3)
BATCH="{\"customers\": [$CUSTOMER, $BAD_ITEM, $CUSTOMER]}"
ITEMS="b['results']"
call "POST /predict-segment batch with one bad item" 200 \
    "len($ITEMS) == 3 and 'error' in ${ITEMS}[1] and 'segment_id' in ${ITEMS}[0] and 'segment_id' in ${ITEMS}[2] and 'error' not in ${ITEMS}[0]" \
    "${JSON[@]}" "${AUTH[@]}" -d "$BATCH" "$BASE/predict-segment"
call "POST /recommend batch with one bad item" 200 \
    "len($ITEMS) == 3 and 'order_count' in ${ITEMS}[1]['error']['fields'] and ${ITEMS}[0]['campaigns'] and ${ITEMS}[2]['campaigns']" \
    "${JSON[@]}" "${AUTH[@]}" -d "$BATCH" "$BASE/recommend"
TOO_MANY="{\"customers\": [$CUSTOMER, $CUSTOMER, $CUSTOMER, $CUSTOMER, $CUSTOMER, $CUSTOMER]}"
call "batch over MAX_BATCH_ITEMS" "4.." "$(envelope)" \
    "${JSON[@]}" "${AUTH[@]}" -d "$TOO_MANY" "$BASE/predict-segment"

echo "==> authentication"
call "no API key" 401 "$(envelope)" "${JSON[@]}" -d "$CUSTOMER" "$BASE/predict-segment"
call "wrong API key" 401 "$(envelope)" \
    "${JSON[@]}" -H "X-API-Key: not-$API_KEY" -d "$CUSTOMER" "$BASE/predict-segment"
call "second configured key accepted" 200 "" \
    "${JSON[@]}" -H "X-API-Key: other-key" -d "$CUSTOMER" "$BASE/recommend"
call "admin endpoint with a scoring key" "40[13]" "$(envelope)" \
    "${JSON[@]}" "${AUTH[@]}" -d '{}' "$BASE/admin/reload"
call "admin endpoint without a key" 401 "$(envelope)" "${JSON[@]}" -d '{}' "$BASE/admin/reload"

echo "==> bad input"
call "malformed JSON" 400 "$(envelope)" "${JSON[@]}" "${AUTH[@]}" -d '{"total_spend": 12' \
    "$BASE/predict-segment"
call "empty body" 400 "$(envelope)" "${JSON[@]}" "${AUTH[@]}" --data-binary '' \
    "$BASE/predict-segment"
call "wrong Content-Type" 415 "$(envelope)" -H "Content-Type: text/plain" "${AUTH[@]}" \
    -d "$CUSTOMER" "$BASE/predict-segment"
head -c 100000 /dev/zero | tr '\0' ' ' >"$TMP/big.json"
call "oversize body" 413 "$(envelope)" "${JSON[@]}" "${AUTH[@]}" --data-binary "@$TMP/big.json" \
    "$BASE/predict-segment"
call "unknown field" "4.." "$(envelope colour)" "${JSON[@]}" "${AUTH[@]}" \
    -d "$(with_field colour '"red"')" "$BASE/predict-segment"
call "negative count" "4.." "$(envelope order_count)" "${JSON[@]}" "${AUTH[@]}" \
    -d "$(with_field order_count -1)" "$BASE/predict-segment"
call "ratio above 1" "4.." "$(envelope return_rate)" "${JSON[@]}" "${AUTH[@]}" \
    -d "$(with_field return_rate 1.5)" "$BASE/predict-segment"
call "number sent as a string" "4.." "$(envelope total_spend)" "${JSON[@]}" "${AUTH[@]}" \
    -d "$(with_field total_spend '"1250"')" "$BASE/predict-segment"
call "missing required field" "4.." "$(envelope total_spend)" "${JSON[@]}" "${AUTH[@]}" \
    -d "$(without_field total_spend)" "$BASE/recommend"
call "NaN" "4.." "$(envelope)" "${JSON[@]}" "${AUTH[@]}" \
    -d "${CUSTOMER/1250.0/NaN}" "$BASE/predict-segment"
call "Infinity" "4.." "$(envelope)" "${JSON[@]}" "${AUTH[@]}" \
    -d "${CUSTOMER/1250.0/Infinity}" "$BASE/recommend"
call "overflowing number" "4.." "$(envelope)" "${JSON[@]}" "${AUTH[@]}" \
    -d "${CUSTOMER/1250.0/1e999}" "$BASE/predict-segment"
call "unknown path" 404 "$(envelope)" "${AUTH[@]}" "$BASE/no-such-endpoint"
call "wrong method" 405 "$(envelope)" "${AUTH[@]}" "$BASE/predict-segment"

echo "==> Redis cache"
if "$PYTHON" - "$REDIS_URL" "$CACHE_PREFIX" <<'PY'; then
import sys

import redis

client = redis.Redis.from_url(sys.argv[1], socket_timeout=2)
sys.exit(0 if any(True for _ in client.scan_iter(match=sys.argv[2] + ":*")) else 1)
PY
    ok "profiles cached in Redis under CACHE_PREFIX"
else
    not_ok "profiles cached in Redis under CACHE_PREFIX" "no key starting with $CACHE_PREFIX:"
fi

echo "==> metrics"
call "GET /metrics counts requests" 200 \
    "any(line.split('{')[0].endswith('_total') and 'request' in line and 'predict' in line for line in t.splitlines() if not line.startswith('#'))" \
    "$BASE/metrics"

echo "==> reload"
call "reload to an unknown version is refused" "4.." "$(envelope)" \
    "${JSON[@]}" -H "X-API-Key: $ADMIN_KEY" -d '{"version": "no-such-version"}' "$BASE/admin/reload"
call "reload to a tampered bundle is refused" "4..|5.." "$(envelope)" \
    "${JSON[@]}" -H "X-API-Key: $ADMIN_KEY" -d "{\"version\": \"$TAMPERED\"}" "$BASE/admin/reload"
call "first bundle still serves after the refusal" 200 "b['model_version'] == '$FIRST'" \
    "${JSON[@]}" "${AUTH[@]}" -d "$CUSTOMER" "$BASE/predict-segment"
call "reload to the second bundle" 200 "b['model_version'] == '$SECOND' and b['previous_version'] == '$FIRST'" \
    "${JSON[@]}" -H "X-API-Key: $ADMIN_KEY" -d "{\"version\": \"$SECOND\"}" "$BASE/admin/reload"
# Workers pick up a reload within RELOAD_POLL_SECONDS (default 1 s), on their next request after
# that: wait out the window, then ask for 20 answers in a row naming the second bundle, each on a
# new connection so both workers answer some of them.
sleep 1.2
in_a_row=0
for _ in $(seq 1 200); do
    body=$(curl -sS --max-time 10 "$BASE/version" || true)
    if [[ $body == *"$SECOND"* ]]; then
        in_a_row=$((in_a_row + 1))
        [ "$in_a_row" -ge 20 ] && break
    else
        in_a_row=0
        sleep 0.05
    fi
done
if [ "$in_a_row" -ge 20 ]; then
    ok "every worker serves the second bundle (20 calls in a row to /version)"
else
    not_ok "every worker serves the second bundle" "/version still answers: $body"
fi
call "scoring answers with the second bundle" 200 "b['model_version'] == '$SECOND'" \
    "${JSON[@]}" "${AUTH[@]}" -d "$CUSTOMER" "$BASE/recommend"

# ---------------------------------------------------------------- summary
if grep -q "Traceback" "$TMP/gunicorn.log"; then
    not_ok "server log free of tracebacks" "$(grep -m1 -B2 -A8 Traceback "$TMP/gunicorn.log")"
else
    ok "server log free of tracebacks"
fi
if grep -qF -e "$API_KEY" -e "$ADMIN_KEY" "$TMP/gunicorn.log"; then
    not_ok "keys never logged" "an API key appears in the server log"
else
    ok "keys never logged"
fi

echo "$PASSED passed, $FAILED failed"
if [ "$FAILED" -ne 0 ]; then
    printf '  failed: %s\n' "${FAILURES[@]}"
    echo "--- last lines of the server log ---"
    tail -n 30 "$TMP/gunicorn.log"
    exit 1
fi
