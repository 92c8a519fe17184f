#!/usr/bin/env bash
# Side-by-side benchmark, one run: vlm_perception (vlm-bench), transformers + PyTorch
# (scripts/bench_reference.py) and, on the CPU in f32, the same per-frame graph exported to ONNX
# in ONNX Runtime and in OpenVINO (f32 and OpenVINO's default precision; scripts/bench_runtimes.py)
# on the same checkpoint, image, inputs, device and dtype; per case ours first, then PyTorch,
# ONNX Runtime, OpenVINO f32, OpenVINO default, each one JSON line on stdout (a "# case ..."
# header per case and the machine on stderr).
#   scripts/bench.sh [--case CASE] [--device cpu|cuda] [--dtype f32|f16|bf16] [--iters N] [--warmup N]
#                    [--rounds N] [--lockstep] [--sides LIST]
#   --sides LIST (default: BENCH_SIDES, else all): comma-separated, of ours, torch, ort, ov-f32,
#   ov-default (ov = both OpenVINO sides), e.g. --sides ours,ort for a quick check. The ONNX
#   Runtime and OpenVINO sides run in the model cases owlvit-b32, owlvit-b16, owlv2, clipseg-1,
#   clipseg-4, vilt and clip, on the CPU (with --device cuda or --dtype f16 they are skipped with a note);
#   their ONNX export is made once per case and cached in target/bench/onnx-CASE. With --dtype bf16
#   they still run (their export is f32; OpenVINO's default precision picks bf16 by itself where
#   the CPU has AVX512-BF16), so that ours in bf16 meets OpenVINO default frame for frame.
#   --rounds N repeats the whole sequence N times (ours and the reference alternate case by case):
#   on a shared machine whose speed drifts over minutes, compare the rounds, not one run.
#   --lockstep: in the model cases, load every side, then alternate their frames one by one
#   (scripts/bench_lockstep.py), so that a slow minute of the machine falls on all alike (all
#   sides are loaded at once: OWLv2 with five sides needs about 9 GB).
#   CASE (default owlvit-b32):
#     owlvit-b32  OWL-ViT B/32 @768 (google/owlvit-base-patch32 architecture), 4 queries
#     owlvit-b16  OWL-ViT B/16 @768 (google/owlvit-base-patch16), 4 queries
#     owlv2       OWLv2 B/16 @960 (google/owlv2-base-patch16), 4 queries
#     clipseg-1   CLIPSeg rd64 @352 (CIDAS/clipseg-rd64-refined, ViT-B/16), 1 prompt
#     clipseg-4   CLIPSeg rd64 @352, 4 prompts
#     vilt        ViLT B/32 VQA (dandelin/vilt-b32-finetuned-vqa) @384x576, a 12-token question
#     clip        CLIP B/32 zero-shot classification (openai/clip-vit-base-patch32) @224, 4 labels
#     blip        BLIP captioning (Salesforce/blip-image-captioning-base) @384, greedy, 20 new tokens
#     blip-beam3  the same with 3 beams
#     blip-vqa    BLIP VQA (Salesforce/blip-vqa-base) @384, a question, greedy, 10 new tokens
#                 (BLIP cases: exactly N new tokens a frame on both sides; "vision" is the vision
#                 tower alone, "per_token" = (generate - vision) / N)
#     gemm        one f32 matmul on the CPU, 2048x2048x2048 and the encoder's fc1 shape
#                 577x768x3072 (m x k x n): the machine's GEMM rate, ours and PyTorch's; then
#                 one core's multiply-accumulate rate per AVX-512 instruction (vlm-bench
#                 mac-rates) and PyTorch's bf16 and f16 matmul rates (where the CPU has
#                 AVX512-BF16 or AVX512-FP16 for them), the ceiling of a
#                 reduced-precision CPU path here
#     all         every case above in sequence
#   --arch owlvit|owlv2 are the older spellings of --case owlvit-b32|owlv2.
# Detection and segmentation run on tests/fixtures/images/chelsea.png (451x300); ViLT on
# target/bench/chelsea-576x384.png (made from it on first use). The checkpoints are random-weight
# full-size ones of those architectures under target/bench/, made on first use by
# `bench_reference.py make-checkpoint` (speed does not depend on the weights); BENCH_MODEL points
# a single model case at another directory (e.g. the real weights). BENCH_BIN: a built vlm-bench
# (default: cargo build --release); BENCH_PYTHON: the reference python (default: the venv of
# scripts/setup_reference.sh). Per frame = RGB8 image in memory -> results on the host; see the
# docstring of bench_reference.py for what each of its keys times.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
device=cpu dtype=f32 iters=20 warmup=3 case_=owlvit-b32 rounds=1 lockstep=0
all_sides=(ours torch ort ov-f32 ov-default)
sides="${BENCH_SIDES:-$(IFS=,; echo "${all_sides[*]}")}"
all_cases=(owlvit-b32 owlvit-b16 owlv2 clipseg-1 clipseg-4 vilt clip blip blip-beam3 blip-vqa gemm)
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device="$2"; shift 2 ;;
    --dtype) dtype="$2"; shift 2 ;;
    --iters) iters="$2"; shift 2 ;;
    --warmup) warmup="$2"; shift 2 ;;
    --case) case_="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --lockstep) lockstep=1; shift ;;
    --sides) sides="$2"; shift 2 ;;
    --arch)
      case "$2" in
        owlvit) case_=owlvit-b32 ;;
        owlv2) case_=owlv2 ;;
        *) echo "unknown --arch $2 (owlvit or owlv2; see --case)" >&2; exit 2 ;;
      esac
      shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
if [ "$case_" = all ]; then
  cases=("${all_cases[@]}")
else
  case " ${all_cases[*]} " in
    *" $case_ "*) cases=("$case_") ;;
    *) echo "unknown --case $case_ (${all_cases[*]} or all)" >&2; exit 2 ;;
  esac
fi
sides=",${sides},"
sides="${sides//,ov,/,ov-f32,ov-default,}"
for s in ${sides//,/ }; do
  case " ${all_sides[*]} " in
    *" $s "*) ;;
    *) echo "unknown side $s in --sides (${all_sides[*]}, or ov for both OpenVINO sides)" >&2; exit 2 ;;
  esac
done
if [ -n "${BENCH_MODEL:-}" ] && [ "${#cases[@]}" -gt 1 ]; then
  echo "BENCH_MODEL names one checkpoint: use it with a single --case" >&2
  exit 2
fi
python="${BENCH_PYTHON:-}"
if [ -z "$python" ]; then
  python="$(bash scripts/setup_reference.sh)/bin/python"
fi
bench_bin="${BENCH_BIN:-}"
if [ -z "$bench_bin" ]; then
  cargo build --release --quiet --bin vlm-bench
  bench_bin="$root/target/release/vlm-bench"
fi
ref=("$python" scripts/bench_reference.py)
image="$root/tests/fixtures/images/chelsea.png"
common=(--device "$device" --dtype "$dtype" --warmup "$warmup" --iters "$iters")

# The checkpoint of a model case: BENCH_MODEL, else target/bench/NAME, made if missing.
checkpoint() { # NAME ARCH
  local dir="${BENCH_MODEL:-$root/target/bench/$1}"
  if [ ! -f "$dir/config.json" ]; then
    echo "# making $dir (make-checkpoint --arch $2)" >&2
    "${ref[@]}" make-checkpoint "$dir" --arch "$2" >/dev/null
  fi
  echo "$dir"
}

# ViLT's input: chelsea.png resized (Pillow, bicubic, deterministic) to 576x384 (width x height).
# ViltImageProcessor scales the shorter edge to 384 (unchanged here), caps the longer one at
# 1333/800 * 384 = 640 (576 is below) and floors both to multiples of 32 (384 = 12 * 32,
# 576 = 18 * 32): pixel_values 384x576 (216 patches of 32 px), which bench_reference checks.
vilt_image() {
  local out="$root/target/bench/chelsea-576x384.png"
  if [ ! -f "$out" ]; then
    mkdir -p "$(dirname "$out")"
    "$python" - "$image" "$out" <<'PY'
import sys
from PIL import Image
Image.open(sys.argv[1]).convert("RGB").resize((576, 384), Image.Resampling.BICUBIC).save(sys.argv[2])
PY
  fi
  echo "$out"
}

detect_queries=(--query "a photo of a cat" --query "a cup of coffee" --query "a rocket" --query "a remote control")
# 12 tokens with [CLS] and [SEP] (BERT uncased: what color is the cat lying on the blanket ?).
vilt_question="what color is the cat lying on the blanket?"

# Whether side $1 is switched on (--sides).
want() { [[ "$sides" == *",$1,"* ]]; }

# One model case on every side switched on: ours (`vlm-bench ARGS`), PyTorch
# (`bench_reference.py ARGS REF_EXTRA`) and, unless ONNX_DIR is "-", ONNX Runtime and OpenVINO
# (`bench_reference.py ARGS REF_EXTRA --runtime ort|ov-f32|ov-default --onnx-dir ONNX_DIR`, the
# export made first); one after the other, or with --lockstep frame for frame.
#   run_sides ONNX_DIR ARGS... [:: REF_EXTRA...]
run_sides() {
  local onnx="$1" ours=() extra=() cmds=() cmd=() r a
  shift
  while [ $# -gt 0 ] && [ "$1" != "::" ]; do ours+=("$1"); shift; done
  [ $# -gt 0 ] && shift && extra=("$@")
  local theirs=("${ref[@]}" "${ours[@]}" "${extra[@]}")
  want ours && cmds+=("$bench_bin" "${ours[@]}" ::)
  want torch && cmds+=("${theirs[@]}" ::)
  if [ "$onnx" != - ] && { want ort || want ov-f32 || want ov-default; }; then
    if [ "$device" != cpu ] || [ "$dtype" = f16 ]; then
      echo "# ONNX Runtime / OpenVINO sides skipped: CPU in f32 or bf16 only" >&2
    else
      # The export is f32 whatever --dtype says (the last --dtype wins): with --dtype bf16 ours
      # runs bf16 weights against ONNX Runtime f32, OpenVINO f32 and OpenVINO's own default
      # precision (bf16 where the CPU has AVX512-BF16), which is the pair to compare.
      "${theirs[@]}" --dtype f32 --runtime export --onnx-dir "$onnx"
      for r in ort ov-f32 ov-default; do
        want "$r" && cmds+=("${theirs[@]}" --dtype f32 --runtime "$r" --onnx-dir "$onnx" ::)
      done
    fi
  fi
  [ "${#cmds[@]}" -gt 0 ] || return 0
  if [ "$lockstep" = 1 ]; then
    "$python" scripts/bench_lockstep.py "${cmds[@]:0:${#cmds[@]}-1}"
  else
    for a in "${cmds[@]}"; do
      if [ "$a" = :: ]; then "${cmd[@]}"; cmd=(); else cmd+=("$a"); fi
    done
  fi
}

run_case() {
  local c="$1" model inputs
  case "$c" in
    owlvit-b32|owlvit-b16|owlv2)
      case "$c" in
        owlvit-b32) model="$(checkpoint owlvit-random-safetensors owlvit)" ;;
        owlvit-b16) model="$(checkpoint owlvit-b16-random-safetensors owlvit-b16)" ;;
        # (not target/bench/owlv2-base-patch16-random: make-checkpoint made that at 768 px before)
        owlv2) model="$(checkpoint owlv2-b16-960-random-safetensors owlv2)" ;;
      esac
      echo "# case $c: detect, 4 queries, model=$model image=$image device=$device dtype=$dtype warmup=$warmup iters=$iters" >&2
      run_sides "$root/target/bench/onnx-$c" detect --model "$model" --image "$image" "${detect_queries[@]}" "${common[@]}"
      ;;
    clipseg-1|clipseg-4)
      model="$(checkpoint clipseg-rd64-refined-random-safetensors clipseg)"
      if [ "$c" = clipseg-1 ]; then
        inputs=(--prompt "a cat")
      else
        inputs=(--prompt "a cat" --prompt "a remote control" --prompt "a blanket" --prompt "a cup of coffee")
      fi
      echo "# case $c: segment, ${c#clipseg-} prompt(s), model=$model image=$image device=$device dtype=$dtype warmup=$warmup iters=$iters" >&2
      run_sides "$root/target/bench/onnx-$c" segment --model "$model" --image "$image" "${inputs[@]}" "${common[@]}"
      ;;
    vilt)
      model="$(checkpoint vilt-random-safetensors vilt)"
      local img
      img="$(vilt_image)"
      echo "# case $c: ask, \"$vilt_question\", model=$model image=$img device=$device dtype=$dtype warmup=$warmup iters=$iters" >&2
      run_sides "$root/target/bench/onnx-$c" ask --model "$model" --image "$img" --question "$vilt_question" "${common[@]}" :: --expect-hw 384 576
      ;;
    clip)
      model="$(checkpoint clip-random-safetensors clip)"
      echo "# case $c: classify, 4 labels, model=$model image=$image device=$device dtype=$dtype warmup=$warmup iters=$iters" >&2
      run_sides "$root/target/bench/onnx-$c" classify --model "$model" --image "$image" --label "a cat" --label "a dog" \
        --label "a cup of coffee" --label "a remote control" "${common[@]}"
      ;;
    blip|blip-beam3)
      model="$(checkpoint blip-random-safetensors blip)"
      local beams=1
      [ "$c" = blip-beam3 ] && beams=3
      echo "# case $c: generate (caption), $beams beam(s), 20 new tokens, model=$model image=$image device=$device dtype=$dtype warmup=$warmup iters=$iters" >&2
      run_sides - generate --model "$model" --image "$image" --num-beams "$beams" --max-new-tokens 20 "${common[@]}"
      ;;
    blip-vqa)
      model="$(checkpoint blip-vqa-random-safetensors blip-vqa)"
      echo "# case $c: generate (VQA), \"$vilt_question\", 10 new tokens, model=$model image=$image device=$device dtype=$dtype warmup=$warmup iters=$iters" >&2
      run_sides - generate --model "$model" --image "$image" --question "$vilt_question" --max-new-tokens 10 "${common[@]}"
      ;;
    gemm)
      local shape m k n
      for shape in 2048x2048x2048 577x768x3072; do
        IFS=x read -r m k n <<<"$shape"
        echo "# case gemm: f32 CPU matmul m x k x n = $shape warmup=$warmup iters=$iters" >&2
        "$bench_bin" gemm --m "$m" --k "$k" --n "$n" --warmup "$warmup" --iters "$iters"
        "${ref[@]}" gemm --m "$m" --k "$k" --n "$n" --warmup "$warmup" --iters "$iters"
      done
      # What reduced precision can buy on this CPU: one core's multiply-accumulate rate per
      # AVX-512 instruction, and PyTorch's own bf16 / f16 matmul at the large shape.
      echo "# case gemm: multiply-accumulate rates per instruction (one core); PyTorch bf16 and f16 matmul 2048^3" >&2
      "$bench_bin" mac-rates
      for half in bf16 f16; do
        # without the CPU's own instructions for the type PyTorch's matmul falls back to a
        # scalar loop: 24 f16 products of 2048^3 ran for over 15 minutes on an AMD EPYC
        # without AVX512-FP16
        local flag="avx512_${half/#f16/fp16}"
        if ! grep -qw "$flag" /proc/cpuinfo; then
          echo "# case gemm: PyTorch $half matmul skipped: the CPU has no $flag" >&2
          continue
        fi
        "${ref[@]}" gemm --m 2048 --k 2048 --n 2048 --dtype "$half" --warmup "$warmup" --iters "$iters"
      done
      ;;
  esac
}

echo "# $(date -u +%FT%TZ) $(uname -m) $(nproc) cores; device=$device dtype=$dtype iters=$iters rounds=$rounds lockstep=$lockstep sides=${sides:1:-1} cases: ${cases[*]}" >&2
for round in $(seq "$rounds"); do
  for c in "${cases[@]}"; do
    echo "# round $round" >&2
    run_case "$c"
  done
done
