#!/usr/bin/env bash
# Peak resident memory of one CLI run per model and weights format, against the size of the
# weights (the defects issue's bound: peak RSS <= 1.2x the weights on CPU). Full-size random
# checkpoints of the reference architectures (scripts/bench_reference.py make-checkpoint),
# safetensors and pytorch_model.bin. One JSON line per run on stdout.
#   scripts/bench_memory.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${BENCH_PYTHON:-}"
if [ -z "$python" ]; then
  python="$(bash scripts/setup_reference.sh)/bin/python"
fi
cargo build --release --quiet --bin vlm-perception
cli="$root/target/release/vlm-perception"
image="$root/tests/fixtures/images/chelsea.png"
echo "# $(date -u +%FT%TZ) $(uname -m) $(nproc) cores" >&2
# OWL-ViT B/16 (2305 tokens) and OWLv2 at 960 px (3601 tokens) have the largest activations; their
# weights load the same way as B/32's, so they run in safetensors alone.
for arch in owlvit owlvit-b16 owlv2 clipseg vilt clip blip blip-vqa; do
  formats=(safetensors bin)
  case "$arch" in owlvit-b16|owlv2|blip|blip-vqa) formats=(safetensors) ;; esac
  for fmt in "${formats[@]}"; do
    dir="$arch"
    # the real CLIPSeg checkpoint's architecture (ViT-B/16, refined head); clipseg-random-* was B/32
    [ "$arch" = clipseg ] && dir=clipseg-rd64-refined
    # the name scripts/bench.sh gives OWLv2's 960 px checkpoint
    [ "$arch" = owlv2 ] && dir=owlv2-b16-960
    model="$root/target/bench/$dir-random-$fmt"
    [ -f "$model/config.json" ] || "$python" scripts/bench_reference.py make-checkpoint "$model" --arch "$arch" --format "$fmt" >/dev/null
    if [ "$fmt" = safetensors ]; then file="$model/model.safetensors"; else file="$model/pytorch_model.bin"; fi
    weights="$(stat -c %s "$file")"
    case "$arch" in
      owlvit|owlvit-b16|owlv2) task=(detect --query "a photo of a cat" --query "a remote control") ;;
      clipseg) task=(segment --prompt "a cat" --prompt "a remote control") ;;
      vilt) task=(ask --question "how many cats are there?") ;;
      clip) task=(classify --label "a cat" --label "a dog" --label "a remote control") ;;
      blip) task=(caption) ;;
      blip-vqa) task=(ask --question "what color is the cat?") ;;
    esac
    run="$("$python" scripts/bench_reference.py peak-rss -- "$cli" "${task[0]}" --model "$model" --image "$image" "${task[@]:1}")"
    "$python" - "$arch" "$fmt" "$weights" "$run" <<'PY'
import json, sys
arch, fmt, weights, run = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
assert run["exit"] == 0, run
peak = run["peak_rss_bytes"]
print(json.dumps({"model": arch, "format": fmt, "weights_mib": round(weights / 2**20, 1),
                  "peak_rss_mib": round(peak / 2**20, 1), "peak_over_weights": round(peak / weights, 3),
                  "wall_s": run["wall_s"]}))
PY
  done
done
