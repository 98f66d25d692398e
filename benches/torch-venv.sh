#!/usr/bin/env bash
# Sourced by the *_vs_torch.sh benchmarks: the PyTorch 2.15 baseline's venv in $VENV
# (RUDDER_BENCH_VENV, default .venv-bench; installed on first use: PyTorch from PyPI is the CUDA
# build, ~5 GB) and a release build of rudder.
VENV="${RUDDER_BENCH_VENV:-.venv-bench}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q 'torch==2.15.*' 'transformers==5.24.0' 'peft==0.21.2' safetensors numpy
fi
cargo build --release --quiet
