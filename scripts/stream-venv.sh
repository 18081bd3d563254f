#!/usr/bin/env bash
# Create or update .venv-stream, the stream job's own environment (stream/requirements.txt).
#
# Every package is pinned there (resolved once); `--no-deps` installs exactly that list, which
# carries one deliberate override of apache-beam's numpy bound (see the file's header). Java 17
# (a JRE) is needed to run the job: installed here with apt when missing and we are root.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STREAM_VENV=${STREAM_VENV:-$ROOT/.venv-stream}
VENV=$STREAM_VENV
# shellcheck source=scripts/venv.sh
source "$ROOT/scripts/venv.sh"

if ! command -v java >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "==> installing a Java runtime for Flink"
        apt-get update -qq && apt-get install -y -qq openjdk-17-jre-headless >/dev/null
    else
        echo "error: the stream job needs Java 11 or 17 (java not found on PATH)" >&2
        exit 1
    fi
fi

if [ ! -x "$VENV/bin/python" ]; then
    python=$(find_python)
    echo "==> creating $VENV with $("$python" --version 2>&1)"
    "$python" -m venv "$VENV"
fi
stamp="$VENV/.stamp-stream-requirements.txt"
want=$(requirements_hash stream/requirements.txt)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
echo "==> installing stream/requirements.txt into $VENV (PyFlink: a few minutes the first time)"
"$VENV/bin/python" -m pip install --disable-pip-version-check -q --no-deps \
    -r "$ROOT/stream/requirements.txt"
echo "$want" >"$stamp"
