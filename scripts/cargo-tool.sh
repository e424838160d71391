# Pinned cargo subcommands built from crates.io, outside the clone (sourced, not run).
#
#   bin="$(ensure_cargo_tool cargo-deny 0.20.2)"   # prints the directory holding the binary
#
# Each tool lives at ${XDG_CACHE_HOME:-$HOME/.cache}/ami-pipeline/tools-<crate>-<version>/bin,
# installed by `cargo install --locked` (the tool's own Cargo.lock, so its dependency versions are
# the ones its authors tested and published, not whatever resolves today). Changing the version
# gets a fresh directory. The install is trusted only once its stamp file (holding the version) is
# written, which happens last: an interrupted install is thrown away and redone. Concurrent
# installs of one tool are serialized with flock. The build uses cargo's own throwaway target
# directory, not the project's CARGO_TARGET_DIR, so it never evicts the project's build cache.
set -euo pipefail

_cargo_tool_die() { echo "error: $*" >&2; exit 1; }

ensure_cargo_tool() {
    local crate="$1" version="$2"
    local root stamp lock
    root="${XDG_CACHE_HOME:-$HOME/.cache}/ami-pipeline/tools-$crate-$version"
    stamp="$root/.installed"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$crate@$version" ] && [ -x "$root/bin/$crate" ]; then
        echo "$root/bin"
        return 0
    fi
    mkdir -p "$(dirname "$root")"
    lock="$root.lock"
    exec 7>"$lock"
    flock 7
    if ! { [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$crate@$version" ] && [ -x "$root/bin/$crate" ]; }; then
        echo "installing $crate@$version into $root (cargo install --locked; a few minutes, once)" >&2
        rm -rf "$root"
        env -u CARGO_TARGET_DIR -u CARGO_BUILD_TARGET_DIR \
            cargo install --locked --quiet --root "$root" "$crate@$version" >&2 \
            || _cargo_tool_die "cargo install --locked $crate@$version failed"
        printf '%s' "$crate@$version" > "$stamp"
    fi
    exec 7>&-
    echo "$root/bin"
}
