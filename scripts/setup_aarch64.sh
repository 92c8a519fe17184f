#!/usr/bin/env bash
# A cross toolchain for the Jetson's CPU (aarch64-unknown-linux-gnu) on a Debian 12 (bookworm)
# x86_64 machine, as root, idempotent:
#   source <(scripts/setup_aarch64.sh)   # prints the exports
#   cargo check --target aarch64-unknown-linux-gnu --lib --bins
#
# - Debian's cross gcc and libc (glibc 2.36) for linking and for the C parts of two build scripts
#   (onig_sys, ring), and qemu-user-static to run the aarch64 binaries here.
# - The aarch64 standard library: rustup cannot download one here, so Debian's rustc-web 1.96
#   (bookworm-security) with its std for x86_64 and for aarch64 (libstd-rust-web-dev:arm64), and
#   the LLVM it is linked against. These are unpacked with `dpkg-deb -x` into .aarch64/root
#   (sysroot .aarch64/root/usr: lib/rustlib/{x86_64,aarch64}-unknown-linux-gnu side by side),
#   not installed: installing them would upgrade system packages. cargo stays rustup's; the
#   exports point RUSTC at a wrapper around the unpacked rustc.
#
# Everything it prints on stdout is shell; progress goes to stderr.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
home="${AARCH64_HOME:-$root/.aarch64}"
rust_minor="${AARCH64_RUSTC_MINOR:-1.96}"
log() { echo "setup_aarch64: $*" >&2; }

if [ "$(id -u)" != 0 ]; then
  log "must run as root (apt-get)"
  exit 1
fi

# 1. apt: the arm64 architecture (for libstd-rust-web-dev:arm64), cross gcc/libc, qemu.
need_update=0
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  dpkg --add-architecture arm64
  need_update=1
fi
apt_pkgs=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "$need_update" = 1 ] || [ "${#missing[@]}" -gt 0 ] || [ ! -f "$home/.unpacked" ]; then
  log "apt-get update"
  apt-get update -qq >&2
fi
if [ "${#missing[@]}" -gt 0 ]; then
  log "apt-get install ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

# 2. rustc-web and its std for both targets, from bookworm-security, unpacked.
#    (Which version apt offers: `apt-cache policy rustc-web libstd-rust-web-dev:arm64`.)
#    Skipped once unpacked (.aarch64/.unpacked names the versions); AARCH64_REFRESH=1 looks again.
if [ ! -f "$home/.unpacked" ] || [ -n "${AARCH64_REFRESH:-}" ]; then
  debs=(
    "rustc-web:amd64"
    "libstd-rust-web-$rust_minor:amd64"
    "libstd-rust-web-dev:amd64"
    "libstd-rust-web-dev:arm64"
  )
  candidate() { apt-cache policy "$1" | awk '/Candidate:/ {print $2}'; }
  rustc_ver="$(candidate rustc-web:amd64)"
  case "$rustc_ver" in
    "$rust_minor".*) ;;
    *) log "apt offers rustc-web '$rustc_ver', not $rust_minor (is bookworm-security in the sources?)"; exit 1 ;;
  esac
  want=""
  for d in "${debs[@]}"; do want+="$d=$(candidate "$d") "; done
  # The LLVM that librustc_driver links against (libLLVM.so.N): libllvmN from the same suite.
  llvm_dep="$(apt-cache show "libstd-rust-web-$rust_minor=$rustc_ver" | grep -E '^Depends:' \
    | grep -oE 'libllvm[0-9]+' | sort -u | head -1)"
  [ -n "$llvm_dep" ] || { log "cannot find the libllvm that rustc-web $rust_minor depends on"; exit 1; }
  want+="$llvm_dep:amd64=$(candidate "$llvm_dep:amd64")"
  if [ ! -f "$home/.unpacked" ] || [ "$(cat "$home/.unpacked")" != "$want" ]; then
    log "downloading and unpacking: $want"
    rm -rf "$home/root" "$home/debs" "$home/.unpacked"
    mkdir -p "$home/debs" "$home/root"
    # apt-get download as root into a folder _apt cannot write falls back to unsandboxed (a
    # warning); let _apt write there instead.
    chown _apt "$home/debs" 2>/dev/null || true
    # shellcheck disable=SC2086
    (cd "$home/debs" && apt-get download -qq $want >&2)
    for f in "$home"/debs/*.deb; do dpkg-deb -x "$f" "$home/root"; done
    rm -rf "$home/debs"
    echo "$want" > "$home/.unpacked"
  fi
fi

# 3. A rustc that finds librustc_driver and libLLVM in the unpacked tree. Its sysroot is
#    found from the binary's path: $home/root/usr, with lib/rustlib/<target>/lib for both targets.
#    bash, not sh: dash drops variables whose names are not identifiers from the environment,
#    and cargo passes `CARGO_BIN_EXE_vlm-perception` to the integration tests' rustc that way.
mkdir -p "$home/bin"
cat > "$home/bin/rustc" <<EOF
#!/bin/bash
LD_LIBRARY_PATH="$home/root/usr/lib/x86_64-linux-gnu\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$home/root/usr/bin/rustc" "\$@"
EOF
chmod +x "$home/bin/rustc"
rustc_vv="$("$home/bin/rustc" -vV)" || { log "the unpacked rustc does not run"; exit 1; }
grep -qx "release: $rust_minor\.[0-9]*" <<<"$rustc_vv" || { log "the unpacked rustc is not $rust_minor: $rustc_vv"; exit 1; }
for t in x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu; do
  ls "$home/root/usr/lib/rustlib/$t/lib/"libstd-*.rlib >/dev/null 2>&1 \
    || { log "no std for $t in $home/root/usr/lib/rustlib"; exit 1; }
done
# 4. binfmt_misc: the kernel runs aarch64 ELF files through qemu, so that a test can exec the
#    aarch64 CLI (CARGO_BIN_EXE_vlm-perception) as a subprocess. Debian's qemu-user-static ships
#    the registration (/usr/lib/binfmt.d/qemu-aarch64.conf, flag F: the interpreter is opened
#    now, so it also works in containers); nothing here runs systemd-binfmt, so register it by
#    hand. The loader and libraries come from QEMU_LD_PREFIX=/usr/aarch64-linux-gnu (exported
#    below). Not fatal: scripts/check_aarch64.sh skips the CLI tests where this is unavailable.
#    QEMU_CPU (the runner's and binfmt's qemu read it) is a Cortex-A76 by default, the closest
#    of this qemu's CPUs to the Jetson Orin's Cortex-A78AE (Armv8.2-A with fp16, dotprod, rcpc,
#    LSE; no SVE), so that run-time feature detection (the gemm crate's) picks what an Orin picks;
#    qemu's default `max` would offer SVE and later extensions the Orin lacks.
bfm=/proc/sys/fs/binfmt_misc
if [ ! -f "$bfm/status" ]; then
  mount -t binfmt_misc binfmt_misc "$bfm" 2>/dev/null || log "warning: cannot mount binfmt_misc"
fi
if [ -f "$bfm/register" ] && [ ! -e "$bfm/qemu-aarch64" ]; then
  conf=/usr/lib/binfmt.d/qemu-aarch64.conf
  if [ -f "$conf" ] && grep -v '^#' "$conf" > "$bfm/register" 2>/dev/null; then
    log "registered qemu-aarch64 with binfmt_misc"
  else
    log "warning: cannot register qemu-aarch64 with binfmt_misc"
  fi
fi
if grep -qx enabled "$bfm/qemu-aarch64" 2>/dev/null; then binfmt=yes; else binfmt=no; fi

log "ready: rustc $(sed -n 's/^release: //p' <<<"$rustc_vv"), std for x86_64 and aarch64, $(aarch64-linux-gnu-gcc -dumpfullversion 2>/dev/null || aarch64-linux-gnu-gcc -dumpversion) (aarch64-linux-gnu-gcc), $(qemu-aarch64-static --version | sed -n 1p), binfmt_misc: $binfmt"

cat <<ENV
export RUSTC="$home/bin/rustc"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64-static -L /usr/aarch64-linux-gnu"
export QEMU_LD_PREFIX=/usr/aarch64-linux-gnu
export QEMU_CPU="\${QEMU_CPU:-cortex-a76}"
export VLM_AARCH64_BINFMT=$binfmt
ENV
