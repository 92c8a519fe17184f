#!/usr/bin/env bash
# `segment` / `ask` on the lent GPU (no Rust toolchain there): CLIPSeg logits (--logits-out)
# against the transformers references and ViLT answer scores against scores.json, on CUDA in
# f32/f16/bf16. Expects the cuda-built binaries, xz-compressed, in .device/bin/ (as
# scripts/gpu_check.sh); carry `.device/bin`. Takes ~1-2 min. Locally, on CPU:
#   DEV=cpu BIN=target/release/vlm-perception DTYPES="f32 f16" bash scripts/gpu_check_seg_vqa.sh
# Expected (CPU f32): CLIPSeg at model size ~6e-7 relative; resized photos and ViLT scores move
# by up to ~2e-3 relative / 2.3e-4 (torchvision-resized references, PIL-like resize here).
set -uo pipefail
out="${OUT:-/tmp/gpu_out}"; mkdir -p "$out" /tmp/vlm-bin
DEV="${DEV:-cuda}"; B="${BIN:-/tmp/vlm-bin/vlm-perception}"; F=tests/fixtures
if [ -z "${BIN:-}" ]; then
  for f in .device/bin/*.xz; do xz -dc "$f" > "/tmp/vlm-bin/$(basename "$f" .xz)"; done
  chmod +x /tmp/vlm-bin/*
  cu13="$(python3 -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))')"
  export LD_LIBRARY_PATH="$cu13:${LD_LIBRARY_PATH:-}"
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
fi
# warm the PTX JIT cache once
$B segment --model $F/models/clipseg-tiny-rd16 --image $F/images/coffee_96x96.png --prompt a --device $DEV > /dev/null 2>&1
for dt in ${DTYPES:-f32 f16 bf16}; do
  for ms in clipseg-tiny-rd16:coffee_96x96 clipseg-tiny-complex:coffee_80x80 clipseg-tiny-rd16:chelsea; do
    m=${ms%%:*}; s=${ms##*:}; ref=$F/reference/$m/$s
    mapfile -t ps < <(python3 -c "import json; [print(p) for p in json.load(open('$ref/meta.json'))['prompts']]")
    pa=(); for p in "${ps[@]}"; do pa+=(--prompt "$p"); done
    img=$(python3 -c "import json; print(json.load(open('$ref/meta.json'))['image'])")
    $B segment --model $F/models/$m --image $F/images/$img "${pa[@]}" --device $DEV --dtype $dt \
      --logits-out "$out/$m-$s-$dt.npy" --json > "$out/$m-$s-$dt.json" 2>> "$out/err.txt" || echo "FAIL segment $m $s $dt"
    python3 -c "
import numpy as np
a=np.load('$out/$m-$s-$dt.npy'); b=np.load('$ref/logits.npy')
d=np.abs(a-b).max(); print('segment $m/$s $dt: max abs', f'{d:.2e}', 'rel', f'{d/np.abs(b).max():.2e}', a.dtype, a.shape)"
  done
  for m in vilt-tiny-vqa vilt-tiny-vqa-b; do
    for s in chelsea chelsea_201x87; do
      ref=$F/reference/$m/$s/q0
      q=$(python3 -c "import json; print(json.load(open('$ref/scores.json'))['question'])")
      img=$(python3 -c "import json; print(json.load(open('$F/reference/$m/$s/meta.json'))['image'])")
      $B ask --model $F/models/$m --image $F/images/$img --question "$q" --top-k 100 --device $DEV --dtype $dt --json > "$out/$m-$s-$dt.json" 2>> "$out/err.txt" || echo "FAIL ask $m $s $dt"
      python3 -c "
import json
o=json.load(open('$out/$m-$s-$dt.json')); r=json.load(open('$ref/scores.json'))
labels=json.load(open('$F/models/$m/config.json'))['id2label']
ours={a['answer']:a['score'] for a in o['answers']}
d=max(abs(ours[labels[str(i)]]-s) for i,s in enumerate(r['sigmoid']))
print('ask $m/$s $dt: max score diff vs reference (resized input)', f'{d:.2e}')"
    done
  done
done
tail -5 "$out/err.txt"
