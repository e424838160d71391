# Shared set-up for scripts/test and scripts/demo: installs what a fresh machine lacks and
# starts the local AWS emulator. Sourced, not run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Build cache outside the clone, so a fresh clone reuses a warm cache when there is one.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ami-pipeline/target}"
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true

log() { printf '\n==> %s\n' "$*"; }
die() { echo "error: $*" >&2; exit 1; }

ensure_tools() {
    command -v cargo >/dev/null || die "cargo is required (install Rust with rustup)"
    command -v python3 >/dev/null || die "python3 (3.9+) is required"
    if ! command -v qemu-img >/dev/null; then
        log "installing qemu-utils (qemu-img builds the real test disk images)"
        if [ "$(id -u)" = 0 ]; then
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-utils >/dev/null
        else
            sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-utils >/dev/null
        fi
        command -v qemu-img >/dev/null || die "could not install qemu-img"
    fi
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Starts the emulator in the background, exports AWS_ENDPOINT_URL, stops it on exit.
start_emulator() {
    log "preparing the emulator's Python environment"
    "$ROOT/tests/emulator/serve" --install-only >/dev/null
    local port; port="$(free_port)"
    EMULATOR_LOG="${TMPDIR:-/tmp}/ami-pipeline-emulator-$port.log"
    "$ROOT/tests/emulator/serve" --port "$port" >"$EMULATOR_LOG" 2>&1 &
    EMULATOR_PID=$!
    trap 'kill $EMULATOR_PID 2>/dev/null || true' EXIT
    export AWS_ENDPOINT_URL="http://127.0.0.1:$port"
    for _ in $(seq 1 240); do
        if python3 -c "import urllib.request,sys; urllib.request.urlopen('$AWS_ENDPOINT_URL/ami-pipeline-emulator/health', timeout=2)" 2>/dev/null; then
            log "emulator ready at $AWS_ENDPOINT_URL (log: $EMULATOR_LOG)"
            # Its settings (connection, dispatch, lanes, CPU), as its first line gives them.
            grep -m 1 '^ami_emulator: serving on' "$EMULATOR_LOG" || true
            return 0
        fi
        kill -0 "$EMULATOR_PID" 2>/dev/null || { tail -n 30 "$EMULATOR_LOG" >&2; die "the emulator exited"; }
        sleep 0.5
    done
    tail -n 30 "$EMULATOR_LOG" >&2
    die "the emulator did not become healthy in 120 s"
}
