#!/usr/bin/env bash
# The main job of README.md on the embedded default: no data or flags needed.
# Generates the synthetic 5-degree Rossby-Haurwitz dataset into runs/demo and shows
# what meshcast's loader and graph builder make of it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --locked
bin=target/release/meshcast
mkdir -p runs/demo
$bin generate-data --output runs/demo/synthetic-5deg.nc "$@"
$bin inspect-data runs/demo/synthetic-5deg.nc
