#!/usr/bin/env python3
"""Generate the CLIP zero-shot classification parity fixtures (tiny random `CLIPModel` checkpoints + transformers'
`zero-shot-image-classification` pipeline outputs).

Usage (from the repository root, after scripts/make_fixtures.py has written tests/fixtures/images/):

    bash scripts/setup_reference.sh && .venv-ref/bin/python scripts/make_clip_fixtures.py

scripts/make_fixtures.py deletes all of tests/fixtures/ before it regenerates the model fixtures, and runs this
script at its end. This one deletes and rewrites only its own folders: tests/fixtures/models/clip-tiny*/ and
tests/fixtures/reference/clip-tiny*/. It reuses make_fixtures.py's helpers (tokenizer files, weight noise, saving),
so it is deterministic the same way (fixed seeds, one CPU thread, fixed JSON formatting).

What it writes, per checkpoint (hub layout: config.json, weights, tokenizer files, preprocessor_config.json):
  * clip-tiny: model.safetensors, tokenizer.json + vocab.json/merges.txt, `<|endoftext|>` pads (as
    openai/clip-vit-base-patch32), text `eos_token_id` set (pooling at the first EOS), logit_scale 3.0 (exp 20: random embeddings are less
    alike than trained ones, and ln(100), the OpenAI checkpoints' value, saturates every softmax), a CLIPImageProcessor scaled down to 64 px (shortest edge 64, centre
    crop 64) for a 64 px / patch-16 vision tower.
  * clip-tiny-bin: pytorch_model.bin, vocab.json/merges.txt only, `!` pads, the legacy text `eos_token_id` 2
    (pooling at argmax(input_ids), as the OpenAI configs), the initial logit_scale (2.6592), GELU, and
    openai/clip-vit-base-patch32's own preprocessor_config.json (integer `size` / `crop_size` 224: shortest edge
    224 BICUBIC, centre crop 224, CLIP mean/std) for a 224 px / patch-32 vision tower: that checkpoint's layout,
    shrunk in width only.
Both use the tiny CLIP BPE vocabulary of make_fixtures.py (the first 256 merges) to stay small.

References, tests/fixtures/reference/<model>/<image stem>/:
  * meta.json: per case (labels, hypothesis_template): the formatted sequences, the token ids and attention mask of
    the label batch (`padding=True`, as the pipeline), the pipeline's result ([{label, score}] sorted) with its
    default (torchvision) image backend and with the PIL backend, the model's `logits_per_image` and
    `softmax(logits_per_image)` on the pipeline's pixels and on the PIL backend's pixels; the PIL backend's
    pixel statistics (per channel mean, std, min, max).
  * clip-tiny only: pixel_values.npy (the pipeline's, torchvision backend) and pixel_values_pil.npy, [1, 3, 64, 64].
    (At 224 px a pixel array is 0.6 MB; the fixtures must stay under 64 MiB.)
"""

from __future__ import annotations

import math
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import make_fixtures as mf  # noqa: E402  (sets the thread / determinism settings on import)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import (  # noqa: E402
    AutoImageProcessor,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    pipeline,
)

DEFAULT_TEMPLATE = "This is a photo of {}."

OPENAI_PREPROCESSOR_CONFIG = {
    "crop_size": 224,
    "do_center_crop": True,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor",
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3,
    "size": 224,
}

# (labels, hypothesis_template or None for the pipeline's default)
CASES = [
    (["door open", "door closed"], None),
    (["a cat", "a cup of coffee", "a rocket", "a remote control"], None),
    (["a cat", "a cup of coffee", "a rocket", "a remote control"], "a blurry photo of {}, seen by a robot"),
    (["cat"], None),
    (["a photo of a cat", "a photo of a dog", "an image of a spaceship launching at dawn over the ocean"], "{}"),
    # the same label twice: equal scores, kept in input order (the pipeline's sort is stable)
    (["cat", "dog", "cat"], "{} {{on a table}}"),
]

SPECS = {
    "clip-tiny": {
        "seed": 9100,
        "format": "safetensors",
        "tokenizer_json": True,
        "pad_token": mf.CLIP_EOS,
        "legacy_eos": False,
        "logit_scale": 3.0,
        "vision": dict(image_size=64, patch_size=16, hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=48),
        "text": dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                     max_position_embeddings=77),
        "projection_dim": 16,
        "processor": dict(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}),
        "pixel_arrays": True,
        "images": ["chelsea.png", "coffee.png", "rocket.jpg", "chelsea_107x181.png", "chelsea_31x33.png"],
    },
    "clip-tiny-bin": {
        "seed": 9200,
        "format": "bin",
        "tokenizer_json": False,
        "pad_token": "!",
        "legacy_eos": True,
        "logit_scale": None,
        "vision": dict(image_size=224, patch_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=32, hidden_act="gelu"),
        "text": dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                     max_position_embeddings=77, hidden_act="gelu"),
        "projection_dim": 8,
        "processor": "openai",
        "pixel_arrays": False,
        "images": ["chelsea.png", "coffee.png", "rocket.jpg"],
    },
}


def result_list(res) -> list:
    return [{"label": r["label"], "score": float(r["score"])} for r in res]


def make_clip(name: str, spec: dict, vocab: dict, merges: list) -> None:
    out = mf.MODELS / name
    ref_root = mf.REFS / name
    for d in (out, ref_root):
        if d.exists():
            shutil.rmtree(d)
    torch.manual_seed(spec["seed"])
    eos_id = 2 if spec["legacy_eos"] else vocab[mf.CLIP_EOS]
    pad_id = vocab[spec["pad_token"]]
    text = {**spec["text"], "vocab_size": len(vocab), "pad_token_id": pad_id, "bos_token_id": vocab[mf.CLIP_BOS],
            "eos_token_id": eos_id}
    config = CLIPConfig(text_config=text, vision_config=spec["vision"], projection_dim=spec["projection_dim"])
    model = CLIPModel(config).eval()
    mf.perturb_constant_params(model, spec["seed"] + 1)
    with torch.no_grad():
        g = mf.rng(spec["seed"] + 2)
        # the towers' default init (std 0.02) gives near-identical embeddings: draw the projections and the
        # position tables larger so that labels and images really differ.
        mf.set_normal_(model.visual_projection.weight, 1.0 / spec["vision"]["hidden_size"] ** 0.5, g)
        mf.set_normal_(model.text_projection.weight, 1.0 / spec["text"]["hidden_size"] ** 0.5, g)
        mf.set_normal_(model.vision_model.embeddings.position_embedding.weight, 0.3, g)
        mf.set_normal_(model.text_model.embeddings.token_embedding.weight, 0.5, g)
        if spec["logit_scale"] is not None:
            model.logit_scale.fill_(spec["logit_scale"])
    mf.save_model(model, out, spec["format"])
    if spec["processor"] == "openai":
        # openai/clip-vit-base-patch32's preprocessor_config.json, verbatim: the feature-extractor era's integer
        # sizes, which CLIPImageProcessor reads as shortest_edge 224 / crop 224 x 224 (default_to_square=False)
        mf.write_json(out / "preprocessor_config.json", OPENAI_PREPROCESSOR_CONFIG)
        ip = CLIPImageProcessor.from_pretrained(out)
        assert ip.size.shortest_edge == 224 and (ip.crop_size.height, ip.crop_size.width) == (224, 224)
    else:
        mf.save_image_processor(CLIPImageProcessor(**spec["processor"]), out, "CLIPProcessor")
    mf.write_clip_tokenizer(
        out,
        vocab,
        merges,
        pad_token=spec["pad_token"],
        max_len=spec["text"]["max_position_embeddings"],
        processor_class="CLIPProcessor",
        tokenizer_json=spec["tokenizer_json"],
        cat_ids=mf.CLIP_CAT_IDS if len(vocab) == 49408 else [vocab[mf.CLIP_BOS]]
        + [vocab[t] for t in ("a</w>", "p", "ho", "to</w>", "of</w>", "a</w>", "c", "at</w>")] + [vocab[mf.CLIP_EOS]],
    )

    model = CLIPModel.from_pretrained(out).eval()
    proc = CLIPProcessor.from_pretrained(out)
    assert proc.image_processor.backend == "torchvision"
    pil_ip = AutoImageProcessor.from_pretrained(out, backend="pil")
    assert pil_ip.backend == "pil"
    clf = pipeline("zero-shot-image-classification", model=str(out), device="cpu")
    clf_pil = pipeline("zero-shot-image-classification", model=str(out), image_processor=pil_ip, device="cpu")
    assert clf.image_processor.backend == "torchvision" and clf_pil.image_processor.backend == "pil"
    for image_name in spec["images"]:
        image = mf.load_rgb(mf.IMAGES / image_name)
        ref = ref_root / Path(image_name).stem
        pv = proc.image_processor(images=[image], return_tensors="pt")["pixel_values"]
        pv_pil = pil_ip(images=[image], return_tensors="pt")["pixel_values"]
        if spec["pixel_arrays"]:
            mf.save_npy(ref / "pixel_values.npy", pv, np.float32)
            mf.save_npy(ref / "pixel_values_pil.npy", pv_pil, np.float32)
        cases = []
        for labels, template in CASES:
            kwargs = {} if template is None else {"hypothesis_template": template}
            sequences = [(template or DEFAULT_TEMPLATE).format(x) for x in labels]
            tok = clf.tokenizer(sequences, padding=True, return_tensors="pt")
            with torch.no_grad():
                logits = model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"],
                               pixel_values=pv).logits_per_image
                logits_pil = model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"],
                                   pixel_values=pv_pil).logits_per_image
            mf.check_finite("logits_per_image", logits)
            if spec["tokenizer_json"]:
                # the tokenizers-library view of tokenizer.json (what the Rust port loads) agrees
                raw = mf.Tokenizer.from_file(str(out / "tokenizer.json"))
                raw.enable_padding(pad_id=pad_id, pad_token=spec["pad_token"])
                assert [e.ids for e in raw.encode_batch(sequences)] == tok["input_ids"].tolist()
            res = clf(image, candidate_labels=labels, **kwargs)
            res_pil = clf_pil(image, candidate_labels=labels, **kwargs)
            probs = logits.softmax(dim=-1)[0]
            # the pipeline's scores are this softmax, sorted
            assert sorted(float(p) for p in probs) == sorted(r["score"] for r in res)
            cases.append({
                "labels": labels,
                "hypothesis_template": template,
                "sequences": sequences,
                "input_ids": tok["input_ids"].tolist(),
                "attention_mask": tok["attention_mask"].tolist(),
                "pipeline": result_list(res),
                "pipeline_pil": result_list(res_pil),
                "logits_per_image": mf.floats(logits[0]),
                "probabilities": mf.floats(probs),
                "logits_per_image_pil": mf.floats(logits_pil[0]),
                "probabilities_pil": mf.floats(logits_pil.softmax(dim=-1)[0]),
            })
        meta = {
            "model": name,
            "image": image_name,
            "original_size_hw": [image.size[1], image.size[0]],
            "pipeline_image_processor_backend": clf.image_processor.backend,
            "pixel_values_shape": list(pv.shape),
            "pixel_values_pil_stats": {
                "mean": mf.floats(pv_pil[0].mean(dim=(1, 2))),
                "std": mf.floats(pv_pil[0].std(dim=(1, 2))),
                "min": mf.floats(pv_pil[0].amin(dim=(1, 2))),
                "max": mf.floats(pv_pil[0].amax(dim=(1, 2))),
            },
            "pixel_values_max_abs_diff_torchvision_vs_pil": float((pv - pv_pil).abs().max()),
            "logit_scale_exp": float(model.logit_scale.detach().exp()),
            "cases": cases,
        }
        mf.write_json(ref / "meta.json", meta)
        spread = max(max(c["probabilities"]) - min(c["probabilities"]) for c in cases)
        print(f"  {name}/{image_name}: {len(cases)} cases, largest probability spread {spread:.3f}")


def main() -> None:
    if not mf.IMAGES.is_dir():
        raise SystemExit(f"{mf.IMAGES} is missing: run scripts/make_fixtures.py first")
    vocab, merges = mf.build_clip_vocab()
    tiny_vocab, tiny_merges = mf.build_tiny_clip_vocab(merges, mf.TINY_CLIP_MERGES)
    for name, spec in SPECS.items():
        print(name)
        make_clip(name, spec, tiny_vocab, tiny_merges)


if __name__ == "__main__":
    main()
