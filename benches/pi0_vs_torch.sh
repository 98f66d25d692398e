#!/usr/bin/env bash
# Rudder vs PyTorch 2.15 on the same pi0-architecture weights, in one run.
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/torch-venv.sh
"$VENV/bin/python" benches/pi0_vs_torch.py --rudder target/release/rudder "$@"
