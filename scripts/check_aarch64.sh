#!/usr/bin/env bash
# The Jetson's CPU (aarch64-unknown-linux-gnu), checked on an x86_64 Debian 12 machine as root:
#   1. setup: scripts/setup_aarch64.sh (idempotent): Debian's rustc-web 1.96 with the aarch64
#      std, the cross gcc/libc, qemu-user-static and its binfmt_misc registration;
#   2. `cargo check --target aarch64-unknown-linux-gnu --lib --bins`;
#   3. a release build of the CLI and of the parity tests of one model of each family (OWL-ViT
#      and OWLv2 detection, CLIPSeg segmentation, ViLT VQA) for aarch64;
#   4. glibc: no symbol of the CLI binary needs a glibc newer than 2.35 (JetPack 6, Ubuntu
#      22.04); the symbols that need more than 2.31 (JetPack 5, Ubuntu 20.04) are listed;
#   5. those parity tests under qemu-user-static: the portable (non-AVX-512) kernels and the
#      aarch64 CLI against the same references and tolerances as on x86_64.
# Prints the time of each step; exits non-zero as soon as one fails.
# Builds in target-aarch64/ (CARGO_TARGET_DIR to override), apart from the x86_64 target/.
# AARCH64_TESTS overrides the test targets (space-separated), AARCH64_STEPS the steps to run
# (default "setup check build glibc test"); AARCH64_SKIP_CLI_TESTS=1 takes the path of a machine
# without binfmt_misc; AARCH64_MAX_GLIBC=2.31 asks the glibc step for JetPack 5 (it fails today).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target-aarch64}"
target=aarch64-unknown-linux-gnu
tests="${AARCH64_TESTS:-parity_owlvit parity_owlv2 parity_clipseg parity_vilt}"
steps="${AARCH64_STEPS:-setup check build glibc test}"
max_glibc="${AARCH64_MAX_GLIBC:-2.35}"
test_args=()
for t in $tests; do test_args+=(--test "$t"); done

# A step runs as a plain command (not inside `if`, where bash ignores `set -e` in functions),
# so any failing command in it ends the script; the EXIT trap then names the step.
summary=()
current=""
envfile="$(mktemp)"
on_exit() {
  local rc=$?
  rm -f "$envfile"
  if [ -n "$current" ]; then
    echo "== aarch64 $current: FAILED (exit $rc) after $((SECONDS - step_start)) s" >&2
    [ "${#summary[@]}" -eq 0 ] || printf '%s\n' "${summary[@]}" >&2
    [ "$rc" -ne 0 ] || rc=1
  fi
  exit "$rc"
}
trap on_exit EXIT
run_step() {
  current="$1"
  shift
  echo "== aarch64 $current"
  step_start=$SECONDS
  "$@"
  summary+=("$(printf '%-6s ok %6d s' "$current" $((SECONDS - step_start)))")
  echo "== aarch64 $current: ok in $((SECONDS - step_start)) s"
  current=""
}
wanted() { [[ " $steps " == *" $1 "* ]]; }

setup() { bash scripts/setup_aarch64.sh > "$envfile"; }
if wanted setup; then
  run_step setup setup
else
  setup
fi
# shellcheck disable=SC1090
source "$envfile"

check() { cargo check --target "$target" --lib --bins; }
build() {
  # Builds the CLI (CARGO_BIN_EXE_vlm-perception of the tests) with the test binaries.
  cargo test --release --target "$target" "${test_args[@]}" --no-run
}

bin="$CARGO_TARGET_DIR/$target/release/vlm-perception"
glibc() {
  local versions top newer
  [ -x "$bin" ] || { echo "no $bin: run the build step" >&2; return 1; }
  versions="$(aarch64-linux-gnu-objdump -T "$bin" | grep -oE 'GLIBC_[0-9]+(\.[0-9]+)+' | sort -uV)"
  top="$(tail -1 <<<"$versions")"
  echo "glibc symbol versions needed by $(basename "$bin"): $(tr '\n' ' ' <<<"$versions")"
  echo "highest: $top, allowed: GLIBC_$max_glibc (JetPack 6 / Ubuntu 22.04 has 2.35, JetPack 5 / Ubuntu 20.04 2.31)"
  newer="$(aarch64-linux-gnu-objdump -T "$bin" | awk '/GLIBC_/ {for (i=1;i<=NF;i++) if ($i ~ /GLIBC_/) {v=$i; gsub(/[()]/,"",v); print v, $NF}}' \
    | awk '{split(substr($1,7),p,"."); if (p[1]>2 || (p[1]==2 && p[2]>31)) print "  " $1 " " $2}' | sort -uV)"
  if [ -n "$newer" ]; then
    echo "symbols newer than GLIBC_2.31 (JetPack 5 / Ubuntu 20.04):"
    echo "$newer"
  fi
  if [ "$(printf '%s\n' "GLIBC_$max_glibc" "$top" | sort -V | tail -1)" != "GLIBC_$max_glibc" ]; then
    echo "$top > GLIBC_$max_glibc: the binary would not run with glibc $max_glibc" >&2
    return 1
  fi
}

# The names of the #[test] functions in tests/$1.rs whose bodies mention a CLI helper (cli(,
# cli_json(, ask_cli(, ...): they exec the aarch64 binary, which needs binfmt_misc.
cli_tests() {
  awk '/#\[test\]/ {t=1; next}
       t && /^fn / {name=$2; sub(/\(.*/, "", name); t=0; next}
       /^}/ {if (name != "" && uses) print name; name=""; uses=0; next}
       name != "" && /(^|[^A-Za-z])cli[_(]|_cli\(/ {uses=1}' "tests/$1.rs"
}
# The aarch64 CLI run under qemu directly (no binfmt_misc needed) on one OWL-ViT fixture at the
# model's input size, against transformers' post-processed detections (tolerances of
# tests/parity_owlvit.rs: scores 1e-4, boxes 0.01 px).
cli_vs_reference() {
  local model=owlvit-tiny-p32-bin stem=coffee_96x96 ref args=() q qs
  ref="tests/fixtures/reference/$model/$stem"
  qs="$(python3 -c 'import json,sys; print("\n".join(json.load(open(sys.argv[1]))["queries"]))' "$ref/meta.json")"
  mapfile -t qs <<<"$qs"
  for q in "${qs[@]}"; do args+=(--query "$q"); done
  qemu-aarch64-static -L /usr/aarch64-linux-gnu "$bin" detect --model "tests/fixtures/models/$model" \
    --image "tests/fixtures/images/$stem.png" --threshold 0 --json "${args[@]}" > "$CARGO_TARGET_DIR/cli_$stem.json"
  python3 - "$CARGO_TARGET_DIR/cli_$stem.json" "$ref/post_processed.json" <<'PY'
import json, sys
ours = json.load(open(sys.argv[1]))["detections"]
ref = json.load(open(sys.argv[2]))["threshold_0"]
theirs = sorted(zip(ref["scores"], ref["labels"], ref["boxes"]), key=lambda t: -t[0])
assert len(ours) == len(theirs), f"{len(ours)} detections, transformers {len(theirs)}"
ds = max(abs(d["score"] - t[0]) for d, t in zip(ours, theirs))
db = max(abs(a - b) for d, t in zip(ours, theirs) for a, b in zip(d["bbox"], t[2]))
assert all(d["query_index"] == t[1] for d, t in zip(ours, theirs)), "query indices differ"
assert ds < 1e-4 and db < 0.01, f"score diff {ds}, box diff {db} px"
print(f"aarch64 CLI under qemu vs transformers: {len(ours)} detections, score diff {ds:.2e}, box diff {db:.2e} px")
PY
}
test_qemu() {
  if [ "${VLM_AARCH64_BINFMT:-no}" = yes ] && [ -z "${AARCH64_SKIP_CLI_TESTS:-}" ]; then
    cargo test --release --target "$target" "${test_args[@]}"
  else
    # Without binfmt_misc (no root, or a kernel that refuses it) the tests cannot exec the
    # aarch64 CLI: run the library-level tests; cli_vs_reference below still runs the CLI.
    echo "binfmt_misc has no qemu-aarch64: skipping the tests that run the CLI" >&2
    local t n skip=()
    for t in $tests; do
      for n in $(cli_tests "$t"); do skip+=(--skip "$n"); done
    done
    cargo test --release --target "$target" "${test_args[@]}" -- "${skip[@]}"
  fi
  cli_vs_reference
}

if wanted check; then run_step check check; fi
if wanted build; then run_step build build; fi
if wanted glibc; then run_step glibc glibc; fi
if wanted test; then run_step test test_qemu; fi

echo "== aarch64 summary (seconds, this machine)"
printf '%s\n' "${summary[@]}"
