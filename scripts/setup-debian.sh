#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine lacks to build and test chatspace-mpi: OpenMPI, libclang (for the
# MPI bindings), a C toolchain, Python with venv/pip (model download, pyarrow checks), Slurm + munge (the
# local test clusters of scripts/slurm-cluster.sh and, with iproute2 and util-linux's nsenter/unshare,
# scripts/multinode-cluster.sh) and a Rust toolchain with rustfmt and clippy.
set -euo pipefail
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
pkgs="openmpi-bin libopenmpi-dev libclang-dev clang pkg-config build-essential python3 python3-venv python3-pip curl ca-certificates procps slurmctld slurmd slurm-client munge iproute2 util-linux"
missing=""
for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
fi
if ! command -v cargo >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/cargo" ]; then
  curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain stable --component rustfmt,clippy
fi
# CI checks formatting and lints: a toolchain installed without them gets them.
export PATH="$HOME/.cargo/bin:$PATH"
if command -v rustup >/dev/null 2>&1; then
  for c in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
  done
fi
