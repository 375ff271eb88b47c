#!/usr/bin/env bash
# The GPU measurements of docs/benchmarks.md, on a machine with an NVIDIA GPU and a
# meshcast built with `cuda` (scripts/build-cuda.sh), CUDA 13 runtime libraries found
# on the machine (e.g. PyTorch's nvidia/cu13/lib) or already on LD_LIBRARY_PATH.
#   scripts/gpu-measure.sh MESHCAST_BINARY OUT_DIR [PART...]
# Parts (default: check formats):
#   check     check-gpu: devices, a matmul and message passing (forward and backward)
#             checked against the CPU
#   formats   benchmark-graph-format on the GPU: 5 and 2.5 deg, the three formats,
#             f32 and bf16, batch 1 and 8 (2.5 deg: 1 and 4)
#   memory    the memory toolkit on the GPU: 1 deg, 8 and 16 layers, with and without
#             checkpointing (device peak from the CUDA memory pool, planner beside it)
#   train     train-model end to end on generated 5 deg data: f32, bf16, checkpointing
#   step      the training step's host overhead (issue #15): check-gpu (the fused AdamW
#             kernel against candle's composed ops on the CPU, within 1e-6), the
#             PyTorch check of a GPU-computed step (f32, then --tf32: its errors), the
#             bars (5 deg, batch 1 and 8, csr-shared, f32) side by side with PyTorch's
#             step in the same call, the same with --tf32, and the CUDA calls of one
#             step (kernel launches, syncs, copies, allocations) and the GPU time of
#             each kernel per step (scripts/cuda_counts.c)
#   nccl      the NCCL gradient sum (FEATURES=nccl build, NCCL_BIN): one rank, and two MPI
#             ranks sharing the GPU, against one process
#   ops       every custom op's test_device! test on the GPU (forward and backward
#             against the CPU reference: CSR segment sum, gather-sum, LayerNorm, fused
#             AdamW, the dense op and its SiLU backward, residual + LayerNorm, the
#             LayerNorm backward kernel, the edge MLP's first layer),
#             from the test binary build-cuda.sh makes; a missing GPU fails
#   fused     issue #16: the fused ops on CUDA (--cuda-fused-ops) against the composed
#             ops: the PyTorch check of a GPU-computed step with them, the bars side by
#             side with PyTorch (5 deg batch 8, 2.5 deg batch 4, csr-shared, f32 and
#             bf16, latent 128, 8 layers), composed then fused, and the 1-degree peaks
#             (batch 1, 16 layers, checkpointing, f32 and bf16) both ways, and the
#             fused step's calls and kernel times (as in part step)
#   Env: PYTHON (default python3) must import torch for the PyTorch parts;
#   CUDA_COUNTS_LIB (default target/cuda/carry/libcuda_counts.so) and CUDA_TESTS
#   (default target/cuda/carry/meshcast-cuda-tests.xz), from the repository root.
#   MESHCAST_BINARY may be build-cuda.sh's target/cuda/carry/meshcast.xz (unpacked here).
set -euo pipefail
work=$(mktemp -d)
# A binary carried xz-compressed (scripts/build-cuda.sh's target/cuda/carry) is unpacked.
unpack() {
  case $1 in
    *.xz) local to=$work/$(basename "${1%.xz}")
          python3 -c 'import lzma, sys; open(sys.argv[2], "wb").write(lzma.open(sys.argv[1]).read())' "$1" "$to"
          chmod +x "$to"; echo "$to" ;;
    *) realpath "$1" ;;
  esac
}
bin=$(unpack "${1:?meshcast binary}")
out=$(mkdir -p "${2:?output dir}" && realpath "$2")
shift 2
parts=("${@:-check formats}")
parts=(${parts[*]})

if ! ldconfig -p | grep -q libcublas.so.13 && [ -z "${LD_LIBRARY_PATH:-}" ]; then
  lib=$(find / -xdev -name 'libcublas.so.13' -not -path '/proc/*' 2>/dev/null | head -1)
  [ -n "$lib" ] && export LD_LIBRARY_PATH=$(dirname "$lib")
  echo "gpu-measure: CUDA libraries from ${LD_LIBRARY_PATH:-nowhere}"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
bench() { "$bin" benchmark-graph-format --device cuda --no-progress --output-dir "$out" "$@"; }

# Calls and kernel time per training step (CUPTI counter, scripts/cuda_counts.c, with
# kernel timing): runs of 2 and 7 timed steps at 5 deg, batch 1 and 8, csr-shared, f32,
# so the difference / 5 is one step's. $1 labels the files (the environment picks the
# ops, e.g. MESHCAST_CUDA_FUSED_OPS=1).
calls_per_step() {
  local label=$1 py=${PYTHON:-python3}
  local counter
  counter=$(realpath "${CUDA_COUNTS_LIB:-target/cuda/carry/libcuda_counts.so}")
  if [ ! -f "$counter" ]; then
    echo "gpu-measure: no $counter (scripts/build-cuda.sh builds it): calls not counted"
    return
  fi
  for b in 1 8; do
    for steps in 2 7; do
      CUDA_INJECTION64_PATH="$counter" CUDA_COUNTS_KERNELS=1 \
        CUDA_COUNTS_OUT="$out/counts-$label-b$b-s$steps.json" \
        "$bin" benchmark-graph-format --device cuda --no-progress --output-dir "$work" \
        --grids 5 --batch-sizes "$b" --formats csr-shared --precisions off \
        --num-gnn-layers 8 --warmup-steps 1 --timed-steps "$steps" --forward-repeats 1 \
        --label counts >/dev/null || echo "gpu-measure: counting failed (batch $b, $steps steps)"
    done
  done
  "$py" - "$out" "$label" <<'PY' | tee "$out/calls-per-step-$label.txt"
import json, pathlib, sys
out, label = pathlib.Path(sys.argv[1]), sys.argv[2]
groups = {
    "kernel launches": lambda k: k.startswith("driver:cuLaunch"),
    "graph launches": lambda k: k.startswith("driver:cuGraphLaunch"),
    "host syncs": lambda k: k.startswith("driver:") and "Synchronize" in k,
    "blocking copies": lambda k: k.startswith("driver:cuMemcpy") and "Async" not in k,
    "event records": lambda k: k.startswith("driver:cuEventRecord"),
    "allocations": lambda k: k.startswith("driver:cuMemAlloc"),
}
for b in (1, 8):
    try:
        a, z = (json.loads((out / f"counts-{label}-b{b}-s{s}.json").read_text()) for s in (2, 7))
    except (OSError, ValueError) as e:
        print(f"batch {b}: no counts ({e})")
        continue
    per = {f"{d}:{k}": (n - a[d].get(k, 0)) / 5 for d in ("driver", "runtime") for k, n in z[d].items()}
    print(f"{label}, batch {b}, per training step: " + ", ".join(
        f"{g} {sum(v for k, v in per.items() if f(k)):.0f}" for g, f in groups.items()))
    for k, v in sorted(per.items(), key=lambda kv: -kv[1])[:25]:
        if v:
            print(f"  {k} {v:.1f}")
    kernels = {k: ((c - a.get("kernels", {}).get(k, [0, 0])[0]) / 5,
                   (ns - a.get("kernels", {}).get(k, [0, 0])[1]) / 5e6)
               for k, (c, ns) in z.get("kernels", {}).items()}
    total = sum(ms for _, ms in kernels.values())
    print(f"  GPU kernel time per step: {total:.2f} ms in {sum(c for c, _ in kernels.values()):.0f} kernels"
          " (against the step's wall time in the bench report: the rest is the GPU waiting for the host)")
    for k, (c, ms) in sorted(kernels.items(), key=lambda kv: -kv[1][1])[:30]:
        print(f"  {ms:8.3f} ms {c:6.0f}x  {k[:110]}")
PY
}

for part in "${parts[@]}"; do
  echo "=== $part"
  case $part in
    ops)
      MESHCAST_REQUIRE_GPU=1 "$(unpack "${CUDA_TESTS:-target/cuda/carry/meshcast-cuda-tests.xz}")" \
        _cuda --test-threads 1 2>&1 | tee "$out/ops-tests.txt"
      ;;
    check)
      "$bin" check-gpu --require-cuda --json >"$out/check-gpu.json"
      "$bin" check-gpu --require-cuda
      ;;
    formats)
      bench --label gpu-formats-5 --grids 5 --batch-sizes 1,8 \
        --formats coo-replicated,coo-shared,csr-shared --precisions off,bf16 \
        --num-gnn-layers 8 --warmup-steps 3 --timed-steps 10 --forward-repeats 5
      bench --label gpu-formats-2.5 --grids 2.5 --batch-sizes 1,4 \
        --formats coo-replicated,coo-shared,csr-shared --precisions off,bf16 \
        --num-gnn-layers 8 --warmup-steps 3 --timed-steps 10 --forward-repeats 5
      ;;
    memory)
      bench --label gpu-memory-1 --grids 1 --batch-sizes 1 --formats csr-shared \
        --precisions off,bf16 --checkpointing false,true --num-gnn-layers 16 \
        --warmup-steps 2 --timed-steps 5 --forward-repeats 2
      ;;
    train)
      "$bin" generate-data --resolution 5 --steps 120 --output "$work/synthetic5.nc"
      for flags in "" "--mixed-precision bf16" "--checkpointing"; do
        "$bin" train-model --device cuda --data "$work/synthetic5.nc" --num-epochs 1 \
          --batch-size 4 --no-progress --overwrite --output-dir "$work/run" $flags
      done
      ;;
    nccl)
      # Issue #17: the NCCL gradient sum with one rank, and two ranks sharing the GPU
      # through the MPI path (NCCL refuses two ranks on one GPU), against one process
      # alone with the same global batch: the last metrics lines should agree. Needs
      # build-cuda.sh's FEATURES=nccl binary, libnccl.so.2 (PyTorch's) and Open MPI.
      nbin=$(unpack "${NCCL_BIN:-target/cuda/carry-nccl/meshcast.xz}")
      "$nbin" generate-data --resolution 10 --steps 40 --output "$work/g10.nc"
      tiny=(--data "$work/g10.nc" --latent-size 16 --num-gnn-layers 2 --mesh-level 2
        --num-epochs 2 --seed 5 --no-progress --no-graph-cache --device cuda)
      "$nbin" train-model "${tiny[@]}" --output-dir "$work/alone" --batch-size 4 --distributed off
      mpirun --allow-run-as-root -np 1 "$nbin" train-model "${tiny[@]}" --output-dir "$work/nccl1" \
        --batch-size 4 --distributed nccl
      mpirun --allow-run-as-root --oversubscribe -np 2 "$nbin" train-model "${tiny[@]}" \
        --output-dir "$work/mpi2" --batch-size 2 --distributed mpi
      for r in alone nccl1 mpi2; do tail -1 "$work/$r/metrics.jsonl" | tee "$out/nccl-$r.json"; done
      ;;
    step)
      py=${PYTHON:-python3}
      "$bin" check-gpu --require-cuda | tee "$out/check-gpu.txt"
      "$bin" check-gpu --require-cuda --json >"$out/check-gpu.json"
      for tf32 in "" --tf32; do
        exp="$work/export${tf32:+-tf32}"
        "$bin" $tf32 export-reference --device cuda --synthetic-grid 5 --latent-size 64 \
          --num-gnn-layers 4 --batch-size 2 --out "$exp"
        # Under TF32 the f32 tolerances are expected to fail: the lines give its errors.
        "$py" scripts/pytorch_reference.py check "$exp" | tee "$out/pytorch-check${tf32:+-tf32}.txt" \
          || echo "gpu-measure: the PyTorch check${tf32:+ with TF32} failed (exit $?)"
      done
      steps=(--grids 5 --batch-sizes 1,8 --formats csr-shared --precisions off
        --num-gnn-layers 8 --warmup-steps 3 --timed-steps 10 --forward-repeats 5)
      "$py" scripts/pytorch_reference.py bench --meshcast "$bin" --out-dir "$out/step" \
        -- --device cuda --label gpu-step-5 "${steps[@]}" || echo "gpu-measure: bench exit $?"
      bench --tf32 --label gpu-step-5-tf32 "${steps[@]}"
      calls_per_step composed
      ;;
    fused)
      py=${PYTHON:-python3}
      exp="$work/export-fused"
      MESHCAST_CUDA_FUSED_OPS=1 "$bin" export-reference --device cuda --synthetic-grid 5 --latent-size 64 \
        --num-gnn-layers 4 --batch-size 2 --out "$exp"
      "$py" scripts/pytorch_reference.py check "$exp" | tee "$out/pytorch-check-fused.txt" \
        || echo "gpu-measure: the PyTorch check with the fused ops failed (exit $?)"
      for case in "5 8" "2.5 4"; do
        read -r grid batch <<<"$case"
        steps=(--grids "$grid" --batch-sizes "$batch" --formats csr-shared --precisions off,bf16
          --num-gnn-layers 8 --warmup-steps 3 --timed-steps 10 --forward-repeats 3)
        "$py" scripts/pytorch_reference.py bench --meshcast "$bin" --out-dir "$out/fused-$grid" \
          -- --device cuda --label "gpu-composed-$grid" "${steps[@]}" || echo "gpu-measure: bench exit $?"
        MESHCAST_CUDA_FUSED_OPS=1 bench --label "gpu-fused-$grid" "${steps[@]}"
      done
      peaks=(--grids 1 --batch-sizes 1 --formats csr-shared --precisions off,bf16 --checkpointing true
        --num-gnn-layers 16 --warmup-steps 1 --timed-steps 3 --forward-repeats 1)
      bench --label gpu-peaks-1-composed "${peaks[@]}"
      MESHCAST_CUDA_FUSED_OPS=1 bench --label gpu-peaks-1-fused "${peaks[@]}"
      MESHCAST_CUDA_FUSED_OPS=1 calls_per_step fused
      ;;
    *) echo "gpu-measure: unknown part '$part'" >&2; exit 2 ;;
  esac
done
