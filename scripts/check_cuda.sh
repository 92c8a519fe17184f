#!/usr/bin/env bash
# The `cuda` feature compiles, on a machine without a GPU (issue 25, item 2):
#   scripts/check_cuda.sh
# For each compute capability (CUDA_CAPS, default "90 87": H100/H200 = sm_90a, Jetson Orin = sm_87):
#   cargo check  --release --features cuda --all-targets
#   (the PTX candle-kernels' build script wrote must say `.target sm_<cap>`, and the cubins of its
#    static kernel library libmoe.a must be sm_<cap>)
#   cargo clippy --release --features cuda --all-targets -- -D warnings
# and prints the time of each step; the first failure stops it with a non-zero exit.
#
# The toolkit is CUDA 13.0 from NVIDIA's PyPI wheels, laid out in .cuda/ by scripts/setup_cuda.sh
# (idempotent; ~1.2 GB, under a minute the first time). The build uses its own target dir,
# target-cuda/ (CUDA_TARGET_DIR overrides it), never target/. One target dir serves both
# capabilities: cudaforge, candle-kernels' kernel builder, emits
# `cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP`, so changing the capability re-runs only that build
# script (the kernels, a few minutes) and re-checks candle-core, candle-nn and this crate, instead
# of a second copy of every dependency. --release: in check mode it costs the same as debug and
# checks what ships (and what scripts/test.sh lints for the CPU build).
#
# Knobs: CUDA_CAPS="90 87"; CUDA_TARGET_DIR; CUDAFORGE_THREADS (parallel nvcc jobs, default 2);
# CHECK_CUDA_ROS=1 also checks `--features ros,cuda` with the last capability (runs
# scripts/setup_ros.sh first, which is slow the first time; r2r's build then adds several minutes).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

t_all=$(date +%s)
log() { printf '[check_cuda] %s\n' "$*" >&2; }
die() { printf '[check_cuda] FAILED: %s\n' "$*" >&2; exit 1; }
step() { # step NAME COMMAND...: runs COMMAND, prints its time, dies if it fails
  local name="$1" t0 rc=0
  shift
  log "== $name"
  t0=$(date +%s)
  "$@" || rc=$?
  log "   $name: $(( $(date +%s) - t0 )) s (exit $rc)"
  [ "$rc" -eq 0 ] || die "$name (exit $rc)"
}

rustup component add clippy >/dev/null 2>&1 || true

setup_cuda() { exports="$(bash scripts/setup_cuda.sh)"; }
step "setup_cuda.sh" setup_cuda
eval "$exports"
export CARGO_TARGET_DIR="${CUDA_TARGET_DIR:-$root/target-cuda}"
export CUDAFORGE_THREADS="${CUDAFORGE_THREADS:-2}"
log "CUDA_HOME=$CUDA_HOME CARGO_TARGET_DIR=$CARGO_TARGET_DIR ($(nvcc --version | tail -1))"

# The kernels candle-kernels' build script compiled last: every .ptx must target sm_<cap>
# (sm_90a for 90: cudaforge adds the `a`), and so must every cubin in its libmoe.a.
kernels_out() { ls -td "$CARGO_TARGET_DIR"/release/build/candle-kernels-*/out 2>/dev/null | head -1 || true; }
check_arch() {
  local cap="$1" out bad n archs
  out="$(kernels_out)"
  [ -n "$out" ] && [ -f "$out/ptx.rs" ] || { log "no candle-kernels build output"; return 1; }
  n=$(find "$out" -maxdepth 1 -name '*.ptx' | wc -l)
  [ "$n" -gt 0 ] || { log "no .ptx in $out"; return 1; }
  bad=$(grep -L -E "^\.target sm_${cap}a?\b" "$out"/*.ptx || true)
  [ -z "$bad" ] || { log "not built for sm_$cap: $bad"; return 1; }
  log "   $n PTX files in $out: $(grep -h '^\.target' "$out"/*.ptx | sort | uniq -c | xargs)"
  [ -f "$out/libmoe.a" ] || { log "no libmoe.a in $out"; return 1; }
  archs=$(strings -a "$out/libmoe.a" | grep -o -E '\bsm_[0-9]+a?\b' | sort | uniq -c | xargs)
  [ -n "$archs" ] && [ -z "$(strings -a "$out/libmoe.a" | grep -o -E '\bsm_[0-9]+a?\b' | grep -v -E "^sm_${cap}a?$")" ] \
    || { log "libmoe.a not (only) built for sm_$cap: $archs"; return 1; }
  log "   libmoe.a cubins: $archs"
}

caps="${CUDA_CAPS:-90 87}"
# A rerun starts with the capability the kernels were last built for: one kernel rebuild, not two.
if [ -z "${CUDA_CAPS:-}" ] && [ -n "$(kernels_out)" ] \
  && grep -q -E '^\.target sm_87\b' "$(kernels_out)"/unary.ptx 2>/dev/null; then
  caps="87 90"
fi
for cap in $caps; do
  export CUDA_COMPUTE_CAP="$cap"
  step "cargo check --features cuda --all-targets (CUDA_COMPUTE_CAP=$cap)" \
    cargo check --release --features cuda --all-targets --quiet
  step "PTX for sm_$cap" check_arch "$cap"
  step "cargo clippy --features cuda --all-targets -D warnings (CUDA_COMPUTE_CAP=$cap)" \
    cargo clippy --release --features cuda --all-targets --quiet -- -D warnings
done

if [ "${CHECK_CUDA_ROS:-0}" = 1 ]; then
  step "setup_ros.sh" bash scripts/setup_ros.sh
  set +u
  # shellcheck source=/dev/null
  source .ros/env.sh
  set -u
  step "cargo clippy --features ros,cuda --all-targets -D warnings (CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP)" \
    cargo clippy --release --features ros,cuda --all-targets --quiet -- -D warnings
fi

log "all passed (capabilities: $caps) in $(( $(date +%s) - t_all )) s"
