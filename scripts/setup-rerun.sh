#!/usr/bin/env bash
# Installs the Rerun SDK and CLI (REFERENCE §12) into .venv-rerun for the recording tests.
# Idempotent and quiet: does nothing when the pinned version is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION="0.36.3"
VENV="${RUDDER_RERUN_VENV:-$PWD/.venv-rerun}"
PY="$VENV/bin/python"

installed() {
    [ -x "$PY" ] && "$PY" - "$VERSION" <<'PYEOF' 2>/dev/null
import sys, importlib.metadata as md
sys.exit(0 if md.version("rerun-sdk") == sys.argv[1] else 1)
PYEOF
}

if ! installed; then
    echo "setup-rerun: installing rerun-sdk==$VERSION into $VENV" >&2
    python3 -m venv "$VENV"
    "$PY" -m pip install --quiet --disable-pip-version-check "rerun-sdk==$VERSION"
    installed || { echo "setup-rerun: rerun-sdk==$VERSION did not install" >&2; exit 1; }
fi

# The real CLI binary, not the Python wrapper on PATH.
BIN="$(ls "$VENV"/lib/python*/site-packages/rerun_sdk/rerun_cli/rerun 2>/dev/null | head -n1)"
[ -x "$BIN" ] || { echo "setup-rerun: no rerun binary at $BIN" >&2; exit 1; }

# Keep the CLI's config, cache and analytics out of the user's home.
export XDG_CONFIG_HOME="$VENV/xdg/config" XDG_CACHE_HOME="$VENV/xdg/cache" XDG_DATA_HOME="$VENV/xdg/data"
mkdir -p "$XDG_CONFIG_HOME" "$XDG_CACHE_HOME" "$XDG_DATA_HOME"
"$BIN" analytics disable >/dev/null 2>&1 || true
