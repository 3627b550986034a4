#!/usr/bin/env bash
# The test command: unit tests, the parity test on the real all-MiniLM-L6-v2 weights, and end-to-end runs
# under real mpirun (1, 2, 4, 6 ranks). Installs missing Debian packages first (scripts/setup-debian.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-debian.sh
source scripts/env.sh
scripts/fetch-model.sh
export CHATSPACE_PYTHON="$(chatspace_python "$PWD")"
cargo test --locked -- --test-threads=2 "$@"
