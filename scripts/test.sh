#!/usr/bin/env bash
# The test command of README.md: set-up (system libraries, test data), then every test.
# Tests find the storm1996 data in ../shared/data/storm1996 or .test-data/storm1996.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --with-test-data
# With data parallelism over MPI (the `mpi` feature), so tests/distributed.rs runs.
cargo test --all-targets --locked --features mpi
