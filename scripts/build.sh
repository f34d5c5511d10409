#!/usr/bin/env bash
# Configures (Release) and builds onestep in build/. Extra arguments go to the cmake configure step
# (e.g. -DONESTEP_BUILD_TESTS=ON). ONESTEP_BUILD_TARGET=onestep builds only the binary (the demo does).
# Quick when already built.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "[onestep] $*"; }

say "build: configuring build/ (Release)"
mkdir -p build
if ! cmake -S . -B build -DCMAKE_BUILD_TYPE=Release "$@" > build/configure.log 2>&1; then
  cat build/configure.log >&2
  say "build: cmake configure failed (log above, also in build/configure.log)" >&2
  exit 1
fi
say "build: compiling with $(nproc) jobs"
if [ -n "${ONESTEP_BUILD_TARGET:-}" ]; then
  cmake --build build -j"$(nproc)" --target "$ONESTEP_BUILD_TARGET"
else
  cmake --build build -j"$(nproc)"
fi
say "build: done -> build/onestep"
