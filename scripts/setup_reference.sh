#!/usr/bin/env bash
# Python reference environment (transformers + PyTorch, CPU) used to generate the parity
# fixtures (scripts/make_fixtures.py) and to run the side-by-side benchmark (scripts/bench_reference.py),
# with the benchmark's other CPU runtimes: ONNX Runtime and OpenVINO (scripts/bench_runtimes.py),
# all pinned in scripts/requirements-reference.txt.
# Not needed to build or test the package: the fixtures are committed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${REFERENCE_VENV:-$root/.venv-ref}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q --disable-pip-version-check -r "$root/scripts/requirements-reference.txt"
echo "$venv"
