#!/usr/bin/env bash
# Rudder vs PyTorch 2.15 on the same pi0-architecture weights, in one run. Uses the same
# baseline venv as benches/llama_vs_torch.sh (installed on first use: ~5 GB).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${RUDDER_BENCH_VENV:-.venv-bench}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q 'torch==2.15.*' 'transformers==5.24.0' 'peft==0.21.2' safetensors numpy
fi
cargo build --release --quiet
"$VENV/bin/python" benches/pi0_vs_torch.py --rudder target/release/rudder "$@"
