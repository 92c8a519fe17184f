#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine with a Rust toolchain:
#   1. formatting and lints (zero warnings),
#   2. library + CLI tests: parity with transformers on the committed fixtures, bad input,
#      hub-cache resolution (release profile: real forward passes); the parity suites again on
#      the generic kernel path (the code a GPU runs),
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

# The parity suites again, every model loaded on the generic kernel path: the candle ops that a
# GPU (CUDA, Jetson) runs instead of our CPU kernels, against the same references.
echo "== parity tests on the generic kernel path (VLM_TEST_KERNEL_PATH=generic)"
VLM_TEST_KERNEL_PATH=generic cargo test --release --test parity_owlvit --test parity_owlv2 \
  --test parity_image_guided --test parity_clipseg --test parity_vilt

echo "== ROS 2 node tests"
bash scripts/test_ros.sh
