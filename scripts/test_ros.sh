#!/usr/bin/env bash
# End-to-end tests of the ROS 2 node: real node processes on loopback driven by rclpy (tests/ros).
#
#   scripts/test_ros.sh                 # everything
#   scripts/test_ros.sh -k services     # extra arguments go to pytest
#
# 1. scripts/setup_ros.sh (idempotent): ROS 2 Jazzy from PyPI wheels in .ros/, the interface
#    package vlm_perception_msgs, pytest and Pillow.
# 2. builds the CLI (`vlm-perception`, the reference the node's output is compared with) and the
#    node (`vlm_perception_node`, feature `ros`) in release, back to back from the same tree.
# 3. lints the node (clippy with its features) and runs its unit tests (params, convert, tf,
#    worker), then pytest on tests/ros. Each pytest
#    run claims a ROS_DOMAIN_ID of its own and keeps discovery on loopback.
#
# Knobs: VLM_ROS_SKIP_UNIT=1 skips step 3's cargo unit tests; VLM_TEST_DOMAIN_ID pins the domain;
# FASTRTPS_DEFAULT_PROFILES_FILE replaces config/fastdds_large_data.xml ('' runs without a profile,
# and test_node_large_frames.py then fails).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
log() { printf '[test_ros] %s\n' "$*" >&2; }

bash scripts/setup_ros.sh
set +u
# shellcheck source=/dev/null
source .ros/env.sh
set -u

log "cargo build --release --bin vlm-perception"
cargo build --release --bin vlm-perception
# With ../shared/ros2-extras (setup_ros.sh installs it when present): vision_msgs output too.
features=ros
if [ "${VLM_ROS_EXTRAS:-0}" = 1 ]; then
  features=ros,vision_msgs
fi
log "cargo build --release --features $features --bin vlm_perception_node"
cargo build --release --features "$features" --bin vlm_perception_node

if [ "${VLM_ROS_SKIP_UNIT:-0}" != 1 ]; then
  # scripts/test.sh lints without the ros feature: the node's code is linted here.
  log "cargo clippy --release --features $features --all-targets -- -D warnings"
  cargo clippy --release --features "$features" --all-targets --quiet -- -D warnings
  log "cargo test --release --features $features --bin vlm_perception_node"
  cargo test --release --features "$features" --bin vlm_perception_node
fi

# The ament package, as `ros2 launch vlm_perception ...` finds it: colcon-built into the
# project's ROS install, reusing the cargo build above (same target dir, features and filter).
if [ "${VLM_ROS_EXTRAS:-0}" = 1 ]; then
  ws="$root/.ros/ws"
  log "colcon build vlm_perception (ament package; reuses target/)"
  if ! (
    cd "$ws"
    colcon --log-base "$ws/log-pkg" build --merge-install --base-paths "$root" \
      --packages-select vlm_perception --build-base "$ws/build-pkg" --install-base "$ws/install" \
      --event-handlers console_direct- console_stderr- \
      --cmake-args -DVLM_CARGO_TARGET_DIR="$root/target" -DVLM_CARGO_FEATURES="${features//,/ }" \
      "-DVLM_IDL_PACKAGE_FILTER=$IDL_PACKAGE_FILTER" -DBUILD_TESTING=OFF
  ) > "$ws/colcon-pkg.out" 2>&1; then
    tail -n 40 "$ws/colcon-pkg.out" >&2
    log "colcon build of the vlm_perception package failed (see $ws/colcon-pkg.out)"
    exit 1
  fi
fi

log "pytest tests/ros"
exec python3 -m pytest tests/ros -p no:cacheprovider -q "$@"
