# shellcheck shell=bash
# Sourced by the other scripts: the project's virtual environment and its stamped installs.
#
#   ensure_venv requirements.txt       # create .venv if missing, install when the file changed
#
# The stamp (.venv/.stamp-<file>) holds a hash of the requirements file and of every file it
# includes with -r, plus the interpreter version, so a second run installs nothing.

ROOT=${ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
VENV=${VENV:-$ROOT/.venv}
MIN_PYTHON="3.11"

# Pick the interpreter that creates the venv: $PYTHON, else python3.11+ found on PATH.
find_python() {
    local candidate
    for candidate in "${PYTHON:-}" python3 python3.13 python3.12 python3.11; do
        [ -n "$candidate" ] || continue
        command -v "$candidate" >/dev/null 2>&1 || continue
        if "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    echo "error: Python >= $MIN_PYTHON is required; found $(python3 --version 2>&1 || echo none)." >&2
    echo "       Install python3.11 (or newer) and re-run, or set PYTHON=/path/to/python3.11." >&2
    return 1
}

requirements_hash() {
    local req=$1 included
    {
        cat "$ROOT/$req"
        # requirements-dev.txt includes requirements.txt: a change there must reinstall too
        while read -r included; do
            cat "$ROOT/$included"
        done < <(sed -n 's/^-r[[:space:]]*//p' "$ROOT/$req")
        "$VENV/bin/python" -c 'import sys; print(sys.version)'
    } | sha256sum | cut -d' ' -f1
}

ensure_venv() {
    local req=$1 python stamp want
    if [ ! -x "$VENV/bin/python" ]; then
        python=$(find_python) || return 1
        echo "==> creating $VENV with $("$python" --version 2>&1)"
        "$python" -m venv "$VENV"
    elif ! "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        echo "error: $VENV uses $("$VENV/bin/python" --version 2>&1); Python >= $MIN_PYTHON" \
            "is required. Remove it (make clean-venv) and re-run." >&2
        return 1
    fi
    stamp="$VENV/.stamp-$(basename "$req")"
    want=$(requirements_hash "$req")
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        return 0
    fi
    echo "==> installing $req into $VENV"
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q -r "$ROOT/$req"
    echo "$want" >"$stamp"
}
