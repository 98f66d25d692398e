#!/usr/bin/env bash
# Builds and tests the `ros2` feature (rudder-robot's bridge, rudder-sim's simulated UR5 driver)
# against a real ROS 2 Jazzy installed from PyPI wheels (scripts/setup-ros2.sh), with rclpy peers.
# Uses its own target dir (r2r is a long build): CARGO_TARGET_DIR defaults to target-ros2.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
export CARGO_TARGET_DIR="${ROS2_CARGO_TARGET_DIR:-$PWD/target-ros2}"

# shellcheck disable=SC1091
source scripts/setup-ros2.sh

echo "== clippy (ros2 feature, -D warnings)"
cargo clippy --release -p rudder-robot -p rudder-sim --features ros2 --all-targets -- -D warnings
cargo clippy --release -p rudder --features ros2 --all-targets -- -D warnings
echo "== tests (ros2 feature, real ROS 2 + rclpy peers)"
cargo test --release -p rudder-robot --features ros2
cargo test --release -p rudder-sim --features ros2 --test ros2_closed_loop -- --nocapture
echo "== rudder sim ur5-driver + rudder launch launch/ur5.toml over ROS 2 (two processes)"
cargo test --release --features ros2 --test ros2_launch -- --test-threads=1
