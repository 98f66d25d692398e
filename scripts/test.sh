#!/usr/bin/env bash
# The project's test command: installs what the tests need, checks formatting and lints, and
# runs every test in the release profile (model code is unusable unoptimised).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-rerun.sh && export RUDDER_RERUN_VENV="$PWD/.venv-rerun"  # rerun-sdk for tests/rerun_*.rs
bash scripts/setup-openpi.sh && export RUDDER_OPENPI_VENV="$PWD/.venv-openpi"  # openpi-client for tests/serve_openpi.rs

export CARGO_TERM_COLOR=never
# Two cores on CI: keep the build from oversubscribing them.
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"

step() { printf '\n== %s\n' "$*"; }

step "toolchain"
cargo --version
rustc --version

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, -D warnings)"
cargo clippy --release --workspace --all-targets -- -D warnings

step "tests (release)"
cargo test --release --workspace
bash scripts/test-ros2.sh  # the `ros2` feature against real ROS 2 Jazzy (PyPI wheels) + rclpy

step "examples as smoke tests"
# The binary `cargo test --workspace` built (a plain `cargo run` would unify features differently
# and rebuild candle and rerun).
RUDDER=target/release/rudder
[ -x "$RUDDER" ] || cargo build --release --quiet
$RUDDER model verify --model fixtures/hf-tiny/llama
$RUDDER model verify --model fixtures/hf-tiny/paligemma --json > /dev/null
$RUDDER model verify --model fixtures/hf-tiny/pi0
$RUDDER launch launch/tabletop.toml --no-viz --quiet          # README command 1, without the file
$RUDDER launch launch/driving.toml --no-viz --quiet
