#!/usr/bin/env bash
# Regenerates tune/tests/fixtures/diffusers_samplers.json with diffusers' own schedulers.
# diffusers needs PyTorch, and PyTorch from PyPI is the CUDA build (~5 GB), too heavy for the test
# command; so the reference trajectories are committed and this script, outside the test
# command, makes them again. Venv: $RUDDER_DIFFUSERS_VENV (default .venv-diffusers).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${RUDDER_DIFFUSERS_VENV:-$PWD/.venv-diffusers}"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import diffusers, torch" 2>/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check 'diffusers==0.42.1' torch numpy
fi
"$VENV/bin/python" scripts/diffusers-reference.py tune/tests/fixtures/diffusers_samplers.json
