#!/usr/bin/env python3
"""Runs two benchmark commands frame for frame in lock step, so that both meet the same machine.

    bench_lockstep.py OURS_CMD... :: REFERENCE_CMD...

Each command (a `vlm-bench` model case, a `bench_reference.py` model case) is started with
`--lockstep` added: it loads its model, prints "ready", then runs one frame (or one reference
iteration: the standard call and the cheapest path) per line it reads on stdin and prints "step"
after it. Both are loaded first, then their frames alternate - ours, the reference's, ours... -
warm-up ones included, so that the speed drift of a shared machine (10-30% within minutes here)
falls on both sides alike instead of on whichever ran in the slow minute. Their JSON reports are
printed as the commands print them, ours first, as scripts/bench.sh prints a sequential run.
"""

import subprocess
import sys

SEPARATOR = "::"


def start(cmd: list[str]) -> subprocess.Popen:
    proc = subprocess.Popen(cmd + ["--lockstep"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        raise SystemExit(f"bench_lockstep: {cmd[0]} did not start (printed {line!r}, exit status {proc.wait()})")
    return proc


def step(proc: subprocess.Popen) -> str | None:
    """One frame of `proc`: None, or, once it has run its last frame, the first line of its report
    (empty if it had already exited)."""
    try:
        proc.stdin.write("\n")
        proc.stdin.flush()
    except BrokenPipeError:
        return ""
    line = proc.stdout.readline()
    return None if line.strip() == "step" else line


def finish(proc: subprocess.Popen, head: str) -> str:
    """The report of `proc`, whose first line `head` has been read already."""
    try:
        proc.stdin.close()
    except BrokenPipeError:  # its last go-ahead, written after it had left its frame loop
        pass
    report = head + proc.stdout.read()
    if proc.wait() != 0:
        raise SystemExit(f"bench_lockstep: {proc.args[0]} failed (exit status {proc.returncode})")
    return report


def main() -> None:
    argv = sys.argv[1:]
    if SEPARATOR not in argv or argv.index(SEPARATOR) in (0, len(argv) - 1):
        raise SystemExit(f"usage: bench_lockstep.py OURS_CMD... {SEPARATOR} REFERENCE_CMD...")
    split = argv.index(SEPARATOR)
    procs = [start(argv[:split]), start(argv[split + 1:])]
    # frames alternate until both have run their last; then the first line of each report
    heads: list[str | None] = [None, None]
    while None in heads:
        for i, proc in enumerate(procs):
            if heads[i] is None:
                heads[i] = step(proc)
    for proc, head in zip(procs, heads):
        sys.stdout.write(finish(proc, head))


if __name__ == "__main__":
    main()
