#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine with a Rust toolchain:
#   1. formatting and lints (zero warnings),
#   2. library + CLI tests: parity with transformers on the committed fixtures, bad input,
#      hub-cache resolution (release profile: real forward passes); the parity suites again on
#      the generic kernel path (the code a GPU runs),
#   3. ROS 2 end to end: sets up ROS 2 Jazzy from PyPI (scripts/setup_ros.sh, idempotent),
#      builds the node and runs real node processes on loopback against rclpy clients,
#   4. the other platforms, compiled here: the `cuda` feature for an H100 (compute 90) and a
#      Jetson Orin (87) (scripts/check_cuda.sh), and the project for the Jetson's aarch64 CPU
#      (scripts/check_aarch64.sh's setup and check steps; the script itself also builds for
#      aarch64 in release and runs the parity tests under qemu: README, "Jetson Orin").
#      VLM_PLATFORM_CHECKS=0 skips them.
# Prints the time of each part at the end.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

times=()
part() { # part NAME COMMAND...: runs COMMAND, records its time
  local name="$1" start=$SECONDS
  shift
  echo "== $name"
  "$@"
  times+=("$(printf '%5d s  %s' $((SECONDS - start)) "$name")")
}

rustup component add rustfmt clippy >/dev/null 2>&1 || true

part "cargo fmt --check" cargo fmt --check
part "cargo clippy (library, CLI, tests)" cargo clippy --release --all-targets --quiet -- -D warnings
part "cargo test --release" cargo test --release
# The parity suites again, every model loaded on the generic kernel path: the candle ops that a
# GPU (CUDA, Jetson) runs instead of our CPU kernels, against the same references.
part "parity tests on the generic kernel path (VLM_TEST_KERNEL_PATH=generic)" \
  env VLM_TEST_KERNEL_PATH=generic cargo test --release --test parity_owlvit --test parity_owlv2 \
  --test parity_image_guided --test parity_clipseg --test parity_vilt --test parity_clip --test parity_blip
part "ROS 2 node tests" bash scripts/test_ros.sh
if [ "${VLM_PLATFORM_CHECKS:-1}" != 0 ]; then
  part "the cuda feature compiles, compute 90 and 87 (scripts/check_cuda.sh)" \
    bash scripts/check_cuda.sh
  part "the project compiles for aarch64 (scripts/check_aarch64.sh: setup, check)" \
    env AARCH64_STEPS="setup check" bash scripts/check_aarch64.sh
fi

echo "== times (this machine)"
printf '%s\n' "${times[@]}"
