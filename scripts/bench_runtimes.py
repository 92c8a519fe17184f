"""The ONNX Runtime and OpenVINO sides of the side-by-side benchmark (scripts/bench.sh), run as
`bench_reference.py TASK ... --runtime RUNTIME [--onnx-dir DIR]` (TASK: detect, segment, ask,
classify; CPU and f32 only):

  --runtime export      exports the case's per-frame graph to ONNX (if not cached) and exits;
  --runtime ort         ONNX Runtime, CPUExecutionProvider, intra_op_num_threads = the threads of
                        the PyTorch side (torch.get_num_threads(), which bench_reference.py leaves at
                        torch's default), f32 (ONNX Runtime's only precision on a CPU);
  --runtime ov-f32      OpenVINO: openvino.convert_model of the ONNX file, compiled on "CPU" with
                        INFERENCE_NUM_THREADS = the same threads and INFERENCE_PRECISION_HINT f32;
  --runtime ov-default  the same at OpenVINO's default precision on this CPU (bf16 where the CPU
                        has AVX512-BF16 or AMX, else f32): "precision" in the JSON is what the
                        compiled model reports as its INFERENCE_PRECISION_HINT.

The export is the one a user would do: torch.onnx.export (torch's default exporter, opset 18;
the TorchScript exporter where that fails) of the PER-FRAME graph of the case, with static
shapes, the model in f32 on the CPU:
  detect   (OWL-ViT / OWLv2): pixel_values and the cached, normalised query embeddings ->
           logits, pred_boxes (+ objectness_logits for OWLv2): image_embedder, class_predictor,
           box_predictor (bench_reference.owl_heads);
  segment  (CLIPSeg): pixel_values and the prompts' conditional embeddings -> logits (one vision
           pass, the decoder batched over the prompts: bench_reference.clipseg_logits);
  ask      (ViLT VQA): input_ids, attention_mask, token_type_ids, pixel_values, pixel_mask ->
           logits, the whole forward. ViLT's visual_embed picks its patches with
           torch.multinomial and data-dependent shapes, which neither exporter takes: the export
           replaces it with the same computation for one unpadded image (all patches, in order;
           transformers takes them in a random order, which changes only rounding);
  classify (CLIP zero-shot): pixel_values and the cached label embeddings -> probs
           (bench_reference.clip_probs).
The text embeddings are computed once by the PyTorch model at export (as our node caches them)
and stored with the graph. The export is cached in --onnx-dir (scripts/bench.sh: target/bench/
onnx-CASE, next to the random-weight checkpoints): model.onnx (+ model.onnx.data), reference.npz
(the inputs of one frame and PyTorch's f32 outputs on them) and meta.json; it is redone when
meta.json does not match (another checkpoint, image, text, torch or transformers).

Per frame (what "frame" times, as the PyTorch side's cheapest path defines it): the RGB image in
memory -> results on the host: "preprocess" is the transformers processor call of the PyTorch
side (the image only; for ViLT image and question), its tensors handed to the runtime as NumPy
arrays (no copy); "forward" is the runtime's inference on them plus the post-processing that
the PyTorch side does after its model (NumPy: detect sigmoid of the max logit per box; segment
sigmoid of the logits; ask sigmoid and the top answer; classify the top label). Loading
(convert_model, compilation) is "load_ms", not timed per frame.

Numerical deviation: before timing, each side runs the stored inputs and reports
"max_abs_diff" per output against PyTorch f32 on the same inputs, with "reference_max_abs" (the
largest magnitude of PyTorch's output, for scale).
"""
import contextlib
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

import bench_reference as ref

RUNTIMES = ("export", "ort", "ov-f32", "ov-default")
OPSET = 18


@dataclass
class Graph:
    """One task's per-frame graph: its inputs (cached ones are computed once at export), its
    outputs, the PyTorch function of the model that computes them, the per-frame preprocessing
    and the post-processing to results on the host."""
    model_cls: Callable  # (model dir) -> transformers model class
    cached: Callable  # (model, processor, args) -> {name: tensor}, computed once
    frame: Callable  # (processor, image, args) -> {name: tensor}, per frame
    inputs: list[str]  # the graph's inputs, in the order `forward` takes them
    outputs: Callable  # (model) -> [name]
    forward: Callable  # (model, *inputs) -> output tensor(s)
    post: Callable  # ({output: array}, model config, args) -> {JSON field: value}


def sigmoid(x: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -x))


def is_owlv2(model) -> bool:
    return hasattr(model, "owlv2")


def image_only(processor, image, args):
    return {"pixel_values": processor(images=image, return_tensors="pt")["pixel_values"]}


def owl_cached(model, processor, args):
    tokens = processor(text=[args.queries], return_tensors="pt")
    return {"query_embeds": ref.owl_query_embeds(model, tokens["input_ids"], tokens["attention_mask"])}


def detect_post(out, config, args):
    scores = sigmoid(out["logits"].max(-1))
    return {"boxes": int(out["pred_boxes"].shape[1]), "top_score": float(scores.max())}


def segment_post(out, config, args):
    masks = sigmoid(out["logits"])
    return {"mask_shape": list(masks.shape)}


VILT_INPUTS = ["input_ids", "attention_mask", "token_type_ids", "pixel_values", "pixel_mask"]


def vilt_frame(processor, image, args):
    inputs = processor(image, args.question, return_tensors="pt")
    return {name: inputs[name] for name in VILT_INPUTS}


def vilt_post(out, config, args):
    scores = sigmoid(out["logits"])[0]
    return {"answer": config.id2label[int(scores.argmax())]}


def classify_post(out, config, args):
    return {"top": args.labels[int(out["probs"][0].argmax())]}


def _cls(name):
    return lambda model_dir: getattr(__import__("transformers"), name)


GRAPHS = {
    "detect": Graph(
        model_cls=ref.owl_class,
        cached=owl_cached,
        frame=image_only,
        inputs=["pixel_values", "query_embeds"],
        outputs=lambda model: ["logits", "pred_boxes"] + (["objectness_logits"] if is_owlv2(model) else []),
        forward=lambda model, pixel_values, query_embeds: ref.owl_heads(
            model, pixel_values, query_embeds, objectness=is_owlv2(model)),
        post=detect_post,
    ),
    "segment": Graph(
        model_cls=_cls("CLIPSegForImageSegmentation"),
        cached=lambda model, processor, args: {
            "conditional_embeddings": ref.clipseg_prompt_embeds(model, processor.tokenizer, args.prompts)},
        frame=image_only,
        inputs=["pixel_values", "conditional_embeddings"],
        outputs=lambda model: ["logits"],
        forward=ref.clipseg_logits,
        post=segment_post,
    ),
    "ask": Graph(
        model_cls=_cls("ViltForQuestionAnswering"),
        cached=lambda model, processor, args: {},
        frame=vilt_frame,
        inputs=VILT_INPUTS,
        outputs=lambda model: ["logits"],
        forward=lambda model, input_ids, attention_mask, token_type_ids, pixel_values, pixel_mask: model(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
            pixel_values=pixel_values, pixel_mask=pixel_mask).logits,
        post=vilt_post,
    ),
    "classify": Graph(
        model_cls=_cls("CLIPModel"),
        cached=lambda model, processor, args: {
            "text_embeds": ref.clip_label_embeds(model, processor.tokenizer, args.labels, args.template)},
        frame=image_only,
        inputs=["pixel_values", "text_embeds"],
        outputs=lambda model: ["probs"],
        forward=ref.clip_probs,
        post=classify_post,
    ),
}


class Wrapper(torch.nn.Module):
    """The per-frame graph as a module for torch.onnx.export."""

    def __init__(self, model, forward):
        super().__init__()
        self.model, self.fn = model, forward

    def forward(self, *inputs):
        return self.fn(self.model, *inputs)


def vilt_visual_embed_unpadded(self, pixel_values, pixel_mask, max_image_length=200):
    """ViltEmbeddings.visual_embed for images without padding, exportable: every patch, in
    order (transformers draws the same patches in a random order with torch.multinomial), the
    position embeddings interpolated to the patch grid, the mask from pixel_mask."""
    x = self.patch_embeddings(pixel_values)
    batch_size, channels, height, width = x.shape
    x_mask = torch.nn.functional.interpolate(pixel_mask[:, None, :, :].float(), size=(height, width)).long()
    patch_dim = self.config.image_size // self.config.patch_size
    spatial_pos = self.position_embeddings[:, 1:, :].transpose(1, 2).view(1, channels, patch_dim, patch_dim)
    pos_embed = torch.nn.functional.interpolate(spatial_pos, size=(height, width), mode="bilinear", align_corners=True)
    pos_embed = pos_embed.flatten(2).transpose(1, 2).expand(batch_size, -1, -1)
    x = x.flatten(2).transpose(1, 2)
    patch_index = torch.stack(torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij"), dim=-1)
    patch_index = patch_index.view(1, height * width, 2).expand(batch_size, -1, -1)
    x_mask = x_mask.flatten(1)
    cls_tokens = self.cls_token.expand(batch_size, -1, -1)
    x = torch.cat((cls_tokens, x), dim=1)
    pos_embed = torch.cat((self.position_embeddings[:, 0, :][:, None, :].expand(batch_size, -1, -1), pos_embed), dim=1)
    x = self.dropout(x + pos_embed)
    x_mask = torch.cat([torch.ones(batch_size, 1).to(x_mask), x_mask], dim=1)
    return x, x_mask, (patch_index, (height, width))


@contextlib.contextmanager
def exportable(model):
    """ViLT: visual_embed replaced for the export (see the module docstring); others unchanged."""
    embeddings = getattr(getattr(model, "vilt", None), "embeddings", None)
    if embeddings is None:
        yield
        return
    embeddings.visual_embed = vilt_visual_embed_unpadded.__get__(embeddings)
    try:
        yield
    finally:
        del embeddings.visual_embed


def export_meta(args) -> dict:
    """What the cached export depends on; a different one is exported again."""
    import transformers

    model = Path(args.model).resolve()
    return {
        "task": args.cmd,
        "model": str(model),
        "model_mtime": (model / "config.json").stat().st_mtime,
        "image": str(Path(args.image).resolve()),
        "text": getattr(args, "queries", None) or getattr(args, "prompts", None) or getattr(args, "labels", None)
        or getattr(args, "question", None),
        "template": getattr(args, "template", None),
        "opset": OPSET,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def onnx_dir(args) -> Path:
    if args.onnx_dir:
        return Path(args.onnx_dir)
    return ref.ROOT / "target" / "bench" / f"onnx-{args.cmd}-{Path(args.model).resolve().name}"


def ensure_export(args) -> tuple[Path, dict]:
    """The cached export of this case (exported first if missing or stale): (directory, meta)."""
    out, meta = onnx_dir(args), export_meta(args)
    meta_file = out / "meta.json"
    if meta_file.exists():
        cached = json.loads(meta_file.read_text())
        if {k: cached.get(k) for k in meta} == meta and (out / "model.onnx").exists():
            return out, cached
    graph = GRAPHS[args.cmd]
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    t0 = time.perf_counter()
    # the exporters and the model loading print progress; stdout carries only the JSON reports
    with contextlib.redirect_stdout(sys.stderr):
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(args.model)
        model = graph.model_cls(args.model).from_pretrained(args.model, dtype=torch.float32).eval()
        image = Image.open(args.image).convert("RGB")
        with torch.inference_mode():
            inputs = {**graph.cached(model, processor, args), **graph.frame(processor, image, args)}
        args_in = tuple(inputs[name] for name in graph.inputs)
        outputs = graph.outputs(model)
        wrapper = Wrapper(model, graph.forward).eval()
        with torch.no_grad(), exportable(model):
            try:
                torch.onnx.export(wrapper, args_in, tmp / "model.onnx", input_names=graph.inputs,
                                  output_names=outputs, opset_version=OPSET)
                exporter = "dynamo"
            except Exception as e:  # noqa: BLE001 - what a user does next: the older exporter
                print(f"# torch.onnx.export (dynamo) failed ({type(e).__name__}); the TorchScript exporter",
                      file=sys.stderr)
                for f in tmp.iterdir():
                    f.unlink()
                torch.onnx.export(wrapper, args_in, tmp / "model.onnx", input_names=graph.inputs,
                                  output_names=outputs, opset_version=OPSET, dynamo=False)
                exporter = "torchscript"
        with torch.inference_mode():  # PyTorch f32, transformers' own code (ViLT unpatched)
            got = wrapper(*args_in)
        got = got if isinstance(got, tuple) else (got,)
    np.savez(tmp / "reference.npz",
             **{f"in.{k}": v.numpy() for k, v in inputs.items()},
             **{f"out.{k}": v.numpy() for k, v in zip(outputs, got)})
    meta = {**meta, "exporter": exporter, "inputs": graph.inputs, "outputs": outputs,
            "export_s": round(time.perf_counter() - t0, 1)}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    print(f"# exported {out / 'model.onnx'} ({exporter}, opset {OPSET}) in {meta['export_s']} s", file=sys.stderr)
    return out, meta


def ort_session(path: Path, threads: int):
    """ONNX Runtime on the CPU: (run(feeds) -> {output: array}, precision, impl)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    run = lambda feeds: dict(zip(names, session.run(names, feeds)))
    return run, "f32", f"onnxruntime {ort.__version__} (CPUExecutionProvider)"


def ov_session(path: Path, threads: int, f32: bool):
    """OpenVINO on the CPU from the ONNX file: (run(feeds) -> {output: array}, precision, impl)."""
    import openvino as ov

    config = {"INFERENCE_NUM_THREADS": threads}
    if f32:
        config["INFERENCE_PRECISION_HINT"] = "f32"
    compiled = ov.Core().compile_model(ov.convert_model(str(path)), "CPU", config)
    precision = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    request = compiled.create_infer_request()
    outputs = [(o, o.get_any_name()) for o in compiled.outputs]

    def run(feeds):
        result = request.infer(feeds)
        return {name: result[o] for o, name in outputs}

    mode = "f32" if f32 else "default precision"
    return run, precision, f"openvino {ov.__version__.split('-')[0]} (CPU, {mode})"


def run_side(args) -> None:
    """One runtime side of a model case: its JSON report on stdout."""
    if args.device != "cpu" or args.dtype != "f32":
        raise SystemExit(f"--runtime {args.runtime}: CPU and f32 only (the export is f32)")
    out, meta = ensure_export(args)
    if args.runtime == "export":
        return
    from transformers import AutoConfig, AutoProcessor

    graph = GRAPHS[args.cmd]
    threads = torch.get_num_threads()  # the PyTorch side's threads
    rss_before_load = ref.rss_now_mib()
    t0 = time.perf_counter()
    processor = AutoProcessor.from_pretrained(args.model)
    config = AutoConfig.from_pretrained(args.model)
    if args.runtime == "ort":
        run, precision, impl = ort_session(out / "model.onnx", threads)
    else:
        run, precision, impl = ov_session(out / "model.onnx", threads, f32=args.runtime == "ov-f32")
    load_ms = ref.ms(t0)
    saved = np.load(out / "reference.npz")
    # the stored inputs of one frame: the cached text embeddings stay, each frame replaces the rest
    stored = {name: saved[f"in.{name}"] for name in graph.inputs}
    got = run(stored)
    deviation = {name: float(np.abs(got[name] - saved[f"out.{name}"]).max()) for name in meta["outputs"]}
    scale = {name: float(np.abs(saved[f"out.{name}"]).max()) for name in meta["outputs"]}
    image = Image.open(args.image).convert("RGB")

    pre, fwd = [], []
    for i in ref.iterations(args):
        timed = i >= args.warmup
        t0 = time.perf_counter()
        frame = {name: t.numpy() for name, t in graph.frame(processor, image, args).items()}
        if timed:
            pre.append(ref.ms(t0))
        t0 = time.perf_counter()
        result = graph.post(run({**stored, **frame}), config, args)
        if timed:
            fwd.append(ref.ms(t0))

    print(json.dumps({
        "impl": impl,
        "side": args.runtime,
        "task": args.cmd,
        "model": args.model,
        "image": args.image,
        "device": "cpu",
        "dtype": "f32",
        "precision": precision,
        "threads": threads,
        "iters": args.iters,
        "onnx": str(out / "model.onnx"),
        "exporter": meta["exporter"],
        "opset": meta["opset"],
        "load_ms": load_ms,
        "rss_before_load_mib": rss_before_load,
        "max_abs_diff": deviation,
        "reference_max_abs": scale,
        "pixel_shape": list(frame["pixel_values"].shape),
        **result,
        "preprocess": ref.stats(pre),
        "forward": ref.stats(fwd),
        "frame": ref.stats([a + b for a, b in zip(pre, fwd)]),
        "peak_rss_mib": ref.peak_rss_mib(),
    }))
