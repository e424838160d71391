# Pinned Python tools in their own virtualenvs outside the clone (sourced, not run).
#
#   venv="$(ensure_venv NAME 'pkg==1.2.3 other==4.5')"   # prints the venv path
#
# Each venv lives at ${XDG_CACHE_HOME:-$HOME/.cache}/ami-pipeline/NAME-<sha256 prefix of the pins>,
# so changing a pin gets a fresh one. It is trusted only once its stamp file (holding the pins) is
# written, which happens last: an interrupted install is thrown away and redone. Concurrent
# installs of one venv are serialized with flock. Never touches the system Python.
set -euo pipefail

_venv_die() { echo "error: $*" >&2; exit 1; }

_venv_python() {
    local cand
    for cand in python3.11 python3; do
        if command -v "$cand" >/dev/null 2>&1 \
            && "$cand" -c 'import sys, venv; sys.exit(0 if sys.version_info >= (3, 9) else 1)' >/dev/null 2>&1; then
            command -v "$cand"
            return 0
        fi
    done
    return 1
}

ensure_venv() {
    local name="$1" pins="$2"
    local hash venv stamp lock py
    hash="$(printf '%s' "$pins" | sha256sum | cut -c1-12)"
    venv="${XDG_CACHE_HOME:-$HOME/.cache}/ami-pipeline/$name-$hash"
    stamp="$venv/.installed"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$pins" ] && [ -x "$venv/bin/python" ]; then
        echo "$venv"
        return 0
    fi
    mkdir -p "$(dirname "$venv")"
    lock="$venv.lock"
    exec 8>"$lock"
    flock 8
    if ! { [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$pins" ]; }; then
        py="$(_venv_python)" || _venv_die "no python3 (>= 3.9, with the venv module) on PATH"
        echo "installing $pins into $venv" >&2
        rm -rf "$venv"
        "$py" -m venv "$venv" >&2 || _venv_die "'$py -m venv $venv' failed (on Debian: apt-get install python3-venv)"
        # shellcheck disable=SC2086 # the pins are separate words on purpose
        "$venv/bin/python" -m pip install --disable-pip-version-check --no-input -q $pins >&2 \
            || _venv_die "pip install $pins into $venv failed"
        printf '%s' "$pins" > "$stamp"
    fi
    exec 8>&-
    echo "$venv"
}
