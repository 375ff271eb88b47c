#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks to build and test meshcast:
#   - libnetcdf-dev (+ netcdf-bin for ncdump): the netcdf crate links the system
#     library. We chose Debian's package over the crate's `static` feature because it
#     builds in ~30 s instead of ~2 min and needs no CMake >= 3.26 (Debian ships 3.25).
#   - an MPI (Open MPI: libopenmpi-dev, openmpi-bin) and libclang-dev, which rsmpi's
#     bindings are generated with: the `mpi` feature (data-parallel training) and its
#     tests under mpirun.
#   - the storm1996 test data (Debian's libncarg-data package), only when
#     ../shared/data/storm1996 is absent: unpacked into .test-data/storm1996.
# Safe to run again: every step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
[ -f /usr/include/netcdf.h ] || need_apt+=(libnetcdf-dev)
command -v ncdump >/dev/null || need_apt+=(netcdf-bin)
command -v pkg-config >/dev/null || need_apt+=(pkg-config)
# The Zarr codecs (blosc with snappy, zstd) compile C and C++ sources.
command -v c++ >/dev/null || need_apt+=(g++)
command -v mpirun >/dev/null || need_apt+=(openmpi-bin)
[ -f /usr/lib/x86_64-linux-gnu/openmpi/include/mpi.h ] || [ -f /usr/include/mpi.h ] || need_apt+=(libopenmpi-dev)
ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1 || need_apt+=(libclang-dev)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [ "${1:-}" = "--with-test-data" ]; then
  if [ -f ../shared/data/storm1996/Pstorm.cdf ]; then
    echo "setup: storm1996 data from ../shared/data/storm1996"
  elif [ ! -f .test-data/storm1996/Pstorm.cdf ]; then
    echo "setup: fetching the storm1996 files (Debian package libncarg-data)"
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download libncarg-data >/dev/null 2>&1 || { apt-get update -qq && apt-get download libncarg-data >/dev/null; })
    dpkg -x "$tmp"/libncarg-data_*.deb "$tmp/x"
    mkdir -p .test-data/storm1996
    for f in Pstorm Tstorm Ustorm Vstorm U500storm V500storm; do
      cp "$tmp/x/usr/share/ncarg/data/cdf/$f.cdf" .test-data/storm1996/
    done
    rm -rf "$tmp"
  fi
fi
