#!/usr/bin/env python3
"""Two builds of vlm-bench on the same case, frame for frame: is a kernel change faster?

    scripts/bench_ab.py OLD_VLM_BENCH NEW_VLM_BENCH ITERS VLM_BENCH_ARGS...
    scripts/bench_ab.py /tmp/old/target/release/vlm-bench target/release/vlm-bench 60 \\
        detect --model target/bench/owlvit-random-safetensors \\
        --image tests/fixtures/images/chelsea.png --query "a photo of a cat"

Both binaries run the case with `--lockstep` (scripts/bench_lockstep.py's handshake) and take
turns, one frame each, the first of each pair alternating, so that each pair meets the same
moment of a shared machine whose speed drifts by 10-30% within minutes. Prints the medians and
the median of the per-pair ratios (old over new: above 1 means the new build is faster), and
how many pairs the new build won. BENCHMARKS.md's side-by-side figures for a change come from
this.
"""

import json
import statistics
import sys

from bench_lockstep import finish, start, step

WARMUP = "2"


def main() -> None:
    if len(sys.argv) < 5:
        raise SystemExit("usage: bench_ab.py OLD_VLM_BENCH NEW_VLM_BENCH ITERS VLM_BENCH_ARGS...")
    old, new, iters, args = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    cmd = args + ["--warmup", WARMUP, "--iters", iters]
    procs = [start([old] + cmd), start([new] + cmd)]
    heads: list[str | None] = [None, None]
    turn = 0
    while None in heads:
        order = procs if turn % 2 else procs[::-1]
        for proc in order:
            i = procs.index(proc)
            if heads[i] is None:
                heads[i] = step(proc)
        turn += 1
    reports = [json.loads(finish(p, h).strip().splitlines()[-1]) for p, h in zip(procs, heads)]
    old_ms, new_ms = (r["frame"]["samples_ms"] for r in reports)
    ratios = [a / b for a, b in zip(old_ms, new_ms)]
    print(
        f"{args[0]}: old {statistics.median(old_ms):.1f} ms, new {statistics.median(new_ms):.1f} ms "
        f"a frame; old / new, median of {len(ratios)} pairs {statistics.median(ratios):.3f}; "
        f"the new build faster in {sum(r > 1.0 for r in ratios)} of {len(ratios)}"
    )


if __name__ == "__main__":
    main()
