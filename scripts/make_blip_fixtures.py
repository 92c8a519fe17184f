#!/usr/bin/env python3
"""Generate the BLIP captioning / generative VQA parity fixtures (tiny random `BlipForConditionalGeneration` and
`BlipForQuestionAnswering` checkpoints + transformers' `generate` outputs).

Usage (from the repository root, after scripts/make_fixtures.py has written tests/fixtures/images/):

    bash scripts/setup_reference.sh && .venv-ref/bin/python scripts/make_blip_fixtures.py

scripts/make_fixtures.py runs this script at its end. This one deletes and rewrites only its own folders:
tests/fixtures/models/blip-tiny*/ and tests/fixtures/reference/blip-tiny*/. It reuses make_fixtures.py's helpers,
so it is deterministic the same way (fixed seeds, one CPU thread, fixed JSON formatting).

Checkpoints (hub layout, as Salesforce/blip-image-captioning-base and Salesforce/blip-vqa-base: config.json,
model.safetensors, tokenizer.json + vocab.txt + tokenizer_config.json + special_tokens_map.json,
preprocessor_config.json; those repositories have no generation_config.json, so neither do these):
  * blip-tiny: BlipForConditionalGeneration, 64 px / patch 16 vision tower of width 32, 2-layer text decoder of
    width 32.
  * blip-tiny-vqa: BlipForQuestionAnswering (text encoder + text decoder), the same layout at width 16.
The tokenizer is bert-base-uncased's WordPiece vocabulary cut to its first VOCAB_LINES lines (the fixtures must
stay small) plus BLIP's added tokens [DEC] (bos) and [ENC], as the hub tokenizers append them after the vocabulary.
Words outside the cut vocabulary tokenize to [UNK], the same in both implementations.

The LM head's bias on [SEP] (the token BLIP generates to stop) is raised so that a random model sometimes ends its
captions. No exact ties are engineered: torch.topk orders exactly equal values in no documented order, so a beam
search over tied candidates has no reference to match (greedy's torch.argmax takes the first).

References, tests/fixtures/reference/<model>/:
  * cases.json: per image: pixel statistics; per case (prompt or question, generation kwargs): the prompt's
    token ids as BLIP's generate feeds them ([DEC] first, the trailing [SEP] dropped), `generate`'s output
    sequences, for greedy the per-step scores of the chosen tokens (the processed logits), for beam search
    `sequences_scores`, and the decoded text (skip_special_tokens).
  * blip-tiny/<image stem>/pixel_values.npy: the processor's pixels (torchvision backend), [1, 3, 64, 64]; the
    VQA checkpoint's processor is the same (checked), so its cases read these.
  * blip-tiny only: first_logits.npy: the decoder's logits at the first step for the first image, no prompt.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import make_fixtures as mf  # noqa: E402  (sets the thread / determinism settings on import)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from transformers import (  # noqa: E402
    BertTokenizerFast,
    BlipConfig,
    BlipForConditionalGeneration,
    BlipForQuestionAnswering,
    BlipImageProcessor,
    BlipProcessor,
)
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD  # noqa: E402

# bert-base-uncased ids below 2200 hold the specials, single characters and the commonest words (every prompt
# word here but photo / cat / cup / rocket / cats, which become [UNK] in both implementations)
VOCAB_LINES = 2200
SEP_ID = 102
IMAGES = ["chelsea.png", "coffee.png", "rocket.jpg", "chelsea_107x181.png"]
CAPTION_PROMPTS = [None, "a photo of", "there is a", "the cat, the cup and the rocket"]
QUESTIONS = ["how many cats are there?", "what is this?", "is it a rocket"]

# (name, generate kwargs). Every case sets max_new_tokens except "default" (transformers' max_length 20).
CAPTION_SETTINGS = [
    ("greedy", dict(max_new_tokens=12)),
    ("greedy_default", dict()),
    ("greedy_min_rep", dict(max_new_tokens=10, min_length=6, repetition_penalty=1.6)),
    ("beam3", dict(num_beams=3, max_new_tokens=12)),
    ("beam3_early", dict(num_beams=3, max_new_tokens=12, early_stopping=True, length_penalty=0.6)),
    ("beam3_never", dict(num_beams=3, max_new_tokens=8, early_stopping="never", length_penalty=1.5)),
    ("beam3_min_rep", dict(num_beams=3, max_new_tokens=10, min_new_tokens=4, repetition_penalty=1.3)),
    ("beam4_short", dict(num_beams=4, max_new_tokens=3)),
    # no prompt only: the whole position table (1 + 64 tokens: the last one is never fed back)
    ("greedy_long", dict(max_new_tokens=64, min_new_tokens=64)),
    ("beam3_long", dict(num_beams=3, max_new_tokens=64, min_new_tokens=64)),
]
VQA_SETTINGS = [
    ("greedy", dict(max_new_tokens=8)),
    ("beam3", dict(num_beams=3, max_new_tokens=8)),
    ("beam3_min", dict(num_beams=3, max_new_tokens=6, min_length=3, length_penalty=0.8)),
]

SPECS = {
    "blip-tiny": {
        "seed": 9300,
        "cls": BlipForConditionalGeneration,
        "sep_bias": 5.0,
        "settings": CAPTION_SETTINGS,
        "texts": CAPTION_PROMPTS,
        "vision_hidden": 32,
        "text_hidden": 32,
        "pixel_arrays": True,
    },
    "blip-tiny-vqa": {
        "seed": 9400,
        "cls": BlipForQuestionAnswering,
        "sep_bias": 5.0,
        "settings": VQA_SETTINGS,
        "texts": QUESTIONS,
        # narrower: this checkpoint holds two word-embedding tables (question encoder, answer decoder)
        "vision_hidden": 16,
        "text_hidden": 16,
        "pixel_arrays": False,  # the same processor as blip-tiny: its pixel arrays serve both
    },
}

VISION = dict(image_size=64, patch_size=16, num_hidden_layers=2, num_attention_heads=2)
TEXT = dict(num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=64)


def write_tokenizer(out: Path, vocab_lines: int | None = VOCAB_LINES) -> BertTokenizerFast:
    """bert-base-uncased's first `vocab_lines` lines (None: all, as the hub checkpoints) + [DEC] / [ENC], saved as
    the BLIP hub checkpoints are."""
    lines = (mf.bert_source_dir() / "vocab.txt").read_text(encoding="utf-8").splitlines()[:vocab_lines]
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    tok = BertTokenizerFast(vocab={t: i for i, t in enumerate(lines)}, do_lower_case=True, model_max_length=512)
    tok.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
    tok.save_pretrained(out)
    raw = mf.Tokenizer.from_file(str(out / "tokenizer.json"))
    raw.save(str(out / "tokenizer.json"), pretty=False)
    tok = BertTokenizerFast.from_pretrained(out)
    assert tok.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == [len(lines), len(lines) + 1]
    assert tok.sep_token_id == SEP_ID and tok.pad_token_id == 0 and tok.bos_token_id == len(lines)
    return tok


def build_model(name: str, spec: dict, out: Path):
    torch.manual_seed(spec["seed"])
    vision = {**VISION, "hidden_size": spec["vision_hidden"], "intermediate_size": 2 * spec["vision_hidden"]}
    text = {**TEXT, "hidden_size": spec["text_hidden"], "intermediate_size": 2 * spec["text_hidden"],
            "vocab_size": VOCAB_LINES + 2, "bos_token_id": VOCAB_LINES, "sep_token_id": SEP_ID,
            "pad_token_id": 0, "eos_token_id": 2}
    config = BlipConfig(text_config=text, vision_config=vision, projection_dim=16, image_text_hidden_size=16)
    model = spec["cls"](config).eval()
    mf.perturb_constant_params(model, spec["seed"] + 1)
    with torch.no_grad():
        g = mf.rng(spec["seed"] + 2)
        # initializer_range 0.02 gives a decoder that ignores its inputs: fan-in scaled linears and larger tables
        # so that the next token depends on the image and on the prefix.
        # (the vision config's initializer_range is 1e-10: the patch conv too, or every image looks the same)
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                mf.reinit_fan_in_(m, g)
        mf.set_normal_(model.vision_model.embeddings.position_embedding, 0.3, g)
        mf.set_normal_(model.vision_model.embeddings.class_embedding, 0.3, g)
        decoders = [model.text_decoder]
        for bert in [model.text_decoder.bert] + ([model.text_encoder] if hasattr(model, "text_encoder") else []):
            mf.set_normal_(bert.embeddings.word_embeddings.weight, 0.5, g)
            mf.set_normal_(bert.embeddings.position_embeddings.weight, 0.3, g)
        for dec in decoders:
            # the LM head reads the (tied) word embeddings; its bias decides how often [SEP] ends a caption
            preds = dec.cls.predictions
            bias = torch.randn(preds.bias.shape, generator=g) * 0.1
            bias[SEP_ID] += spec["sep_bias"]
            preds.bias.copy_(bias)
            assert preds.decoder.weight.data_ptr() == dec.bert.embeddings.word_embeddings.weight.data_ptr()
    model.save_pretrained(out)
    # the hub checkpoints have no generation_config.json: generate's settings come from the text config
    (out / "generation_config.json").unlink()
    return model


def check_saved(out: Path) -> None:
    allowed = {"config.json", "model.safetensors", "tokenizer.json", "vocab.txt", "tokenizer_config.json",
               "special_tokens_map.json", "preprocessor_config.json"}
    for f in out.iterdir():
        if f.name not in allowed:
            raise AssertionError(f"unexpected file {f}")


def as_list(t: torch.Tensor) -> list:
    return t.detach().cpu().tolist()


def make_blip(name: str, spec: dict) -> None:
    out = mf.MODELS / name
    ref_root = mf.REFS / name
    for d in (out, ref_root):
        if d.exists():
            shutil.rmtree(d)
    build_model(name, spec, out)
    ip = BlipImageProcessor(size={"height": 64, "width": 64}, resample=3, do_rescale=True, rescale_factor=1 / 255,
                            do_normalize=True, image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD,
                            do_convert_rgb=True)
    mf.save_image_processor(ip, out, "BlipProcessor")
    tok = write_tokenizer(out)
    for f in ("added_tokens.json",):
        if (out / f).exists():
            (out / f).unlink()
    if not (out / "special_tokens_map.json").exists():
        mf.write_json(out / "special_tokens_map.json", {
            "additional_special_tokens": ["[ENC]"], "bos_token": "[DEC]", "cls_token": "[CLS]",
            "mask_token": "[MASK]", "pad_token": "[PAD]", "sep_token": "[SEP]", "unk_token": "[UNK]"})
    check_saved(out)

    model = spec["cls"].from_pretrained(out).eval()
    proc = BlipProcessor.from_pretrained(out)
    assert proc.image_processor.backend == "torchvision"
    # the tokenizers-library view of tokenizer.json (what the Rust port loads) agrees
    raw = mf.Tokenizer.from_file(str(out / "tokenizer.json"))
    for text in spec["texts"]:
        if text is not None:
            assert raw.encode(text).ids == proc.tokenizer(text)["input_ids"], text
    images_meta = []
    stops = {"eos": 0, "length": 0}
    for image_name in IMAGES:
        image = mf.load_rgb(mf.IMAGES / image_name)
        stem = Path(image_name).stem
        pv = proc.image_processor(images=[image], return_tensors="pt")["pixel_values"]
        if spec["pixel_arrays"]:
            mf.save_npy(ref_root / stem / "pixel_values.npy", pv, np.float32)
        else:
            ref_pv = np.load(mf.REFS / "blip-tiny" / stem / "pixel_values.npy")
            assert np.array_equal(ref_pv, pv.numpy())
        cases = []
        for text in spec["texts"]:
            if text is None:
                inputs = {"pixel_values": pv}
                prompt_ids = [model.config.text_config.bos_token_id]
            else:
                enc = proc.tokenizer(text, return_tensors="pt")
                inputs = {"pixel_values": pv, "input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
                ids = enc["input_ids"][0].tolist()
                # BlipForConditionalGeneration.generate: [CLS] -> [DEC], the trailing [SEP] dropped
                prompt_ids = [model.config.text_config.bos_token_id] + ids[1:-1]
            if name == "blip-tiny-vqa":
                prompt_ids = [model.config.text_config.bos_token_id]  # the answer decoder starts from [DEC]
            for setting, kwargs in spec["settings"]:
                if setting.endswith("_long") and text is not None:
                    continue
                with torch.no_grad():
                    res = model.generate(**{k: v.clone() for k, v in inputs.items()}, output_scores=True,
                                         return_dict_in_generate=True, **kwargs)
                seq = res.sequences[0]
                generated = seq[len(prompt_ids):]
                case = {
                    "text": text,
                    "setting": setting,
                    "kwargs": kwargs,
                    "prompt_ids": prompt_ids,
                    "text_input_ids": None if text is None else inputs["input_ids"][0].tolist(),
                    "sequence": as_list(seq),
                    "decoded": proc.tokenizer.decode(generated, skip_special_tokens=True),
                }
                if name == "blip-tiny":
                    assert seq[: len(prompt_ids)].tolist() == prompt_ids, (seq, prompt_ids)
                if kwargs.get("num_beams", 1) > 1:
                    case["sequence_score"] = float(res.sequences_scores[0])
                else:
                    case["step_scores"] = [float(s[0, t]) for s, t in zip(res.scores, generated.tolist())]
                stops["eos" if SEP_ID in generated.tolist() else "length"] += 1
                cases.append(case)
        if image_name == IMAGES[0] and name == "blip-tiny":
            with torch.no_grad():
                emb = model.vision_model(pixel_values=pv)[0]
                logits = model.text_decoder(input_ids=torch.tensor([[model.config.text_config.bos_token_id]]),
                                            encoder_hidden_states=emb).logits
            mf.save_npy(ref_root / "first_logits.npy", logits[0, -1], np.float32)
        images_meta.append({"image": image_name, "stem": stem, "pixel_values_shape": list(pv.shape),
                            "cases": cases})
    # compact: one case a line (the token lists would take a line per id indented)
    ref_root.mkdir(parents=True, exist_ok=True)
    with open(ref_root / "cases.json", "w", encoding="utf-8") as f:
        f.write('{"model": %s, "images": [\n' % json.dumps(name))
        for i, meta in enumerate(images_meta):
            head = {k: v for k, v in meta.items() if k != "cases"}
            f.write(json.dumps(head, sort_keys=True)[:-1] + ', "cases": [\n')
            f.write(",\n".join(json.dumps(c, sort_keys=True, ensure_ascii=False) for c in meta["cases"]))
            f.write("\n]}" + ("," if i + 1 < len(images_meta) else "") + "\n")
        f.write("]}\n")
    json.load(open(ref_root / "cases.json", encoding="utf-8"))
    # the cases cover both ways a generation ends
    assert stops["eos"] > 0 and stops["length"] > 0, stops
    print(f"  {name}: {sum(len(m['cases']) for m in images_meta)} cases, stops {stops}")


def main() -> None:
    if not mf.IMAGES.is_dir():
        raise SystemExit(f"{mf.IMAGES} is missing: run scripts/make_fixtures.py first")
    for name, spec in SPECS.items():
        print(name)
        make_blip(name, spec)


if __name__ == "__main__":
    main()
