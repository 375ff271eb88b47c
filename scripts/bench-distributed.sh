#!/usr/bin/env bash
# Data-parallel scaling on this machine (docs/benchmarks.md, "Data parallelism over
# MPI"): training throughput of N ranks x 1 thread against 1 rank x 1 thread (each rank
# the same per-rank batch, so N ranks take N times the samples per step), alternated
# REPEATS times, and the share of the run rank 0 spent summing gradients.
#
#   bash scripts/bench-distributed.sh [RANKS=2] [REPEATS=3] [MODEL FLAGS...]
#
# Needs the release binary built with the `mpi` feature
# (cargo build --release --features mpi) and mpirun.
set -euo pipefail
cd "$(dirname "$0")/.."
ranks="${1:-2}"
repeats="${2:-3}"
shift $(( $# > 2 ? 2 : $# ))
model=("$@")
[ ${#model[@]} -gt 0 ] || model=(--latent-size 32 --num-gnn-layers 4 --mesh-level 3 --batch-size 4)
bin="${CARGO_TARGET_DIR:-target}/release/meshcast"
[ -x "$bin" ] || { echo "build first: cargo build --release --features mpi"; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$bin" -q generate-data --resolution 5 --steps 160 --output "$work/g5.nc" >/dev/null
common=(train-model --data "$work/g5.nc" "${model[@]}" --max-steps 30 --no-progress
        --no-graph-cache --overwrite --skip-memory-check)

# samples/s from the summary line; the all-reduce share from rank 0's log line.
rate() { sed -n 's/.* \([0-9.]*\) samples\/s.*/\1/p' "$1" | tail -1; }
share() { sed -n 's/.*summing gradients (\([0-9.]*\)% of the run).*/\1/p' "$1" | tail -1; }

echo "ranks x threads | samples/s | share summing gradients"
for i in $(seq "$repeats"); do
  RAYON_NUM_THREADS=1 "$bin" "${common[@]}" --output-dir "$work/one" >"$work/one.log" 2>&1
  mpirun --allow-run-as-root --oversubscribe -np "$ranks" -x RAYON_NUM_THREADS=1 \
    "$bin" "${common[@]}" --output-dir "$work/many" >"$work/many.log" 2>&1
  echo "1 x 1 | $(rate "$work/one.log") | -"
  echo "$ranks x 1 | $(rate "$work/many.log") | $(share "$work/many.log")%"
done
