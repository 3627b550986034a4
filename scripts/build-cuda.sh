#!/usr/bin/env bash
# CUDA encoders (cargo feature `cuda`) with nvcc from PyPI, pinned to CUDA 13.0: the lent H100's driver (580)
# JIT-compiles PTX ISA <= 9.0, and nvcc 13.1+ emits newer PTX that it rejects. Wheels are kept under
# target/cuda-toolchain; builds use their own target dir, target/cuda, so CPU builds are untouched.
#
# Usage: scripts/build-cuda.sh --check    cargo check --features cuda: compiles candle's CUDA kernels to PTX
#                                         with nvcc and type-checks everything (no CUDA library needed; CI)
#        scripts/build-cuda.sh --build    the release binary, target/cuda/release/chatspace-mpi
#
# Linking --build: candle 0.9.2 links libcuda, libcublas(Lt), libcurand and libnvrtc dynamically. cuBLAS,
# cuRAND and NVRTC come from their PyPI wheels (~500 MiB, link time only). libcuda belongs to the GPU driver,
# which this machine does not have: the script links against a stub with the same soname (libcuda.so.1) that
# defines every driver function the code references. At run time the real driver's libcuda.so.1 and the CUDA 13
# libraries of the machine's PyTorch install are used (scripts/gpu-check.sh sets LD_LIBRARY_PATH).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
mode=${1:---check}
tc=$PWD/target/cuda-toolchain
pins=(nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85)
link_pins=(nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35 nvidia-cuda-nvrtc==13.0.88)
fetch() { # folder, pins...
  local dir=$1; shift
  mkdir -p "$dir"
  python3 -m pip download -q --no-deps --progress-bar off -d "$dir" "$@"
  for w in "$dir"/*.whl; do python3 -m zipfile -e "$w" "$tc"; done
}
if [ ! -x "$tc/nvidia/cu13/bin/nvcc" ]; then
  rm -rf "$tc"
  fetch "$tc/wheels" "${pins[@]}"
  chmod +x "$tc"/nvidia/cu13/bin/* "$tc"/nvidia/cu13/nvvm/bin/* 2>/dev/null || true
fi
export CUDA_ROOT=$tc/nvidia/cu13 CUDA_PATH=$tc/nvidia/cu13
export PATH=$CUDA_ROOT/bin:$PATH
# No GPU here for bindgen_cuda to ask: build for Hopper (H100/H200).
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export CARGO_TARGET_DIR=$PWD/target/cuda
nvcc --version | tail -n 2
case "$mode" in
  --check)
    cargo check --locked --features cuda --lib --bins
    ;;
  --build)
    [ -e "$CUDA_ROOT/lib/libcublas.so.13" ] || fetch "$tc/link-wheels" "${link_pins[@]}"
    # The link directory cudarc searches ($CUDA_ROOT/lib): unversioned names for the wheels' libraries.
    for lib in cublas cublasLt nvrtc; do ln -sf "lib$lib.so.13" "$CUDA_ROOT/lib/lib$lib.so"; done
    ln -sf libcurand.so.10 "$CUDA_ROOT/lib/libcurand.so"
    ln -sf libcudart.so.13 "$CUDA_ROOT/lib/libcudart.so"
    # Everything but the binary first; then a libcuda stub for the driver functions the code references.
    cargo build --locked --release --features cuda --lib
    stub=$tc/stub
    mkdir -p "$stub"
    for f in "$CARGO_TARGET_DIR"/release/deps/*.rlib; do nm -u --format=posix "$f" 2>/dev/null || true; done \
      | awk '$1 ~ /^cu[A-Z]/ { print $1 }' | sort -u > "$stub/symbols.txt"
    awk '{ printf "int %s(void) { return 999; }\n", $1 }' "$stub/symbols.txt" > "$stub/libcuda.c"
    cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$CUDA_ROOT/lib/libcuda.so" "$stub/libcuda.c"
    echo "libcuda stub: $(wc -l < "$stub/symbols.txt") driver functions"
    cargo build --locked --release --features cuda --bins
    bin=$CARGO_TARGET_DIR/release/chatspace-mpi
    echo "built $bin ($(du -m "$bin" | cut -f1) MiB); needs at run time:"
    readelf -d "$bin" | awk '/NEEDED/ { print "  " $NF }'
    ;;
  *) echo "usage: scripts/build-cuda.sh --check | --build" >&2; exit 2 ;;
esac
