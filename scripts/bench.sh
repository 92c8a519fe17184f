#!/usr/bin/env bash
# Side-by-side benchmark, one run: vlm_perception (vlm-bench) and transformers + PyTorch
# (scripts/bench_reference.py) on the same checkpoint, image, queries, device and dtype.
#   scripts/bench.sh [--arch owlvit|owlv2] [--device cpu|cuda] [--dtype f32|f16|bf16] [--iters N]
# The checkpoint is a random-weight google/owlvit-base-patch32 (--arch owlvit, the default) or
# google/owlv2-base-patch16 (--arch owlv2, 960 px) architecture (BENCH_MODEL to use another dir,
# e.g. the real weights). Results go to stdout as JSON lines.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
device=cpu dtype=f32 iters=20 arch=owlvit
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device="$2"; shift 2 ;;
    --dtype) dtype="$2"; shift 2 ;;
    --iters) iters="$2"; shift 2 ;;
    --arch) arch="$2"; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
python="${BENCH_PYTHON:-}"
if [ -z "$python" ]; then
  python="$(bash scripts/setup_reference.sh)/bin/python"
fi
bench_bin="${BENCH_BIN:-}"
if [ -z "$bench_bin" ]; then
  cargo build --release --quiet --bin vlm-bench
  bench_bin="$root/target/release/vlm-bench"
fi
case "$arch" in
  owlvit) default_model="$root/target/bench/owlvit-base-patch32-random" ;;
  owlv2) default_model="$root/target/bench/owlv2-base-patch16-random" ;;
  *) echo "unknown --arch $arch (owlvit or owlv2)" >&2; exit 2 ;;
esac
model="${BENCH_MODEL:-$default_model}"
if [ ! -f "$model/config.json" ]; then
  "$python" scripts/bench_reference.py make-checkpoint "$model" --arch "$arch" >/dev/null
fi
image="$root/tests/fixtures/images/chelsea.png"
queries=(--query "a photo of a cat" --query "a cup of coffee" --query "a rocket" --query "a remote control")
echo "# $(date -u +%FT%TZ) $(uname -m) $(nproc) cores; device=$device dtype=$dtype iters=$iters" >&2
"$bench_bin" --model "$model" --image "$image" "${queries[@]}" --device "$device" --dtype "$dtype" --iters "$iters"
"$python" scripts/bench_reference.py detect --model "$model" --image "$image" "${queries[@]}" \
  --device "$device" --dtype "$dtype" --iters "$iters"
