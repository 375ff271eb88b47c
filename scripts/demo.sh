#!/usr/bin/env bash
# The main job of README.md on the embedded default: no data or flags needed.
# `meshcast train-model` with no arguments runs configs/demo.toml (built into the
# binary): it generates synthetic 5-degree Rossby-Haurwitz data into runs/demo, trains a
# small GraphCast-style model for a few minutes on the CPU, then scores the best
# checkpoint on the test block against persistence and climatology; it draws the
# training curves and the scores into runs/demo (training.png, scores-test.png).
# Extra arguments go to train-model (e.g. --num-epochs 1, or --overwrite to start over).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --locked
bin=target/release/meshcast
if [ -f runs/demo/run.json ] && [[ " $* " != *" --overwrite "* ]] && [[ " $* " != *" --resume "* ]]; then
  set -- "$@" --overwrite
fi
$bin train-model --plots "$@"
$bin eval --checkpoint runs/demo --rollout-steps 4 --plots
