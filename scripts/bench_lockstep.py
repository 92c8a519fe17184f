#!/usr/bin/env python3
"""Runs benchmark commands frame for frame in lock step, so that all meet the same machine.

    bench_lockstep.py CMD... [:: CMD...]...

Each command (a `vlm-bench` model case; a `bench_reference.py` model case, PyTorch or, with
--runtime, ONNX Runtime / OpenVINO) is started with `--lockstep` added: it loads its model,
prints "ready", then runs one frame (or one reference iteration) per line it reads on stdin and
prints "step" after it. All are loaded first, then their frames take turns - the first
command's, the second's, ..., the first's again - warm-up ones included, so that the speed drift
of a shared machine (10-30% within minutes here) falls on every side alike instead of on
whichever ran in the slow minute. Their JSON reports are printed in the order of the commands,
as scripts/bench.sh prints a sequential run.
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


def commands(argv: list[str]) -> list[list[str]]:
    """The commands in `argv`, split at each SEPARATOR; none of them empty."""
    cmds: list[list[str]] = [[]]
    for arg in argv:
        if arg == SEPARATOR:
            cmds.append([])
        else:
            cmds[-1].append(arg)
    if any(not cmd for cmd in cmds):
        raise SystemExit(f"usage: bench_lockstep.py CMD... [{SEPARATOR} CMD...]...")
    return cmds


def main() -> None:
    procs = []
    try:
        for cmd in commands(sys.argv[1:]):
            procs.append(start(cmd))
    except SystemExit:
        for proc in procs:
            proc.kill()
        raise
    # frames take turns until every command has run its last; then the first line of each report
    heads: list[str | None] = [None] * len(procs)
    while None in heads:
        for i, proc in enumerate(procs):
            if heads[i] is None:
                heads[i] = step(proc)
    for proc, head in zip(procs, heads):
        sys.stdout.write(finish(proc, head))


if __name__ == "__main__":
    main()
