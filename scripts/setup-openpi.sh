#!/usr/bin/env bash
# Installs the real openpi websocket client (REFERENCE §9) into .venv-openpi for
# tests/serve_openpi.rs, plus `websockets` (which the client uses, and which the bad-input tests
# use directly to send garbage frames). openpi-client 0.1.2 imports typing_extensions without
# declaring it, so it is installed too. Idempotent and quiet: does nothing when the pinned
# version is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION="0.1.2"
VENV="${RUDDER_OPENPI_VENV:-$PWD/.venv-openpi}"
PY="$VENV/bin/python"

installed() {
    [ -x "$PY" ] && "$PY" - "$VERSION" <<'PYEOF' 2>/dev/null
import sys, importlib.metadata as md
assert md.version("openpi-client") == sys.argv[1]
import numpy, websockets, msgpack  # noqa: F401  (the client's runtime deps, used by the tests)
from openpi_client import websocket_client_policy  # noqa: F401
PYEOF
}

if ! installed; then
    echo "setup-openpi: installing openpi-client==$VERSION into $VENV" >&2
    python3 -m venv "$VENV"
    "$PY" -m pip install --quiet --disable-pip-version-check "openpi-client==$VERSION" numpy websockets msgpack typing_extensions
    installed || { echo "setup-openpi: openpi-client==$VERSION did not install" >&2; exit 1; }
fi
