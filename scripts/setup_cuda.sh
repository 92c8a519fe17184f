#!/usr/bin/env bash
# A CUDA 13.0 toolkit from NVIDIA's PyPI wheels, laid out as a CUDA_HOME that candle's `cuda`
# feature builds against, on a machine without a GPU (see ../shared/cuda.md in this workplace):
#   source <(scripts/setup_cuda.sh)   # prints the exports
#   cargo build --release --features cuda
# Pinned to 13.0.x: driver 580 cannot JIT newer PTX, and cudarc 0.19 does not know CUDA 13.5.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${CUDA_VENV:-$root/.cuda}"
home="$venv/cuda_home"
if [ ! -x "$venv/bin/python" ]; then python3 -m venv "$venv"; fi
if [ ! -f "$venv/.installed" ]; then
  "$venv/bin/pip" install -q --disable-pip-version-check \
    nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cublas==13.0.2.14 \
    nvidia-curand==10.4.0.35 nvidia-cuda-nvrtc==13.0.88 >&2
  touch "$venv/.installed"
fi
cu13="$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')"
if [ ! -f "$home/lib64/stubs/libcuda.so" ]; then
  mkdir -p "$home/lib64/stubs"
  for d in bin include nvvm; do ln -sfn "$cu13/$d" "$home/$d"; done
  for f in "$cu13"/lib/*; do ln -sf "$f" "$home/lib64/$(basename "$f")"; done
  ( cd "$home/lib64"
    for l in cudart cublas cublasLt nvrtc; do ln -sf "lib$l.so.13" "lib$l.so"; done
    ln -sf libcurand.so.10 libcurand.so )
  # libcuda ships with the driver: link against a stub exporting every cu* symbol cudarc binds;
  # the GPU machine's driver provides the real libcuda.so.1 at run time.
  # cudarc's sources: the version Cargo.lock pins, fetched first on a clean clone.
  cudarc="$(grep -A1 '^name = "cudarc"$' "$root/Cargo.lock" | sed -n 's/^version = "\(.*\)"$/\1/p')"
  sys_rs() { ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"cudarc-$cudarc"/src/driver/sys/mod.rs 2>/dev/null | head -1 || true; }
  if [ -z "$(sys_rs)" ]; then (cd "$root" && cargo fetch --locked >&2); fi
  sys_rs="$(sys_rs)"
  [ -n "$sys_rs" ] || { echo "setup_cuda: cudarc $cudarc sources not found after cargo fetch" >&2; exit 1; }
  grep -oE 'pub unsafe fn cu[A-Za-z0-9_]+' "$sys_rs" | awk '{print $4}' | sort -u \
    | sed 's/.*/void &(void) {}/' > "$home/lib64/stubs/libcuda_stub.c"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$home/lib64/stubs/libcuda.so" "$home/lib64/stubs/libcuda_stub.c"
  ln -sf libcuda.so "$home/lib64/stubs/libcuda.so.1"
fi
cat <<ENV
export CUDA_HOME="$home"
export CUDA_PATH="$home"
export PATH="$home/bin:\$PATH"
export LIBRARY_PATH="$home/lib64:$home/lib64/stubs:\${LIBRARY_PATH:-}"
export CUDA_COMPUTE_CAP="\${CUDA_COMPUTE_CAP:-90}"
ENV
