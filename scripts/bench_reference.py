#!/usr/bin/env python3
"""The transformers + PyTorch half of the side-by-side benchmark (scripts/bench.sh).

  bench_reference.py make-checkpoint OUT_DIR [--arch owlvit|owlvit-b16|owlv2|clipseg|vilt|clip] [--format safetensors|bin]
      Writes a randomly initialised checkpoint with the architecture of the reference checkpoint
      (transformers' config defaults: owlvit = google/owlvit-base-patch32, ViT-B/32 at 768x768,
      12+12 layers; owlvit-b16 = google/owlvit-base-patch16, the same with 16 px patches (2305
      tokens); owlv2 = google/owlv2-base-patch16 at 960x960 (3601 tokens; Owlv2Config's default
      is 768, which this wrote before, 2305 tokens); clipseg = CIDAS/clipseg-rd64-refined
      (ViT-B/16, 16 px patches, complex transposed convolution) at 352x352; vilt = ViLT-B/32 with the 3129 answers of dandelin/vilt-b32-finetuned-vqa;
      clip = openai/clip-vit-base-patch32 with its preprocessor_config.json; blip / blip-vqa =
      Salesforce/blip-image-captioning-base / blip-vqa-base, BlipConfig's defaults, the whole
      bert-base-uncased vocabulary + [DEC], [ENC]) in hub
      layout, with the tokenizer of the fixtures. Speed and memory do not depend on the weights,
      and the real checkpoints cannot be downloaded here.

  bench_reference.py peak-rss -- COMMAND [ARG ...]
      Runs COMMAND and prints its peak resident set size (getrusage of the child) as JSON.

  bench_reference.py detect --model DIR --image FILE --query Q [...]
  bench_reference.py segment --model DIR --image FILE --prompt P [...]
  bench_reference.py ask --model DIR --image FILE --question Q [--expect-hw H W]
  bench_reference.py classify --model DIR --image FILE --label L [...] [--template T]
  bench_reference.py generate --model DIR --image FILE [--prompt P | --question Q] [--num-beams N]
                              [--max-new-tokens N]
      (all five also take [--device cpu|cuda] [--dtype f32|f16|bf16] [--warmup N] [--iters N])
      Time per frame (RGB image in memory -> results on the host) and model-only, interleaved
      within each iteration. One JSON object shaped like vlm-bench's: "preprocess", "forward",
      "frame" as {median_ms, p95_ms, min_ms, samples_ms (in the order taken)}, "threads" (torch's
      intra-op threads), "peak_rss_mib" (getrusage of this process: its peak over everything it
      ran, standard calls included; "rss_before_load_mib" is the resident size with torch and
      transformers imported, before the model is loaded).
      Where transformers' standard call repeats work that vlm_perception skips, both are timed:
        *_standard: the call as transformers' docs show it;
        *_cheapest: the cheapest equivalent in transformers = the same work as ours, which is
                    what "preprocess", "forward" and "frame" (no suffix) repeat, for comparison.
      detect (OWL-ViT / OWLv2): standard = processor(text=queries, images=image) + model(**inputs)
        + post_process_object_detection (the text tower every frame); cheapest = processor on the
        image only + image_embedder, class_predictor (query embeddings computed once, timed as
        "encode_queries") and box_predictor, scores and boxes to host. "patches": the image grid.
      segment (CLIPSeg): standard = processor(text=prompts, images=[image]*len(prompts),
        padding=True) + model(**inputs) + sigmoid(logits) to host (the image tower once per
        prompt); cheapest = processor on one image + one vision pass (hidden states of
        extract_layers) + the decoder batched over the prompts' conditional embeddings (computed
        once, tokenizer + text tower timed as "encode_prompts") + sigmoid to host. Checks once,
        before timing, that both give the same logits (max abs diff < 1e-4, or 1e-5 of the
        largest logit if that is more; fails otherwise): "check_max_abs_diff".
      ask (ViLT VQA): processor(image, question) + model(**inputs) + sigmoid / top-1 to host, the
        standard call, which is also the cheapest. Reports "pixel_shape" (of pixel_values; with
        --expect-hw, fails unless it is H x W) and "question_tokens" ([CLS] and [SEP] included).
      classify (CLIP zero-shot): standard = transformers' zero-shot-image-classification pipeline
        call (the labels through the template, tokenized and encoded per call; "frame_standard");
        cheapest = processor on the image + get_image_features + logit_scale.exp() * cosine
        similarities against label embeddings computed once ("encode_labels") + softmax to host.
        Checks once, before timing, that both give the pipeline's probabilities to 1e-5.
      generate (BLIP captioning / VQA, by config.json): processor(images=image, text=prompt or
        question) + model.generate(max_new_tokens=N, min_new_tokens=N, num_beams=B): exactly N new
        tokens a frame. "vision": the vision tower alone (timed apart); "per_token": (generate -
        vision) / N; "sequence": the generated ids (ours must be the same).

      --runtime ort|ov-f32|ov-default (detect, segment, ask, classify; CPU, f32): the same case's
        per-frame graph exported to ONNX and run in ONNX Runtime or OpenVINO instead, timed as the
        cheapest path here; --runtime export only exports it; --onnx-dir DIR: the export's cache.
        See scripts/bench_runtimes.py. Every report names its "side" (torch, ort, ov-f32, ov-default).

  bench_reference.py gemm [--m 2048 --k 2048 --n 2048] [--warmup 3] [--iters 20]
      One f32 (m, k) x (k, n) torch.matmul on the CPU (output allocated each call, as vlm-bench
      gemm): the machine's GEMM rate, GFLOP/s = 2mkn / time, median and best.
"""
import argparse
import json
import resource
import shutil
import sys
import time
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_MODELS = ROOT / "tests" / "fixtures" / "models"
# Tokenizer and processor files per architecture, from the fixture checkpoints (real vocabularies).
# (the OWLv2 fixtures have a cut-down vocabulary: the full CLIP one comes from OWL-ViT's)
TOKENIZER_FROM = {
    "owlvit": "owlvit-tiny-p16",
    "owlvit-b16": "owlvit-tiny-p16",
    "owlv2": "owlvit-tiny-p16",
    "clipseg": "clipseg-tiny-rd16",
    "vilt": "vilt-tiny-vqa",
    # the full CLIP vocabulary (clip-tiny's is cut down); the processor comes from clip-tiny-bin
    "clip": "owlvit-tiny-p16",
}
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt", "vocab.txt"]
# The answer vocabulary size of dandelin/vilt-b32-finetuned-vqa (VQAv2's 3129 answers).
VILT_VQA_LABELS = 3129
DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


def make_checkpoint(out: Path, arch: str = "owlvit", fmt: str = "safetensors") -> None:
    import transformers as tf

    torch.manual_seed(0)
    if arch == "owlvit":
        config = tf.OwlViTConfig()  # defaults = google/owlvit-base-patch32
        model_cls, side = tf.OwlViTForObjectDetection, config.vision_config.image_size
        config.architectures = ["OwlViTForObjectDetection"]
    elif arch == "owlvit-b16":
        # google/owlvit-base-patch16: owlvit-base-patch32's config with 16 px patches, 768 px
        # (48x48 = 2304 patches + [CLS]).
        config = tf.OwlViTConfig(vision_config={"patch_size": 16, "image_size": 768})
        model_cls, side = tf.OwlViTForObjectDetection, config.vision_config.image_size
        config.architectures = ["OwlViTForObjectDetection"]
    elif arch == "owlv2":
        # google/owlv2-base-patch16(-ensemble): Owlv2Config's defaults but 960 px (3600 patches);
        # transformers' default vision image_size is 768.
        config = tf.Owlv2Config(vision_config={"image_size": 960})
        model_cls, side = tf.Owlv2ForObjectDetection, config.vision_config.image_size
        config.architectures = ["Owlv2ForObjectDetection"]
    elif arch == "clipseg":
        # CIDAS/clipseg-rd64-refined, as transformers' conversion script builds it: ViT-B/16
        # (CLIPSegVisionConfig's default patch is CLIP's 32), reduce_dim 64, the complex
        # transposed convolution; 352 px is its processor size (22x22 patches, 485 tokens).
        config = tf.CLIPSegConfig(vision_config={"patch_size": 16}, use_complex_transposed_convolution=True)
        model_cls, side = tf.CLIPSegForImageSegmentation, 352
        config.architectures = ["CLIPSegForImageSegmentation"]
    elif arch == "clip":
        config = tf.CLIPConfig()  # defaults = openai/clip-vit-base-patch32
        model_cls, side = tf.CLIPModel, config.vision_config.image_size
        config.architectures = ["CLIPModel"]
    elif arch in ("blip", "blip-vqa"):
        # Salesforce/blip-image-captioning-base / blip-vqa-base: BlipConfig's defaults (ViT-B/16
        # at 384 px, 577 tokens; BERT-base text with [DEC] = 30522)
        config = tf.BlipConfig()
        model_cls = tf.BlipForConditionalGeneration if arch == "blip" else tf.BlipForQuestionAnswering
        side = config.vision_config.image_size
        config.architectures = [model_cls.__name__]
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
    if arch in ("blip", "blip-vqa"):
        # the hub checkpoints carry no generation_config.json (BLIP's generate ignores it anyway)
        (out / "generation_config.json").unlink(missing_ok=True)
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from make_blip_fixtures import write_tokenizer

        write_tokenizer(out, None)  # bert-base-uncased's whole vocabulary + [DEC], [ENC]
        pre = json.loads((FIXTURE_MODELS / "blip-tiny" / "preprocessor_config.json").read_text())
        pre["size"] = {"height": side, "width": side}
        (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2))
        print(out)
        return
    src = FIXTURE_MODELS / TOKENIZER_FROM[arch]
    for name in TOKENIZER_FILES:
        if (src / name).exists():
            shutil.copy(src / name, out / name)
    if arch in ("vilt", "clip"):
        # the text positions of the real checkpoints: ViLT's 40, CLIP's 77
        text = config.text_config if arch == "clip" else config
        tok_cfg = json.loads((out / "tokenizer_config.json").read_text())
        tok_cfg["model_max_length"] = text.max_position_embeddings
        (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2))
    pre_src = FIXTURE_MODELS / {"owlv2": "owlv2-tiny-p16", "clip": "clip-tiny-bin"}.get(arch, TOKENIZER_FROM[arch])
    pre = json.loads((pre_src / "preprocessor_config.json").read_text())
    if arch == "clip":
        pass  # clip-tiny-bin carries openai/clip-vit-base-patch32's own preprocessor_config.json
    elif arch == "vilt":
        pre["size"] = {"shortest_edge": side}
    else:
        pre["size"] = {"height": side, "width": side}
        if "crop_size" in pre:
            pre["crop_size"] = {"height": side, "width": side}
    (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2))
    print(out)


def peak_rss(command) -> None:
    import subprocess

    t = time.perf_counter()
    proc = subprocess.run(command, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # KiB on Linux
    print(json.dumps({"command": command, "exit": proc.returncode, "peak_rss_bytes": peak, "wall_s": round(wall, 2)}))


def stats(values):
    """Median, p95 and minimum, and the samples in the order they were taken (a lockstep run's
    iteration i met the machine together with vlm-bench's frame i; bench_summary.py pairs them)."""
    v = sorted(values)
    pick = lambda p: v[min(len(v) - 1, round((len(v) - 1) * p))]
    return {"median_ms": pick(0.5), "p95_ms": pick(0.95), "min_ms": v[0], "samples_ms": list(values)}


def ms(t0):
    return (time.perf_counter() - t0) * 1e3


def peak_rss_mib():
    """Peak resident set size of this process so far, MiB (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_now_mib():
    """Current resident set size (VmRSS), MiB; None off Linux."""
    try:
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) / 1024 for l in f if l.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return None


def setup(args):
    """Device, dtype and a sync for asynchronous GPU work."""
    device = torch.device("cuda:0" if args.device.startswith("cuda") else "cpu")
    dtype = DTYPES[args.dtype]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    return device, dtype, sync


def load(args, model_cls):
    """The processor and the model on the device; the load time and the RSS before it."""
    from transformers import AutoProcessor

    rss_before_load = rss_now_mib()
    t = time.perf_counter()
    processor = AutoProcessor.from_pretrained(args.model)
    model = model_cls.from_pretrained(args.model, dtype=DTYPES[args.dtype]).to(setup(args)[0]).eval()
    return processor, model, (time.perf_counter() - t) * 1e3, rss_before_load


def common(args, task, load_ms, rss_before_load):
    """The JSON fields every model benchmark shares (vlm-bench's names)."""
    return {
        "impl": f"transformers {__import__('transformers').__version__} + torch {torch.__version__}",
        "side": "torch",
        "task": task,
        "model": args.model,
        "image": args.image,
        "device": args.device,
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "iters": args.iters,
        "load_ms": load_ms,
        # torch + transformers imported, no model yet: the part of peak_rss_mib that is the runtime
        "rss_before_load_mib": rss_before_load,
    }


def standard_and_cheapest(pre_std, fwd_std, pre, fwd):
    """The two paths' stats; the unsuffixed keys repeat the cheapest (the comparison with ours)."""
    frame_std = [a + b for a, b in zip(pre_std, fwd_std)]
    frame = [a + b for a, b in zip(pre, fwd)]
    return {
        "preprocess_standard": stats(pre_std),
        "forward_standard": stats(fwd_std),
        "frame_standard": stats(frame_std),
        "preprocess_cheapest": stats(pre),
        "forward_cheapest": stats(fwd),
        "frame_cheapest": stats(frame),
        "preprocess": stats(pre),
        "forward": stats(fwd),
        "frame": stats(frame),
    }


def iterations(args):
    """The frame loop's indices (warm-up ones first). With --lockstep: "ready" on stdout before the
    first, then each iteration waits for a line on stdin and prints "step" after it, so that
    scripts/bench_lockstep.py can interleave these iterations with vlm-bench's frames."""
    if args.lockstep:
        print("ready", flush=True)
    for i in range(args.warmup + args.iters):
        if args.lockstep and not sys.stdin.readline():
            raise SystemExit("--lockstep: stdin closed before the last iteration")
        yield i
        if args.lockstep:
            print("step", flush=True)


def owl_class(model_dir):
    """OwlViTForObjectDetection or Owlv2ForObjectDetection, by the checkpoint's config.json."""
    from transformers import AutoConfig, Owlv2ForObjectDetection, OwlViTForObjectDetection

    arch = (AutoConfig.from_pretrained(model_dir).architectures or ["OwlViTForObjectDetection"])[0]
    return Owlv2ForObjectDetection if arch == "Owlv2ForObjectDetection" else OwlViTForObjectDetection


def owl_query_embeds(model, input_ids, attention_mask):
    """OWL-ViT / OWLv2 query embeddings (the text tower, L2-normalised), computed once per
    vocabulary as our node caches them."""
    tower = model.owlv2 if hasattr(model, "owlv2") else model.owlvit
    text_embeds = tower.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output
    return text_embeds / torch.linalg.norm(text_embeds, dim=-1, keepdim=True)


def owl_heads(model, pixel_values, query_embeds, objectness=False):
    """The per-frame image path of OWL-ViT / OWLv2 with cached query embeddings [queries, dim]:
    image_embedder, class_predictor, box_predictor -> (logits [1, patches, queries], boxes
    [1, patches, 4]), and with `objectness` (OWLv2) its objectness logits [1, patches] too."""
    feature_map, _ = model.image_embedder(pixel_values=pixel_values)
    b, h, w, d = feature_map.shape
    feats = feature_map.reshape(b, h * w, d)
    logits, _ = model.class_predictor(feats, query_embeds[None], None)
    boxes = model.box_predictor(feats, feature_map)
    if objectness:
        return logits, boxes, model.objectness_predictor(feats)
    return logits, boxes


def clipseg_prompt_embeds(model, tokenizer, prompts, device="cpu"):
    """CLIPSeg's conditional embeddings, once per prompt set: CLIPSegForImageSegmentation.
    get_conditional_embeddings without the batch-size check."""
    tokens = tokenizer(prompts, padding=True, return_tensors="pt").to(device)
    return model.clip.get_text_features(
        input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
    ).pooler_output


def clipseg_logits(model, pixel_values, conditional_embeddings):
    """CLIPSegForImageSegmentation.forward's steps 1 and 3 on ONE image: the vision tower once
    (the visual projection of its pooled output is unused by the decoder), the hidden states
    after the extract_layers as the decoder's activations (hidden_states[0] is the embedding
    output, hence +1). The decoder batches over the prompts by broadcasting: FiLM maps the
    [1, tokens, 64] reduced activation to [prompts, tokens, 64], later reduce(activation) +
    output broadcast too, so the per-layer reductions run once."""
    vision = model.clip.vision_model(
        pixel_values=pixel_values, output_hidden_states=True, interpolate_pos_encoding=True
    )
    activations = [vision.hidden_states[i + 1] for i in model.extract_layers]
    return model.decoder(activations, conditional_embeddings).logits


def clip_label_embeds(model, tokenizer, labels, template, device="cpu"):
    """CLIP's label embeddings (the labels through the template, L2-normalised), once, as our
    node caches them."""
    tokens = tokenizer([template.format(l) for l in labels], padding=True, return_tensors="pt").to(device)
    text = model.get_text_features(**tokens)
    text = text.pooler_output if hasattr(text, "pooler_output") else text
    return text / text.norm(p=2, dim=-1, keepdim=True)


def clip_probs(model, pixel_values, text_embeds):
    """CLIPModel.forward's image half and its logits_per_image against the cached labels, softmax."""
    img = model.get_image_features(pixel_values=pixel_values)
    img = img.pooler_output if hasattr(img, "pooler_output") else img
    img = img / img.norm(p=2, dim=-1, keepdim=True)
    logits = model.logit_scale.exp() * img @ text_embeds.t()
    return logits.softmax(dim=-1)


def detect(args) -> None:
    device, dtype, sync = setup(args)
    processor, model, load_ms, rss_before_load = load(args, owl_class(args.model))
    image = Image.open(args.image).convert("RGB")
    queries = [args.queries]

    pre_std, fwd_std, encode, pre, fwd = [], [], [], [], []
    with torch.inference_mode():
        for i in iterations(args):
            timed = i >= args.warmup
            # transformers' usual call: processor on text and image, text and image towers every
            # frame, then post-processing.
            t0 = time.perf_counter()
            inputs = processor(text=queries, images=image, return_tensors="pt").to(device)
            inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
            if timed:
                pre_std.append(ms(t0))
            t0 = time.perf_counter()
            outputs = model(**inputs)
            processor.image_processor.post_process_object_detection(outputs, threshold=0.1, target_sizes=[image.size[::-1]])
            sync()
            if timed:
                fwd_std.append(ms(t0))
            # Query embeddings once (text tower; tokens from the processor above) ...
            t0 = time.perf_counter()
            query_embeds = owl_query_embeds(model, inputs["input_ids"], inputs["attention_mask"])
            sync()
            if timed:
                encode.append(ms(t0))
            # ... then per frame only the image: processor on the image, the image path, as
            # vlm_perception runs it.
            t0 = time.perf_counter()
            pixel_values = processor(images=image, return_tensors="pt")["pixel_values"].to(device, dtype)
            if timed:
                pre.append(ms(t0))
            t0 = time.perf_counter()
            logits, boxes = owl_heads(model, pixel_values, query_embeds)
            scores = torch.sigmoid(logits.max(-1).values)
            scores.cpu(), boxes.cpu()
            if timed:
                fwd.append(ms(t0))

    print(json.dumps({
        **common(args, "detect", load_ms, rss_before_load),
        "queries": len(args.queries),
        "patches": boxes.shape[1],
        "encode_queries": stats(encode),
        **standard_and_cheapest(pre_std, fwd_std, pre, fwd),
        "peak_rss_mib": peak_rss_mib(),
    }))


def segment(args) -> None:
    from transformers import CLIPSegForImageSegmentation

    device, dtype, sync = setup(args)
    processor, model, load_ms, rss_before_load = load(args, CLIPSegForImageSegmentation)
    image = Image.open(args.image).convert("RGB")
    prompts = args.prompts
    n = len(prompts)

    def standard_inputs():
        # As transformers' docs call CLIPSeg: one copy of the image per prompt.
        inputs = processor(text=prompts, images=[image] * n, padding=True, return_tensors="pt").to(device)
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        return inputs

    def standard_forward(inputs):
        return torch.sigmoid(model(**inputs).logits).cpu()

    def encode_prompts():
        return clipseg_prompt_embeds(model, processor.tokenizer, prompts, device)

    def cheapest_inputs():
        return processor(images=image, return_tensors="pt")["pixel_values"].to(device, dtype)

    def cheapest_forward(pixel_values, conditional_embeddings):
        return torch.sigmoid(clipseg_logits(model, pixel_values, conditional_embeddings)).cpu()

    with torch.inference_mode():
        # The cheapest path must compute what the standard call computes.
        inputs = standard_inputs()
        ref = model(**inputs).logits.float().cpu()
        cond = encode_prompts()
        got = clipseg_logits(model, cheapest_inputs(), cond).float().cpu()
        if got.shape != ref.shape:
            raise SystemExit(f"CLIPSeg check FAILED: cheapest logits {tuple(got.shape)} != standard {tuple(ref.shape)}")
        max_diff = (got - ref).abs().max().item()
        # f32: 1e-4, or 1e-5 of the largest logit where that is larger (random weights give logits
        # up to ~35, and the batch size alone moves the standard call's own logits by ~6e-5).
        scale = ref.abs().max().item()
        tol = max(1e-4, 1e-5 * scale) if dtype == torch.float32 else 5e-2 * max(1.0, scale)
        if not max_diff < tol:
            raise SystemExit(f"CLIPSeg check FAILED: cheapest vs standard logits max abs diff {max_diff:.3g} >= {tol:.3g}")
        print(f"# CLIPSeg check: cheapest vs standard logits {tuple(ref.shape)}, max abs diff {max_diff:.3g} (< {tol:.3g})", file=sys.stderr)

        pre_std, fwd_std, encode, pre, fwd = [], [], [], [], []
        for i in iterations(args):
            timed = i >= args.warmup
            t0 = time.perf_counter()
            inputs = standard_inputs()
            if timed:
                pre_std.append(ms(t0))
            t0 = time.perf_counter()
            standard_forward(inputs)
            sync()
            if timed:
                fwd_std.append(ms(t0))
            t0 = time.perf_counter()
            cond = encode_prompts()
            sync()
            if timed:
                encode.append(ms(t0))
            t0 = time.perf_counter()
            pixel_values = cheapest_inputs()
            if timed:
                pre.append(ms(t0))
            t0 = time.perf_counter()
            cheapest_forward(pixel_values, cond)
            if timed:
                fwd.append(ms(t0))

    print(json.dumps({
        **common(args, "segment", load_ms, rss_before_load),
        "prompts": n,
        "pixel_shape": list(pixel_values.shape),
        "logits_shape": list(ref.shape),
        "check_max_abs_diff": max_diff,
        "encode_prompts": stats(encode),
        **standard_and_cheapest(pre_std, fwd_std, pre, fwd),
        "peak_rss_mib": peak_rss_mib(),
    }))


def ask(args) -> None:
    from transformers import ViltForQuestionAnswering

    device, dtype, sync = setup(args)
    processor, model, load_ms, rss_before_load = load(args, ViltForQuestionAnswering)
    image = Image.open(args.image).convert("RGB")

    pre, fwd = [], []
    with torch.inference_mode():
        for i in iterations(args):
            timed = i >= args.warmup
            # As transformers' docs run ViLT VQA (also the cheapest: nothing is repeated).
            t0 = time.perf_counter()
            inputs = processor(image, args.question, return_tensors="pt").to(device)
            inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
            if timed:
                pre.append(ms(t0))
            t0 = time.perf_counter()
            logits = model(**inputs).logits
            score, idx = torch.sigmoid(logits).max(-1)
            score, idx = score.item(), idx.item()
            if timed:
                fwd.append(ms(t0))
    pixel_shape = list(inputs["pixel_values"].shape)
    if args.expect_hw and pixel_shape[2:] != args.expect_hw:
        raise SystemExit(f"ViLT pixel_values {pixel_shape}, expected height x width {args.expect_hw}")

    print(json.dumps({
        **common(args, "ask", load_ms, rss_before_load),
        "question": args.question,
        "question_tokens": int(inputs["input_ids"].shape[1]),
        "pixel_shape": pixel_shape,
        "answer": model.config.id2label[idx],
        "preprocess": stats(pre),
        "forward": stats(fwd),
        "frame": stats([a + b for a, b in zip(pre, fwd)]),
        "peak_rss_mib": peak_rss_mib(),
    }))


def classify(args) -> None:
    from transformers import CLIPModel, pipeline

    device, dtype, sync = setup(args)
    processor, model, load_ms, rss_before_load = load(args, CLIPModel)
    image = Image.open(args.image).convert("RGB")
    labels = args.labels
    classifier = pipeline("zero-shot-image-classification", model=model, image_processor=processor.image_processor,
                          tokenizer=processor.tokenizer, device=device, dtype=dtype)

    def standard():
        # transformers' zero-shot pipeline, as its docs call it: the labels are encoded per call
        return classifier(image, candidate_labels=labels, hypothesis_template=args.template)

    def encode_labels():
        return clip_label_embeds(model, processor.tokenizer, labels, args.template, device)

    def cheapest_inputs():
        return processor(images=image, return_tensors="pt")["pixel_values"].to(device, dtype)

    def cheapest_forward(pixel_values, text_embeds):
        return clip_probs(model, pixel_values, text_embeds).float().cpu()

    with torch.inference_mode():
        # The cheapest path must give the pipeline's probabilities.
        want = {r["label"]: r["score"] for r in standard()}
        got = cheapest_forward(cheapest_inputs(), encode_labels())[0].tolist()
        max_diff = max(abs(want[l] - p) for l, p in zip(labels, got))
        tol = 1e-5 if dtype == torch.float32 else 5e-2
        if not max_diff < tol:
            raise SystemExit(f"CLIP check FAILED: cheapest vs pipeline probabilities max abs diff {max_diff:.3g} >= {tol}")
        print(f"# CLIP check: cheapest vs pipeline probabilities, max abs diff {max_diff:.3g} (< {tol})", file=sys.stderr)

        std, encode, pre, fwd = [], [], [], []
        for i in iterations(args):
            timed = i >= args.warmup
            t0 = time.perf_counter()
            standard()
            sync()
            if timed:
                std.append(ms(t0))
            t0 = time.perf_counter()
            text_embeds = encode_labels()
            sync()
            if timed:
                encode.append(ms(t0))
            t0 = time.perf_counter()
            pixel_values = cheapest_inputs()
            if timed:
                pre.append(ms(t0))
            t0 = time.perf_counter()
            probs = cheapest_forward(pixel_values, text_embeds)
            if timed:
                fwd.append(ms(t0))

    print(json.dumps({
        **common(args, "classify", load_ms, rss_before_load),
        "labels": len(labels),
        "pixel_shape": list(pixel_values.shape),
        "check_max_abs_diff": max_diff,
        "top": labels[int(probs[0].argmax())],
        "encode_labels": stats(encode),
        # the pipeline call whole (preprocess, label encoding, forward, postprocess)
        "frame_standard": stats(std),
        "preprocess": stats(pre),
        "forward": stats(fwd),
        "frame": stats([a + b for a, b in zip(pre, fwd)]),
        "peak_rss_mib": peak_rss_mib(),
    }))


def generate(args) -> None:
    import transformers as tf

    device, dtype, sync = setup(args)
    arch = (tf.AutoConfig.from_pretrained(args.model).architectures or ["BlipForConditionalGeneration"])[0]
    model_cls = tf.BlipForQuestionAnswering if arch == "BlipForQuestionAnswering" else tf.BlipForConditionalGeneration
    processor, model, load_ms, rss_before_load = load(args, model_cls)
    image = Image.open(args.image).convert("RGB")
    text = args.question if args.question else args.prompt
    n = args.max_new_tokens
    # exactly n new tokens a frame on both sides (random weights would stop at random places)
    kwargs = dict(max_new_tokens=n, min_new_tokens=n, num_beams=args.num_beams)

    pre, vision, gen, sequence = [], [], [], None
    with torch.inference_mode():
        for i in iterations(args):
            timed = i >= args.warmup
            t0 = time.perf_counter()
            inputs = processor(images=image, text=text, return_tensors="pt").to(device)
            inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
            if timed:
                pre.append(ms(t0))
            t0 = time.perf_counter()
            model.vision_model(pixel_values=inputs["pixel_values"])
            sync()
            if timed:
                vision.append(ms(t0))
            t0 = time.perf_counter()
            sequence = model.generate(**inputs, **kwargs)[0].tolist()
            if timed:
                gen.append(ms(t0))
    per_token = [(g - v) / n for g, v in zip(gen, vision)]
    print(json.dumps({
        **common(args, "generate", load_ms, rss_before_load),
        "architecture": arch,
        "text": text,
        "num_beams": args.num_beams,
        "new_tokens": n,
        "sequence": sequence,
        "preprocess": stats(pre),
        # the vision tower alone, and generate whole (its own vision pass included)
        "vision": stats(vision),
        "forward": stats(gen),
        "per_token": stats(per_token),
        "frame": stats([a + b for a, b in zip(pre, gen)]),
        "peak_rss_mib": peak_rss_mib(),
    }))


def gemm(args) -> None:
    if args.iters <= 0:
        raise SystemExit("--iters must be positive")
    m, k, n = args.m, args.k, args.n
    torch.manual_seed(0)
    dtype = DTYPES[args.dtype]
    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    times = []
    with torch.inference_mode():
        for i in range(args.warmup + args.iters):
            t0 = time.perf_counter()
            c = torch.matmul(a, b)
            elapsed = ms(t0)
            del c
            if i >= args.warmup:
                times.append(elapsed)
    flop = 2.0 * m * k * n
    time_stats = stats(times)
    print(json.dumps({
        "impl": f"torch {torch.__version__}",
        "task": "gemm",
        "shape": [m, k, n],
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "time": time_stats,
        "gflops_median": flop / time_stats["median_ms"] / 1e6,
        "gflops_best": flop / time_stats["min_ms"] / 1e6,
    }))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make-checkpoint")
    mk.add_argument("out", type=Path)
    mk.add_argument("--arch", choices=["owlvit", "owlvit-b16", "owlv2", "clipseg", "vilt", "clip", "blip", "blip-vqa"],
                    default="owlvit")
    mk.add_argument("--format", choices=["safetensors", "bin"], default="safetensors")
    pr = sub.add_parser("peak-rss")
    pr.add_argument("command", nargs=argparse.REMAINDER)

    def run_args(sp):
        sp.add_argument("--model", required=True)
        sp.add_argument("--image", required=True)
        sp.add_argument("--device", default="cpu")
        sp.add_argument("--dtype", choices=list(DTYPES), default="f32")
        sp.add_argument("--warmup", type=int, default=3)
        sp.add_argument("--iters", type=int, default=20)
        sp.add_argument("--lockstep", action="store_true",
                        help="one iteration per stdin line, 'step' printed after each (bench_lockstep.py)")
        sp.add_argument("--runtime", choices=["torch", "export", "ort", "ov-f32", "ov-default"], default="torch",
                        help="torch (this file), or the exported graph in ONNX Runtime / OpenVINO "
                             "(scripts/bench_runtimes.py; export: only export it)")
        sp.add_argument("--onnx-dir", help="the export's cache (default target/bench/onnx-TASK-MODEL)")
        return sp

    run_args(sub.add_parser("detect")).add_argument("--query", dest="queries", action="append", required=True)
    run_args(sub.add_parser("segment")).add_argument("--prompt", dest="prompts", action="append", required=True)
    a = run_args(sub.add_parser("ask"))
    a.add_argument("--question", required=True)
    a.add_argument("--expect-hw", type=int, nargs=2, metavar=("H", "W"),
                   help="fail unless the processor's pixel_values are H x W")
    c = run_args(sub.add_parser("classify"))
    c.add_argument("--label", dest="labels", action="append", required=True)
    c.add_argument("--template", default="This is a photo of {}.")
    gen = run_args(sub.add_parser("generate"))
    gen.add_argument("--prompt")
    gen.add_argument("--question")
    gen.add_argument("--num-beams", type=int, default=1)
    gen.add_argument("--max-new-tokens", type=int, default=20)
    g = sub.add_parser("gemm")
    for dim in ("m", "k", "n"):
        g.add_argument(f"--{dim}", type=int, default=2048)
    g.add_argument("--dtype", choices=list(DTYPES), default="f32",
                   help="operand dtype (CPU bf16/f16 matmuls: what PyTorch's reduced-precision path reaches here)")
    g.add_argument("--warmup", type=int, default=3)
    g.add_argument("--iters", type=int, default=20)
    args = p.parse_args()
    if args.cmd == "make-checkpoint":
        make_checkpoint(args.out, args.arch, args.format)
    elif args.cmd == "peak-rss":
        peak_rss(args.command[1:] if args.command[:1] == ["--"] else args.command)
    elif getattr(args, "runtime", "torch") != "torch":
        if args.cmd == "generate":
            raise SystemExit("--runtime: detect, segment, ask and classify only")
        import bench_runtimes

        bench_runtimes.run_side(args)
    else:
        {"detect": detect, "segment": segment, "ask": ask, "classify": classify, "generate": generate,
         "gemm": gemm}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
