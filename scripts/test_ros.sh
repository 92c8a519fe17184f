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
# 3. runs the node's unit tests (params, convert, worker), then pytest on tests/ros. Each pytest
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
log "cargo build --release --features ros --bin vlm_perception_node"
cargo build --release --features ros --bin vlm_perception_node

if [ "${VLM_ROS_SKIP_UNIT:-0}" != 1 ]; then
  log "cargo test --release --features ros --bin vlm_perception_node"
  cargo test --release --features ros --bin vlm_perception_node
fi

log "pytest tests/ros"
exec python3 -m pytest tests/ros -p no:cacheprovider -q "$@"
