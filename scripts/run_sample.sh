#!/usr/bin/env bash
# Sets everything up and runs vlm_perception_node on the bundled sample photos: an image-sequence
# publisher (scripts/sample_camera.py) stands in for a camera and the robot's static tf tree,
# prints what the node publishes for each frame (detections with 3D positions in base_link,
# segmentation, the zero-shot classification, a caption, the answer to a question) and saves the
# overlays.
#
#   scripts/run_sample.sh [--out DIR] [--compressed] [--question TEXT] [--images FILE...] [--two-cameras]
#
# --two-cameras: one node serves two cameras, `head` (the whole photos) and `wrist` (closer crops),
# with one copy of each model; the wrist camera has a vocabulary of its own (`wrist.queries`).
#
# Models (each a Hugging Face hub id or a local checkpoint directory in hub layout):
#   VLM_OWLVIT_MODEL   default google/owlvit-base-patch32
#   VLM_CLIPSEG_MODEL  default CIDAS/clipseg-rd64-refined
#   VLM_VQA_MODEL      default Salesforce/blip-vqa-base (or dandelin/vilt-b32-finetuned-vqa)
#   VLM_CLIP_MODEL     default openai/clip-vit-base-patch32
#   VLM_BLIP_MODEL     default Salesforce/blip-image-captioning-base
# A default is used when it is in the HF cache or the hub is reachable (the node downloads it on
# first use). Otherwise, or with VLM_SAMPLE_OFFLINE=1, the run falls back to the tiny random
# checkpoints in tests/fixtures/models: everything runs, but their boxes and answers are noise.
# VLM_DEVICE (cpu, cuda, cuda:N) and VLM_DTYPE (f32, f16, bf16) pick where they run.
# FASTRTPS_DEFAULT_PROFILES_FILE: default config/fastdds_large_data.xml; '' for no profile.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out="$root/sample_out"
cam_args=()
cameras=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$(realpath -m "$2")"; shift 2 ;;
    --compressed) cam_args+=(--compressed); shift ;;
    --question) cam_args+=(--question "$2"); shift 2 ;;
    --images) shift; cam_args+=(--images); while [ $# -gt 0 ] && [[ "$1" != --* ]]; do cam_args+=("$(realpath "$1")"); shift; done ;;
    --two-cameras) cameras=(head wrist); shift ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
log() { printf '[run_sample] %s\n' "$*" >&2; }
mkdir -p "$out"

# ---- ROS 2 (PyPI wheels) and the node --------------------------------------------------------
bash scripts/setup_ros.sh
set +u
# shellcheck source=/dev/null
source .ros/env.sh
set -u
log "building vlm_perception_node (cargo build --release --features ros)"
cargo build --release --features ros --bin vlm_perception_node

# ---- models ----------------------------------------------------------------------------------
hf_cache="${HF_HUB_CACHE:-${HF_HOME:-$HOME/.cache/huggingface}/hub}"
hub_state=""  # "", "up" or "down"
hub_up() {
  if [ -z "$hub_state" ]; then
    if [ "${VLM_SAMPLE_OFFLINE:-0}" != 1 ] && [ -z "${HF_HUB_OFFLINE:-}" ] && command -v curl >/dev/null \
       && curl -s -o /dev/null --max-time 5 "${HF_ENDPOINT:-https://huggingface.co}/api/models/google/owlvit-base-patch32"; then
      hub_state=up
    else
      hub_state=down
    fi
  fi
  [ "$hub_state" = up ]
}
fallback=()
pick() { # pick RESULT_VAR ENV_VAR HUB_ID FIXTURE: sets RESULT_VAR to the model to use
  local result=$1 var=$2 hub=$3 fixture=$4 model
  if [ -n "${!var:-}" ]; then
    model="${!var}"
  elif [ "${VLM_SAMPLE_OFFLINE:-0}" != 1 ] && { [ -d "$hf_cache/models--${hub//\//--}/snapshots" ] || hub_up; }; then
    model="$hub"
  else
    fallback+=("$var")
    model="$root/tests/fixtures/models/$fixture"
  fi
  printf -v "$result" '%s' "$model"
}
pick owlvit VLM_OWLVIT_MODEL google/owlvit-base-patch32 owlvit-tiny-p16
pick clipseg VLM_CLIPSEG_MODEL CIDAS/clipseg-rd64-refined clipseg-tiny-rd16
# free-form answers (BLIP VQA); dandelin/vilt-b32-finetuned-vqa ranks fixed answers instead
pick vilt VLM_VQA_MODEL Salesforce/blip-vqa-base blip-tiny-vqa
pick clip VLM_CLIP_MODEL openai/clip-vit-base-patch32 clip-tiny
pick blip VLM_BLIP_MODEL Salesforce/blip-image-captioning-base blip-tiny
log "models: owlvit=$owlvit clipseg=$clipseg vqa=$vilt clip=$clip blip=$blip"
if [ "${#fallback[@]}" -gt 0 ]; then
  log "NOTE: no reachable Hugging Face hub and no cached weights for ${fallback[*]}: using the tiny RANDOM"
  log "      test checkpoints (tests/fixtures/models). The pipeline runs end to end, but boxes, masks and"
  log "      answers are noise. Point ${fallback[*]} at real checkpoints (hub ids or local directories)."
fi

cat > "$out/sample_params.yaml" <<YAML
# written by scripts/run_sample.sh (on top of config/vlm_perception.yaml)
/**:
  ros__parameters:
    device: "${VLM_DEVICE:-cpu}"
    dtype: "${VLM_DTYPE:-f32}"
    camera: {topic: "image", transport: "both"}
    owlvit: {model: "$owlvit", queries: ["a cat", "a coffee cup", "a rocket", "a person"]}
    clipseg: {model: "$clipseg", prompts: ["a cat", "a cup"]}
    vilt: {model: "$vilt"}
    # zero-shot classification of every processed frame, on ~/classification
    clip: {enabled: true, model: "$clip", labels: ["a cat", "a cup of coffee", "a rocket launch"]}
    # a caption of each frame (~/caption)
    blip: {enabled: true, model: "$blip"}
    overlay: {enabled: true}
    depth: {enabled: true}
    # 3D outputs in the robot's frame: sample_camera.py publishes the static tree
    # base_link -> camera_link -> camera_color_optical_frame on /tf_static
    target_frame: "base_link"
    services: {timeout: 120.0}
YAML
if [ "${#cameras[@]}" -gt 0 ]; then
  cam_args+=(--cameras "${cameras[@]}")
  cat >> "$out/sample_params.yaml" <<YAML
    # one node, two cameras: <ns>/head/image and <ns>/wrist/image, results under ~/head/, ~/wrist/
    cameras: [${cameras[0]}, ${cameras[1]}]
    ${cameras[1]}: {queries: ["a cat", "a coffee cup"]}
YAML
fi

# ---- run -------------------------------------------------------------------------------------
# Raw frames over 512 KB do not fit Fast DDS's default shared-memory segment and best effort loses
# them: the node and the camera (the writer, whose segment counts) both start with the bundled
# profile, unless FASTRTPS_DEFAULT_PROFILES_FILE is set ('' runs without one).
if [ -z "${FASTRTPS_DEFAULT_PROFILES_FILE+set}" ]; then
  export FASTRTPS_DEFAULT_PROFILES_FILE="$root/config/fastdds_large_data.xml"
elif [ -z "$FASTRTPS_DEFAULT_PROFILES_FILE" ]; then
  unset FASTRTPS_DEFAULT_PROFILES_FILE
fi
log "Fast DDS profile: ${FASTRTPS_DEFAULT_PROFILES_FILE:-none}"
log "starting vlm_perception_node in /sample (log: $out/node.log)"
target/release/vlm_perception_node --ros-args \
  --params-file config/vlm_perception.yaml --params-file "$out/sample_params.yaml" \
  -r __ns:=/sample > "$out/node.log" 2>&1 &
node_pid=$!
stop_node() {
  if kill -0 "$node_pid" 2>/dev/null; then
    kill -INT "$node_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$node_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$node_pid" 2>/dev/null || true
  fi
  wait "$node_pid" 2>/dev/null || true
}
trap stop_node EXIT

status=0
python3 scripts/sample_camera.py --node /sample/vlm_perception --camera-topic /sample/image \
  --out "$out" "${cam_args[@]}" || status=$?
if [ "$status" -eq 0 ]; then
  # A SayCan-style plan on the last frame: ~/score, then ~/ground with the synthetic depth.
  log "examples/saycan_planner.py on the last frame"
  planner=0
  python3 examples/saycan_planner.py --node /sample/vlm_perception --task "put the cat in the coffee cup" \
    --objects "cat, coffee cup, rocket" --timeout 120 || planner=$?
  case "$planner" in
    0) ;;
    3) log "no feasible plan on this frame (its objects are not visible): a valid answer" ;;
    *) status=$planner ;;
  esac
fi
if [ "$status" -ne 0 ]; then
  log "the sample run failed (status $status); node log:"
  tail -n 30 "$out/node.log" >&2
fi
stop_node
trap - EXIT
log "done: overlays and results.json in $out"
exit "$status"
