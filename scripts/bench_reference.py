#!/usr/bin/env python3
"""The transformers + PyTorch half of the side-by-side benchmark (scripts/bench.sh).

  bench_reference.py make-checkpoint OUT_DIR
      Writes a randomly initialised OwlViTForObjectDetection with the google/owlvit-base-patch32
      architecture (transformers' OwlViTConfig defaults: ViT-B/32 at 768x768, 12+12 layers) in hub
      layout, with the CLIP tokenizer of the fixtures. Speed does not depend on the weights, and
      the real checkpoint cannot be downloaded here.

  bench_reference.py detect --model DIR --image FILE --query Q [...] [--device cuda] [--dtype f16]
      Times, per frame: the processor (preprocess), the full model call as transformers users run
      it (text + image every frame), and the image-only path with text embeddings computed once
      (what vlm_perception does). Prints one JSON object shaped like vlm-bench's.
"""
import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER_FROM = ROOT / "tests" / "fixtures" / "models" / "owlvit-tiny-p16"
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt"]


def make_checkpoint(out: Path) -> None:
    from transformers import OwlViTConfig, OwlViTForObjectDetection

    torch.manual_seed(0)
    config = OwlViTConfig()  # defaults = google/owlvit-base-patch32
    config.architectures = ["OwlViTForObjectDetection"]
    model = OwlViTForObjectDetection(config).eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    for name in TOKENIZER_FILES:
        shutil.copy(TOKENIZER_FROM / name, out / name)
    pre = json.loads((TOKENIZER_FROM / "preprocessor_config.json").read_text())
    side = config.vision_config.image_size
    pre["size"] = {"height": side, "width": side}
    pre["crop_size"] = {"height": side, "width": side}
    (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2))
    print(out)


def stats(values):
    v = sorted(values)
    pick = lambda p: v[min(len(v) - 1, round((len(v) - 1) * p))]
    return {"median_ms": pick(0.5), "p95_ms": pick(0.95), "min_ms": v[0]}


def detect(args) -> None:
    from transformers import AutoProcessor, OwlViTForObjectDetection

    device = torch.device("cuda:0" if args.device.startswith("cuda") else "cpu")
    dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t = time.perf_counter()
    processor = AutoProcessor.from_pretrained(args.model)
    model = OwlViTForObjectDetection.from_pretrained(args.model, dtype=dtype).to(device).eval()
    load_ms = (time.perf_counter() - t) * 1e3
    image = Image.open(args.image).convert("RGB")
    queries = [args.queries]

    def ms(t0):
        return (time.perf_counter() - t0) * 1e3

    pre, full, encode, image_only = [], [], [], []
    with torch.inference_mode():
        for i in range(args.warmup + args.iters):
            timed = i >= args.warmup
            t0 = time.perf_counter()
            inputs = processor(text=queries, images=image, return_tensors="pt").to(device)
            inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
            if timed:
                pre.append(ms(t0))
            # transformers' usual call: text and image every frame, then post-processing.
            t0 = time.perf_counter()
            outputs = model(**inputs)
            processor.image_processor.post_process_object_detection(outputs, threshold=0.1, target_sizes=[image.size[::-1]])
            sync()
            if timed:
                full.append(ms(t0))
            # Query embeddings once (text tower) ...
            t0 = time.perf_counter()
            text_embeds = model.owlvit.get_text_features(
                input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
            ).pooler_output
            sync()
            if timed:
                encode.append(ms(t0))
            query_embeds = text_embeds / torch.linalg.norm(text_embeds, dim=-1, keepdim=True)
            # ... then per frame only the image path, as vlm_perception runs it.
            t0 = time.perf_counter()
            feature_map, _ = model.image_embedder(pixel_values=inputs["pixel_values"])
            b, h, w, d = feature_map.shape
            feats = feature_map.reshape(b, h * w, d)
            logits, _ = model.class_predictor(feats, query_embeds[None], None)
            boxes = model.box_predictor(feats, feature_map)
            scores = torch.sigmoid(logits.max(-1).values)
            scores.cpu(), boxes.cpu()
            if timed:
                image_only.append(ms(t0))

    print(json.dumps({
        "impl": f"transformers {__import__('transformers').__version__} + torch {torch.__version__}",
        "model": args.model,
        "device": args.device,
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "iters": args.iters,
        "load_ms": load_ms,
        "preprocess": stats(pre),
        "forward_full_text_and_image": stats(full),
        "encode_queries": stats(encode),
        "forward_image_only_cached_queries": stats(image_only),
        "frame_full": stats([a + b for a, b in zip(pre, full)]),
        "frame_cached_queries": stats([a + b for a, b in zip(pre, image_only)]),
    }))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make-checkpoint")
    mk.add_argument("out", type=Path)
    d = sub.add_parser("detect")
    d.add_argument("--model", required=True)
    d.add_argument("--image", required=True)
    d.add_argument("--query", dest="queries", action="append", required=True)
    d.add_argument("--device", default="cpu")
    d.add_argument("--dtype", default="f32")
    d.add_argument("--warmup", type=int, default=3)
    d.add_argument("--iters", type=int, default=20)
    args = p.parse_args()
    if args.cmd == "make-checkpoint":
        make_checkpoint(args.out)
    else:
        detect(args)


if __name__ == "__main__":
    sys.exit(main())
