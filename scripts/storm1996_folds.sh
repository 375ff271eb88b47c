#!/usr/bin/env bash
# Blocked cross-validation of rollout fine-tuning on storm1996 (docs/benchmarks.md,
# "storm1996 in four folds"): four folds hold out 4 days each as the test period, 2 days
# for validation, and train on the rest (on both sides of the test period where it lies
# in the middle). Per fold and seed: a one-step base (10 epochs), then from it 6 more
# one-step epochs ("one") or 6 rollout epochs with a curriculum 2 -> 4 steps ("roll"),
# same seed, learning rate and budget in epochs; each scored by eval over 4 steps (24 h).
#   scripts/storm1996_folds.sh OUT_DIR [SEEDS] [FOLDS]; then
#   python3 scripts/storm1996_folds.py OUT_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
M=${MESHCAST:-target/release/meshcast}
CFG=configs/storm1996.toml
DATA=()
[ -f ../shared/data/storm1996/Pstorm.cdf ] || DATA=(--data-dir .test-data/storm1996)
OUT=$1; SEEDS=${2:-0 1}; FOLDS=${3:-A B C D}
mkdir -p "$OUT"
fold() {
  case $1 in
    A) echo "--test-period 1996-01-05..1996-01-08 --validation-period 1996-01-09..1996-01-10 --train-period 1996-01-11..1996-01-20";;
    B) echo "--test-period 1996-01-09..1996-01-12 --validation-period 1996-01-13..1996-01-14 --train-period 1996-01-05..1996-01-08 --train-period 1996-01-15..1996-01-20";;
    C) echo "--test-period 1996-01-13..1996-01-16 --validation-period 1996-01-17..1996-01-18 --train-period 1996-01-05..1996-01-12 --train-period 1996-01-19..1996-01-20";;
    D) echo "--test-period 1996-01-17..1996-01-20 --validation-period 1996-01-15..1996-01-16 --train-period 1996-01-05..1996-01-14";;
  esac
}
FINE=(--num-epochs 6 --learning-rate 5e-4 --warmup-steps 10)
for S in $SEEDS; do for F in $FOLDS; do
  read -ra SPLIT <<< "$(fold "$F")"
  R=$OUT/$F$S
  common=(--config $CFG "${DATA[@]}" "${SPLIT[@]}" --seed "$S" --overwrite --no-progress)
  $M train-model "${common[@]}" --output-dir "$R-base" > "$R-base.log" 2>&1
  $M train-model "${common[@]}" --init-from "$R-base" "${FINE[@]}" --output-dir "$R-one" > "$R-one.log" 2>&1
  $M train-model "${common[@]}" --init-from "$R-base" "${FINE[@]}" --rollout-steps 2 \
      --rollout-schedule every=1,max=4 --output-dir "$R-roll" > "$R-roll.log" 2>&1
  for r in base one roll; do
    $M eval --config $CFG "${DATA[@]}" --checkpoint "$R-$r" --rollout-steps 4 --json \
        > "$OUT/eval_$F$S-$r.json" 2> "$OUT/eval_$F$S-$r.log"
  done
  echo "$F$S done $(date -u +%T)"
done; done
