#!/usr/bin/env python3
"""Summarises the JSON reports of one `scripts/bench.sh` run as the rows of BENCHMARKS.md.

    scripts/bench.sh --case all --rounds 2 --lockstep > run.jsonl
    scripts/bench_summary.py run.jsonl [--peak f32=GFLOPS] [--peak bf16=GFLOPS]

Per model case and round: our frame and model-only medians (p95), transformers' standard call
and cheapest equivalent, ours against the cheapest as a ratio of medians and, where both sides
reported their samples, as the median of the per-frame ratios - in a --lockstep run frame i of
ours and iteration i of the reference ran back to back, so each pair met the same moment of a
shared machine, whose speed drifts by 10-30% within minutes - and the share of the compute
floor of each side: the case's FLOPs (below) at that round's best 2048^3 GEMM rate of the same
side, over its model-only time. Rounds are counted per case, in the order bench.sh runs them.

A second table pools each case's paired frames over its rounds: their median ratio with a
distribution-free 95% confidence interval for it (order statistics of the binomial), the middle
half of the ratios, and how many pairs ours won. The interval treats the pairs as independent;
a machine that drifts for minutes makes neighbouring pairs alike, so read it as a lower bound on
the uncertainty.

A third table sets ours against each competitor that ran in the case (bench.sh --sides):
PyTorch's cheapest equivalent, ONNX Runtime f32, OpenVINO f32 and OpenVINO at its default
precision (the precision it picked), pooled over the rounds: each side's frame median, ours vs
it as the ratio of the medians and the median of the paired frames, the rounds ours won (paired
frames in which ours was faster) and the side's largest deviation from PyTorch f32 (per output,
with PyTorch's largest magnitude for scale). CLIP (classify) appears in this table only. With
`--peak PRECISION=GFLOPS` (the machine's peak at that precision over the threads both sides
use: `vlm-bench mac-rates`' one-core rate x 2 FLOPs x the cores), each side's share of the
compute floor: the case's FLOPs at that peak over the side's frame median, at the side's
precision (ours and the exported graphs of ONNX Runtime and OpenVINO at our FLOPs - the export
keeps only the layers the output needs, as we run them - and PyTorch at transformers').

FLOPs, 2 per multiply-add, from the checkpoint's config.json: the transformer layers (q, k, v
and output projections, the MLP, q k^T and the attention-weighted sum of v) and the patch
embedding; the heads and the text tower are left out (they are small, or run once per
vocabulary). CLIPSeg: the vision layers up to the last one its decoder reads
(`hidden_states[extract_layer + 1]`) for ours, all of them for transformers, which runs them.
"""

import json
import math
import statistics
import sys
from pathlib import Path


# The size scripts/bench.sh resizes ViLT's image to (its `vilt_image`), (height, width).
VILT_IMAGE_HW = (384, 576)


def layer_flops(tokens: int, hidden: int, intermediate: int) -> float:
    projections = 4 * hidden * hidden + 2 * hidden * intermediate
    return 2.0 * tokens * projections + 4.0 * tokens * tokens * hidden


def vision_config(model: Path) -> tuple[dict, dict]:
    config = json.loads((model / "config.json").read_text())
    return config, config.get("vision_config", config)


def segment_side(model: Path, vision: dict) -> int:
    """The side CLIPSeg's processor resizes images to (352 in the released checkpoints)."""
    pre = json.loads((model / "preprocessor_config.json").read_text())
    size = pre.get("size", vision["image_size"])
    return size.get("height", size.get("shortest_edge")) if isinstance(size, dict) else size


def case_flops(report: dict) -> tuple[float, float]:
    """(ours, transformers') FLOPs of one frame of the case `report` (ours) describes."""
    model = Path(report["model"])
    config, vision = vision_config(model)
    hidden, inter = vision["hidden_size"], vision["intermediate_size"]
    layers, patch = vision["num_hidden_layers"], vision["patch_size"]
    task = report["task"]
    if task in ("detect", "segment"):
        side = vision["image_size"] if task == "detect" else segment_side(model, vision)
        patches = (side // patch) ** 2
        tokens = patches + 1
        ours = max(config["extract_layers"]) + 1 if task == "segment" else layers
    elif task == "ask":
        # ViLT: the image's patches, [CLS] of the image, the question's tokens
        patches = (VILT_IMAGE_HW[0] // patch) * (VILT_IMAGE_HW[1] // patch)
        tokens = patches + 1 + report["question_tokens"]
        ours = layers
    else:
        raise ValueError(f"no FLOP count for task {task!r}")
    embed = 2.0 * patches * hidden * 3 * patch * patch
    per_layer = layer_flops(tokens, hidden, inter)
    return ours * per_layer + embed, layers * per_layer + embed


def reports(path: str) -> list[dict]:
    lines = Path(path).read_text().splitlines()
    return [json.loads(line) for line in lines if line.lstrip().startswith("{")]


MODEL_NAMES = {"owlvit": "OWL-ViT", "owlv2": "OWLv2", "clipseg": "CLIPSeg", "vilt": "ViLT", "clip": "CLIP"}
# The model tasks whose reports bench.sh groups per case: ours, then the competitors' sides.
MODEL_TASKS = ("detect", "segment", "ask", "classify")
# The competitors, in bench.sh's order: the "side" of a bench_reference.py report (PyTorch's
# reports from before the sides had none).
SIDES = {"torch": "PyTorch, cheapest", "ort": "ONNX Runtime f32", "ov-f32": "OpenVINO f32",
         "ov-default": "OpenVINO default"}


def case_name(report: dict) -> str:
    """E.g. "OWL-ViT B/32 @768, 4 queries" (the model's family, patch size and input size)."""
    config, vision = vision_config(Path(report["model"]))
    family = MODEL_NAMES.get(config.get("model_type"), config.get("model_type", "?"))
    name = f"{family} B/{vision['patch_size']}"
    task = report["task"]
    if task == "detect":
        return f"{name} @{vision['image_size']}, {report['queries']} queries"
    if task == "segment":
        return f"{name} @{segment_side(Path(report['model']), vision)}, {report['prompts']} prompt(s)"
    if task == "classify":
        return f"{name} @{vision['image_size']}, {report['labels']} labels"
    height, width = VILT_IMAGE_HW
    return f"{name} @{height}x{width}, {report['question_tokens']}-token question"


def median_pair_ratio(theirs: dict, ours: dict) -> float | None:
    ratios = pair_ratios(theirs, ours)
    return statistics.median(ratios) if ratios else None


def pair_ratios(theirs: dict, ours: dict) -> list[float]:
    a, b = theirs.get("samples_ms") or [], ours.get("samples_ms") or []
    return [x / y for x, y in zip(a, b)] if len(a) == len(b) else []


def median_interval(values: list[float], level: float = 0.95) -> tuple[float, float] | None:
    """The order statistics (x_(k), x_(n+1-k)) that cover the median with probability `level`
    for independent samples: k the largest with P(Binomial(n, 1/2) < k) <= (1 - level) / 2."""
    n = len(values)
    xs = sorted(values)
    tail, k = 0.0, 0
    while k < n:
        p = math.comb(n, k) / 2.0**n
        if tail + p > (1.0 - level) / 2.0:
            break
        tail += p
        k += 1
    return None if k == 0 else (xs[k - 1], xs[n - k])


def fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def side_of(report: dict) -> str:
    """"ours" for vlm-bench's reports, else the report's side (torch, ort, ov-f32, ov-default)."""
    return "ours" if report["impl"].startswith("vlm_perception") else report.get("side", "torch")


def group_cases(rows: list[dict]) -> dict[str, list[tuple[dict, dict[str, dict]]]]:
    """Per case, per round: ours and the competitors' reports that follow it, by side."""
    cases: dict[str, list[tuple[dict, dict[str, dict]]]] = {}
    i = 0
    while i < len(rows):
        r = rows[i]
        i += 1
        if r.get("task") not in MODEL_TASKS or side_of(r) != "ours":
            continue
        sides = {}
        while i < len(rows) and rows[i].get("task") == r["task"] and side_of(rows[i]) != "ours":
            sides[side_of(rows[i])] = rows[i]
            i += 1
        cases.setdefault(case_name(r), []).append((r, sides))
    return cases


def fmt_deviation(reports: list[dict]) -> str:
    """The largest max_abs_diff per output over the rounds, with PyTorch's scale."""
    if not reports or "max_abs_diff" not in reports[0]:
        return "-"
    parts = []
    for name in reports[0]["max_abs_diff"]:
        diff = max(r["max_abs_diff"][name] for r in reports)
        scale = reports[0]["reference_max_abs"][name]
        parts.append(f"{name} {diff:.1e} (of {scale:.1e})")
    return ", ".join(parts)


def pooled(reports: list[dict], key: str = "median_ms") -> float:
    """A frame statistic over the rounds: the report's own with one round (as the first table
    shows it), else the median (or p95, picked as bench_reference.stats does) of the pooled samples."""
    if len(reports) == 1:
        return reports[0]["frame"][key]
    samples = sorted(x for r in reports for x in r["frame"]["samples_ms"])
    return statistics.median(samples) if key == "median_ms" else samples[round((len(samples) - 1) * 0.95)]


def floor_share(flops: float | None, precision: str, frame_ms: float, peaks: dict[str, float]) -> str:
    """The share of the compute floor of a frame: its FLOPs at the peak, over its time."""
    if flops is None or precision not in peaks:
        return "-"
    return f"{flops / (peaks[precision] * 1e6 * frame_ms):.0%}"


def print_competitors(cases: dict[str, list[tuple[dict, dict[str, dict]]]], peaks: dict[str, float]) -> None:
    """Ours against each competitor, pooled over the rounds (the third table)."""
    print("\n| case | competitor | precision | its frame: median (p95) | ours: frame | ours vs it: "
          "ratio of medians | ours vs it: median of paired frames | rounds won by ours "
          "| max abs diff vs PyTorch f32 | share of the compute floor, ours / it |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, rounds in cases.items():
        ours = pooled([r for r, _ in rounds])
        first = rounds[0][0]
        flops = case_flops(first) if first["task"] != "classify" else (None, None)
        for side, label in SIDES.items():
            theirs = [sides[side] for _, sides in rounds if side in sides]
            if not theirs:
                continue
            median = pooled(theirs)
            ratios = [x for r, sides in rounds if side in sides
                      for x in pair_ratios(sides[side]["frame"], r["frame"])]
            won = f"{sum(x > 1.0 for x in ratios)} of {len(ratios)}" if ratios else "-"
            precision = theirs[0].get("precision", theirs[0].get("dtype", "-"))
            # PyTorch runs every layer; the exported graphs, as ours, only those the output needs
            their_flops = flops[1] if side == "torch" else flops[0]
            shares = (f"{floor_share(flops[0], first.get('dtype', 'f32'), ours, peaks)} / "
                      f"{floor_share(their_flops, precision, median, peaks)}")
            print(
                f"| {name} | {label} | {precision} "
                f"| {median:.0f} ({pooled(theirs, 'p95_ms'):.0f}) | {ours:.0f} "
                f"| {fmt_ratio(median / ours)} "
                f"| {fmt_ratio(statistics.median(ratios) if ratios else None)} | {won} "
                f"| {fmt_deviation(theirs)} | {shares} |"
            )


def main() -> None:
    args, peaks, rest = sys.argv[1:], {}, []
    while args:
        if args[0] == "--peak" and len(args) > 1:
            precision, _, gflops = args[1].partition("=")
            peaks[precision] = float(gflops)
            args = args[2:]
        else:
            rest.append(args.pop(0))
    args = rest
    if len(args) != 1:
        raise SystemExit("usage: bench_summary.py BENCH_OUTPUT.jsonl [--peak PRECISION=GFLOPS]...")
    rows = reports(args[0])
    gemm_rates: dict[str, list[float]] = {"ours": [], "theirs": []}
    for r in rows:
        if r.get("task") == "gemm" and r.get("shape") == [2048, 2048, 2048] and r.get("dtype", "f32") == "f32":
            gemm_rates["ours" if side_of(r) == "ours" else "theirs"].append(r["gflops_best"])
    grouped = group_cases(rows)
    # the first two tables: ours against PyTorch (the cases with a FLOP count)
    cases = {name: [(r, sides["torch"]) for r, sides in rounds if "torch" in sides]
             for name, rounds in grouped.items() if rounds[0][0]["task"] != "classify"}
    cases = {name: rounds for name, rounds in cases.items() if rounds}

    print("| case | round | ours: frame | ours: model only | transformers: standard call "
          "| transformers: cheapest equivalent | ours vs cheapest: medians | ours vs cheapest: "
          "median of paired frames | ours vs standard | share of the compute floor, ours / theirs "
          "| peak RSS, ours / theirs (MiB) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, rounds in cases.items():
        for k, (ours, ref) in enumerate(rounds):
            frame, model = ours["frame"], ours["forward"]
            cheap, std = ref["frame"], ref.get("frame_standard", ref["frame"])
            flops_ours, flops_theirs = case_flops(ours)
            share = "-"
            if k < len(gemm_rates["ours"]) and k < len(gemm_rates["theirs"]):
                s_ours = flops_ours / (gemm_rates["ours"][k] * 1e6 * model["median_ms"])
                s_theirs = flops_theirs / (gemm_rates["theirs"][k] * 1e6 * ref["forward"]["median_ms"])
                share = f"{s_ours:.0%} / {s_theirs:.0%}"
            print(
                f"| {name} | {k + 1} | {frame['median_ms']:.0f} ({frame['p95_ms']:.0f}) "
                f"| {model['median_ms']:.0f} ({model['p95_ms']:.0f}) "
                f"| {std['median_ms']:.0f} ({std['p95_ms']:.0f}) "
                f"| {cheap['median_ms']:.0f} ({cheap['p95_ms']:.0f}) "
                f"| {fmt_ratio(cheap['median_ms'] / frame['median_ms'])} "
                f"| {fmt_ratio(median_pair_ratio(cheap, frame))} "
                f"| {fmt_ratio(std['median_ms'] / frame['median_ms'])} "
                f"| {share} | {ours['peak_rss_mib']:.0f} / {ref['peak_rss_mib']:.0f} |"
            )
    print("\n| case | paired frames (rounds) | ours vs cheapest: median of paired frames "
          "| 95% interval of that median | middle half of the ratios | pairs ours was faster |")
    print("|---|---|---|---|---|---|")
    for name, rounds in cases.items():
        ratios = [x for ours, ref in rounds for x in pair_ratios(ref["frame"], ours["frame"])]
        if not ratios:
            continue
        interval = median_interval(ratios)
        quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
        print(
            f"| {name} | {len(ratios)} ({len(rounds)}) | {fmt_ratio(statistics.median(ratios))} "
            f"| {'-' if interval is None else f'{interval[0]:.2f}-{interval[1]:.2f}x'} "
            f"| {quartiles[0]:.2f}-{quartiles[2]:.2f}x "
            f"| {sum(x > 1.0 for x in ratios)} of {len(ratios)} |"
        )
    for side in ("ours", "theirs"):
        rates = ", ".join(f"{x:.0f}" for x in gemm_rates[side]) or "-"
        print(f"\nBest 2048^3 GEMM rate per round, {side}: {rates} GFLOP/s", end="")
    print()
    print_competitors(grouped, peaks)


if __name__ == "__main__":
    main()
