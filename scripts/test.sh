#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine with a Rust toolchain:
#   1. formatting and lints (zero warnings),
#   2. library + CLI tests: parity with transformers on the committed fixtures, bad input,
#      hub-cache resolution (release profile: real forward passes),
#   3. ROS 2 end to end: sets up ROS 2 Jazzy from PyPI (scripts/setup_ros.sh, idempotent),
#      builds the node and runs real node processes on loopback against rclpy clients.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

rustup component add rustfmt clippy >/dev/null 2>&1 || true

echo "== cargo fmt --check"
cargo fmt --check

echo "== cargo clippy (library, CLI, tests)"
cargo clippy --release --all-targets --quiet -- -D warnings

echo "== cargo test --release"
cargo test --release

echo "== ROS 2 node tests"
bash scripts/test_ros.sh
