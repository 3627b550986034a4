#!/usr/bin/env bash
# The test command: unit tests, the parity test on the real all-MiniLM-L6-v2 weights, end-to-end runs under
# real mpirun (1, 2, 4, 6 ranks), preemption, Hub cache and Slurm tests (one node, and an emulated 3-node
# cluster), then a `cargo check` of the CUDA build. Installs missing Debian packages first (scripts/setup-debian.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-debian.sh
source scripts/env.sh
scripts/fetch-model.sh
export CHATSPACE_PYTHON="$(chatspace_python "$PWD")"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --locked --lib --bins --tests -- --test-threads=2 "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
# One closing line over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
# The CUDA build must keep compiling: `cargo check --features cuda` with the pinned nvcc from PyPI (compiles
# candle's kernels to PTX; no GPU or CUDA library needed). Skipped when tests were filtered or failed.
if [ "$rc" = 0 ] && [ "$#" = 0 ] && [ -z "${SKIP_CUDA_CHECK:-}" ]; then
  set +e
  scripts/build-cuda.sh --check > "$log" 2>&1
  rc=$?
  set -e
  tail -n 3 "$log"
  echo "cuda check (cargo check --features cuda): $([ "$rc" = 0 ] && echo ok || echo FAILED)"
fi
exit "$rc"
