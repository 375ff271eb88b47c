#!/usr/bin/env bash
# Builds a release meshcast with candle's CUDA backend on a machine WITHOUT a GPU or a
# system CUDA toolkit (such as the project's CI and development machines).
#
# A user with a normal CUDA install needs none of this:
#     cargo build --release --features cuda
#
# What it does:
#   1. downloads NVIDIA's CUDA 13.0 wheels from PyPI (nvcc, NVVM, headers, cudart,
#      NVRTC, cuBLAS, cuRAND, and CUPTI for the call counter) into $WORK (13.0 so the
#      embedded PTX suits driver 580+);
#   2. makes the unversioned .so links the linker wants, and a link-only libcuda.so stub
#      (every cu* symbol cudarc declares; never shipped: at run time the driver's real
#      libcuda.so.1 is used);
#   3. builds with CUDA_COMPUTE_CAP (default 90 = Hopper: H100/H200; use 80 for A100,
#      89 for RTX 40xx/L4; candle compiles its kernels for one capability per build);
#   4. prints the shared libraries the binary needs at run time;
#   5. builds the library's tests with `cuda` and the CUPTI call counter
#      scripts/cuda_counts.c, and puts what a GPU machine needs, compressed, in
#      target/cuda/carry (meshcast.xz, meshcast-cuda-tests.xz, libcuda_counts.so;
#      target/cuda/carry-nccl for FEATURES=nccl, whose binary also needs libnccl.so.2 and
#      Open MPI's libmpi.so.40 on the GPU machine).
#
# Usage: scripts/build-cuda.sh [WORK_DIR]   (default: target/cuda-toolkit)
# Env:   CUDA_COMPUTE_CAP (default 90), JOBS (default 2), FEATURES (default cuda; nccl
#        adds the NCCL gradient sum, linked against PyPI's nvidia-nccl-cu13 wheel)
# Result: target/cuda/release/meshcast (its own target dir, so the CPU build in
# target/release stays as it is). About 9 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
WORK=$(mkdir -p "${1:-target/cuda-toolkit}" && cd "${1:-target/cuda-toolkit}" && pwd)
CAP=${CUDA_COMPUTE_CAP:-90}
FEATURES=${FEATURES:-cuda}
JOBS=${JOBS:-2}
bash scripts/setup.sh

mkdir -p "$WORK/wheels" "$WORK/stubs"
if [ ! -x "$WORK/venv/bin/python" ]; then
  python3 -m venv "$WORK/venv"
fi
if [ ! -f "$WORK/.installed-13.0" ]; then
  "$WORK/venv/bin/pip" download -q --no-deps -d "$WORK/wheels" \
    nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-cuda-cccl==13.0.85 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-nvrtc==13.0.88 nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35
  "$WORK/venv/bin/pip" install -q --no-deps --no-index "$WORK"/wheels/*.whl
  touch "$WORK/.installed-13.0"
fi
# CUPTI, for the call counter (scripts/cuda_counts.c) only; its own folder.
if [ ! -f "$WORK/.installed-cupti-13.0.85" ]; then
  "$WORK/venv/bin/pip" download -q --no-deps -d "$WORK/wheels-cupti" nvidia-cuda-cupti==13.0.85
  (mkdir -p "$WORK/cupti" && cd "$WORK/cupti" && python3 -m zipfile -e "$WORK"/wheels-cupti/*.whl .)
  touch "$WORK/.installed-cupti-13.0.85"
fi
# NCCL, for FEATURES=nccl only (the GPU machine needs libnccl.so.2 too: PyTorch ships it).
if [[ $FEATURES == *nccl* ]] && [ ! -f "$WORK/.installed-nccl-2.32.6" ]; then
  "$WORK/venv/bin/pip" download -q --no-deps -d "$WORK/wheels-nccl" nvidia-nccl-cu13==2.32.6
  (mkdir -p "$WORK/nccl" && cd "$WORK/nccl" && python3 -m zipfile -e "$WORK"/wheels-nccl/*.whl .)
  touch "$WORK/.installed-nccl-2.32.6"
fi
CU=$("$WORK/venv/bin/python" -c 'import site; print(site.getsitepackages()[0])')/nvidia/cu13
[ -x "$CU/bin/nvcc" ] || { echo "build-cuda: nvcc not found under $CU" >&2; exit 1; }

# Link-time names: the wheels ship only versioned sonames, and no libcuda at all.
for l in cudart.so.13 nvrtc.so.13 curand.so.10 cublas.so.13 cublasLt.so.13; do
  ln -sf "$CU/lib/lib$l" "$WORK/stubs/lib${l%%.so*}.so"
done
if [[ $FEATURES == *nccl* ]]; then
  ln -sf "$WORK/nccl/nvidia/nccl/lib/libnccl.so.2" "$WORK/stubs/libnccl.so"
fi
(cd "$ROOT" && cargo fetch --locked)
CUDARC=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.* | sort -V | tail -1)
grep -ohE '^pub unsafe fn cu[A-Za-z0-9_]+' "$CUDARC/src/driver/sys/"*.rs \
  | awk '{print "int " $4 "(void) { return 999; }"}' | sort -u > "$WORK/libcuda_stub.c"
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$WORK/stubs/libcuda.so" "$WORK/libcuda_stub.c"

export CUDA_ROOT=$CU CUDA_HOME=$CU CUDA_PATH=$CU PATH=$CU/bin:$PATH
export CUDA_COMPUTE_CAP=$CAP CUDAFORGE_THREADS=$JOBS
export LIBRARY_PATH=$WORK/stubs:$CU/lib
export RUSTFLAGS="${RUSTFLAGS:-} -L native=$WORK/stubs"
echo "build-cuda: nvcc $("$CU/bin/nvcc" --version | tail -1), compute capability $CAP"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target/cuda}
nice -n 10 cargo build -j "$JOBS" --release --locked --features "$FEATURES"

# The library's unit tests with `cuda`: their test_device! tests run each custom op's
# test body on GPU 0 too (scripts/gpu-measure.sh ops).
tests=$(nice -n 10 cargo test -j "$JOBS" --release --locked --features "$FEATURES" --lib --no-run \
  --message-format json 2>/dev/null | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)

# The CUPTI call counter of scripts/gpu-measure.sh (kernel launches and syncs per step,
# and each kernel's GPU time).
gcc -shared -fPIC -O2 -Wall -I "$WORK/cupti/nvidia/cu13/include" -I "$CU/include" \
  -o "$CARGO_TARGET_DIR/libcuda_counts.so" scripts/cuda_counts.c \
  -L "$WORK/cupti/nvidia/cu13/lib" -l:libcupti.so.13
echo "build-cuda: built $CARGO_TARGET_DIR/libcuda_counts.so (needs libcupti.so.13 at run time)"

BIN=$CARGO_TARGET_DIR/release/meshcast
echo "build-cuda: built $BIN"
# What a GPU machine needs, small enough to carry (a device call's tree is capped at
# 64 MiB; the stripped binary alone is ~60 MB, mostly candle's kernels): the binary and
# the tests stripped and xz-compressed (~9 MB each; gpu-measure.sh unpacks them), and
# the call counter.
case $FEATURES in
  cuda) CARRY=$CARGO_TARGET_DIR/carry ;;
  *) CARRY=$CARGO_TARGET_DIR/carry-${FEATURES//[ ,]/-} ;;
esac
mkdir -p "$CARRY"
for f in "$BIN:meshcast" "$tests:meshcast-cuda-tests"; do
  strip --strip-all -o "$CARRY/${f#*:}" "${f%%:*}"
  xz -T "$JOBS" -f "$CARRY/${f#*:}"
done
cp "$CARGO_TARGET_DIR/libcuda_counts.so" "$CARRY/"
echo "build-cuda: to carry to a GPU machine: $CARRY ($(du -sh "$CARRY" | cut -f1)): meshcast.xz,"
echo "            meshcast-cuda-tests.xz (the library's tests, CUDA halves included), libcuda_counts.so"
echo "build-cuda: shared libraries it needs at run time (the libcuda stub is not one of them:"
echo "            the GPU machine's driver provides libcuda.so.1):"
readelf -d "$BIN" | awk '/NEEDED/ {print "  " $5}' | tr -d '[]'
echo "build-cuda: on the GPU machine set LD_LIBRARY_PATH to a directory holding libcudart.so.13,"
echo "            libcublas.so.13, libcublasLt.so.13, libcurand.so.10 (e.g. PyTorch's nvidia/*/lib), or carry"
echo "            them from $CU/lib."
