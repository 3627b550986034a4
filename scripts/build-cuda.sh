#!/usr/bin/env bash
# CUDA encoders (cargo feature `cuda`) with nvcc from PyPI, pinned to CUDA 13.0: the lent H100's driver (580)
# JIT-compiles PTX ISA <= 9.0, and nvcc 13.1+ emits newer PTX that it rejects. The wheels (~100 MiB) are kept
# under target/cuda-toolchain; the build uses its own target dir, target/cuda, so CPU builds are untouched.
#
# Usage: scripts/build-cuda.sh --check    cargo check --features cuda (compiles candle's CUDA kernels to PTX
#                                         with nvcc and type-checks everything; no CUDA libraries needed)
#
# Still to do (see the GPU issue): the linked binary. candle 0.9.2 links libcuda/cudart/cublas/curand
# dynamically, so linking here needs a libcuda stub and the cuBLAS/cuRAND wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
mode=${1:---check}
tc=$PWD/target/cuda-toolchain
pins=(nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85)
if [ ! -x "$tc/nvidia/cu13/bin/nvcc" ]; then
  rm -rf "$tc"
  mkdir -p "$tc/wheels"
  python3 -m pip download -q --no-deps --progress-bar off -d "$tc/wheels" "${pins[@]}"
  for w in "$tc"/wheels/*.whl; do python3 -m zipfile -e "$w" "$tc"; done
  chmod +x "$tc"/nvidia/cu13/bin/* "$tc"/nvidia/cu13/nvvm/bin/* 2>/dev/null || true
fi
export CUDA_ROOT=$tc/nvidia/cu13 CUDA_PATH=$tc/nvidia/cu13
export PATH=$CUDA_ROOT/bin:$PATH
# No GPU here for bindgen_cuda to ask: build for Hopper (H100/H200).
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export CARGO_TARGET_DIR=$PWD/target/cuda
nvcc --version | tail -n 2
case "$mode" in
  --check) cargo check --locked --features cuda --lib --bins ;;
  *) echo "usage: scripts/build-cuda.sh --check" >&2; exit 2 ;;
esac
