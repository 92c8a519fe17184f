#!/usr/bin/env python3
"""The transformers + PyTorch half of the side-by-side benchmark (scripts/bench.sh).

  bench_reference.py make-checkpoint OUT_DIR [--arch owlvit|owlv2|clipseg|vilt] [--format safetensors|bin]
      Writes a randomly initialised checkpoint with the architecture of the reference checkpoint
      (transformers' config defaults: owlvit = google/owlvit-base-patch32, ViT-B/32 at 768x768,
      12+12 layers; owlv2 = google/owlv2-base-patch16 at 960x960; clipseg = CIDAS/clipseg-rd64 at 352x352; vilt = ViLT-B/32 with the 3129
      answers of dandelin/vilt-b32-finetuned-vqa) in hub layout, with the tokenizer of the
      fixtures. Speed and memory do not depend on the weights, and the real checkpoints cannot
      be downloaded here.

  bench_reference.py peak-rss -- COMMAND [ARG ...]
      Runs COMMAND and prints its peak resident set size (getrusage of the child) as JSON.

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
FIXTURE_MODELS = ROOT / "tests" / "fixtures" / "models"
# Tokenizer and processor files per architecture, from the fixture checkpoints (real vocabularies).
# (the OWLv2 fixtures have a cut-down vocabulary: the full CLIP one comes from OWL-ViT's)
TOKENIZER_FROM = {"owlvit": "owlvit-tiny-p16", "owlv2": "owlvit-tiny-p16", "clipseg": "clipseg-tiny-rd16", "vilt": "vilt-tiny-vqa"}
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt", "vocab.txt"]
# The answer vocabulary size of dandelin/vilt-b32-finetuned-vqa (VQAv2's 3129 answers).
VILT_VQA_LABELS = 3129


def make_checkpoint(out: Path, arch: str = "owlvit", fmt: str = "safetensors") -> None:
    import transformers as tf

    torch.manual_seed(0)
    if arch == "owlvit":
        config = tf.OwlViTConfig()  # defaults = google/owlvit-base-patch32
        model_cls, side = tf.OwlViTForObjectDetection, config.vision_config.image_size
        config.architectures = ["OwlViTForObjectDetection"]
    elif arch == "owlv2":
        config = tf.Owlv2Config()  # defaults = google/owlv2-base-patch16(-ensemble): 960 px, 3600 patches
        model_cls, side = tf.Owlv2ForObjectDetection, config.vision_config.image_size
        config.architectures = ["Owlv2ForObjectDetection"]
    elif arch == "clipseg":
        config = tf.CLIPSegConfig()  # defaults = CIDAS/clipseg-rd64
        model_cls, side = tf.CLIPSegForImageSegmentation, 352  # the processor size of CIDAS/clipseg-rd64-refined
        config.architectures = ["CLIPSegForImageSegmentation"]
    elif arch == "vilt":
        labels = {i: f"answer {i}" for i in range(VILT_VQA_LABELS)}
        config = tf.ViltConfig(num_labels=VILT_VQA_LABELS, id2label=labels, label2id={v: k for k, v in labels.items()})
        model_cls, side = tf.ViltForQuestionAnswering, 384  # the shortest edge of the VQA checkpoint
        config.architectures = ["ViltForQuestionAnswering"]
    else:
        raise SystemExit(f"unknown architecture {arch}")
    model = model_cls(config).eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    if fmt == "bin":
        # transformers 5 writes only safetensors: the same state dict as transformers 4's pytorch_model.bin
        from safetensors.torch import load_file

        state = load_file(str(out / "model.safetensors"))
        (out / "model.safetensors").unlink()
        torch.save({k: state[k].contiguous() for k in sorted(state)}, out / "pytorch_model.bin")
    src = FIXTURE_MODELS / TOKENIZER_FROM[arch]
    for name in TOKENIZER_FILES:
        if (src / name).exists():
            shutil.copy(src / name, out / name)
    if arch == "vilt":
        # ViLT's text positions: 40 in the real checkpoint
        tok_cfg = json.loads((out / "tokenizer_config.json").read_text())
        tok_cfg["model_max_length"] = config.max_position_embeddings
        (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2))
    pre_src = FIXTURE_MODELS / ("owlv2-tiny-p16" if arch == "owlv2" else TOKENIZER_FROM[arch])
    pre = json.loads((pre_src / "preprocessor_config.json").read_text())
    if arch == "vilt":
        pre["size"] = {"shortest_edge": side}
    else:
        pre["size"] = {"height": side, "width": side}
        if "crop_size" in pre:
            pre["crop_size"] = {"height": side, "width": side}
    (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2))
    print(out)


def peak_rss(command) -> None:
    import resource
    import subprocess

    t = time.perf_counter()
    proc = subprocess.run(command, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # KiB on Linux
    print(json.dumps({"command": command, "exit": proc.returncode, "peak_rss_bytes": peak, "wall_s": round(wall, 2)}))


def stats(values):
    v = sorted(values)
    pick = lambda p: v[min(len(v) - 1, round((len(v) - 1) * p))]
    return {"median_ms": pick(0.5), "p95_ms": pick(0.95), "min_ms": v[0]}


def detect(args) -> None:
    from transformers import AutoConfig, AutoProcessor, Owlv2ForObjectDetection, OwlViTForObjectDetection

    device = torch.device("cuda:0" if args.device.startswith("cuda") else "cpu")
    dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t = time.perf_counter()
    processor = AutoProcessor.from_pretrained(args.model)
    arch = (AutoConfig.from_pretrained(args.model).architectures or ["OwlViTForObjectDetection"])[0]
    model_cls = Owlv2ForObjectDetection if arch == "Owlv2ForObjectDetection" else OwlViTForObjectDetection
    model = model_cls.from_pretrained(args.model, dtype=dtype).to(device).eval()
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
            tower = model.owlv2 if hasattr(model, "owlv2") else model.owlvit
            text_embeds = tower.get_text_features(
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
    mk.add_argument("--arch", choices=["owlvit", "owlv2", "clipseg", "vilt"], default="owlvit")
    mk.add_argument("--format", choices=["safetensors", "bin"], default="safetensors")
    pr = sub.add_parser("peak-rss")
    pr.add_argument("command", nargs=argparse.REMAINDER)
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
        make_checkpoint(args.out, args.arch, args.format)
    elif args.cmd == "peak-rss":
        peak_rss(args.command[1:] if args.command[:1] == ["--"] else args.command)
    else:
        detect(args)


if __name__ == "__main__":
    sys.exit(main())
