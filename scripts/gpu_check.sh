#!/usr/bin/env bash
# One-call GPU check for the lent device machine (no Rust toolchain, no network there):
# parity of the cuda build against the references on the fixtures (detect here, segment and ask
# through scripts/gpu_check_seg_vqa.sh), then the side-by-side benchmark (vlm-bench vs
# transformers + PyTorch) of OWL-ViT B/32, CLIPSeg (4 prompts) and ViLT on GPU in f16/bf16/f32,
# and OWL-ViT on the host CPU.
# Expects the cuda-built binaries, xz-compressed, in .device/bin/ (see BENCHMARKS.md).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out="${OUT:-/tmp/gpu_out}"
mkdir -p "$out" /tmp/vlm-bin
for f in .device/bin/*.xz; do xz -dc "$f" > "/tmp/vlm-bin/$(basename "$f" .xz)"; done
chmod +x /tmp/vlm-bin/*
cu13="$(python3 -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))')"
export LD_LIBRARY_PATH="$cu13:${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)' | tee -a "$out/gpu.txt"

echo "== parity on GPU (owlvit-tiny-p16, coffee_64x64, 4 queries, threshold 0)"
ref=tests/fixtures/reference/owlvit-tiny-p16/coffee_64x64
mapfile -t qs < <(python3 -c "import json; [print(q) for q in json.load(open('$ref/meta.json'))['queries']]")
qargs=(); for q in "${qs[@]}"; do qargs+=(--query "$q"); done
for dt in f32 f16 bf16; do
  /tmp/vlm-bin/vlm-perception detect --model tests/fixtures/models/owlvit-tiny-p16 \
    --image tests/fixtures/images/coffee_64x64.png "${qargs[@]}" --threshold 0 --json \
    --device cuda --dtype "$dt" > "$out/parity_$dt.json" 2>>"$out/parity.err"
  python3 - "$out/parity_$dt.json" "$ref/post_processed.json" "$dt" <<'PY' | tee -a "$out/parity.txt"
import json, sys
ours = json.load(open(sys.argv[1]))["detections"]
ref = json.load(open(sys.argv[2]))["threshold_0"]
theirs = sorted(zip(ref["scores"], ref["labels"], ref["boxes"]), key=lambda t: -t[0])
ds = max(abs(o["score"] - t[0]) for o, t in zip(ours, theirs))
db = max(abs(a - b) for o, t in zip(ours, theirs) for a, b in zip(o["bbox"], t[2]))
same = len(ours) == len(theirs) and all(o["query_index"] == t[1] for o, t in zip(ours, theirs))
print(f"{sys.argv[3]}: {len(ours)} detections, labels/order identical: {same}, max score diff {ds:.2e}, max box diff {db:.4f} px")
PY
done

echo "== segment / ask parity on GPU (scripts/gpu_check_seg_vqa.sh)"
BIN=/tmp/vlm-bin/vlm-perception bash scripts/gpu_check_seg_vqa.sh | tee "$out/parity_seg_vqa.txt"

# issue 25's targets, side by side with PyTorch in this call: OWL-ViT B/32 f16 <= 5 ms a frame,
# CLIPSeg with 4 prompts <= 5 ms, ViLT <= 4 ms (batch 1); full-size random checkpoints made on
# first use under target/bench/ by bench_reference.py.
echo "== benchmark"
export BENCH_PYTHON=python3 BENCH_BIN=/tmp/vlm-bin/vlm-bench
for case in owlvit-b32 clipseg-4 vilt; do
  for dt in f16 bf16 f32; do
    bash scripts/bench.sh --case "$case" --device cuda --dtype "$dt" --iters 50 \
      >> "$out/bench.jsonl" 2>>"$out/bench.err"
  done
done
# issue 31: the node's several cameras as one batch through the vision tower - OWL-ViT B/32 f16,
# a batch of 1 and of 3 images (the checkpoint the owlvit-b32 case made above); `frame` is the
# whole batch's time.
for b in 1 3; do
  /tmp/vlm-bin/vlm-bench detect --model target/bench/owlvit-random-safetensors \
    --image tests/fixtures/images/chelsea.png --device cuda --dtype f16 --iters 50 --batch "$b" \
    --query "a photo of a cat" --query "a remote control" --query "a coffee cup" --query "a rocket" \
    >> "$out/bench_batch.jsonl" 2>>"$out/bench.err"
done
bash scripts/bench.sh --device cpu --dtype f32 --iters 10 >> "$out/bench.jsonl" 2>>"$out/bench.err"
grep -v Loading "$out/bench.err" | tail -20
cat "$out/bench.jsonl"
cat "$out/bench_batch.jsonl"
