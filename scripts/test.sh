#!/usr/bin/env bash
# The test verdict: installs what is missing, builds with the tests, fetches the corpus the tests use,
# runs the whole suite with ctest; then builds the CUDA backend again on the CPU emulation of CUDA
# (build-emu/, tests/cuda_emu) and runs its GPU tests there. Exit code 0 iff every test passes. Extra arguments
# go to ctest on build/ only, and skip the emulation (e.g. -R tokenizer); ONESTEP_TEST_JOBS sets ctest's
# parallelism (default 1: the tests use 2 threads each).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "[onestep] $*"; }

./scripts/install-deps.sh
./scripts/build.sh -DONESTEP_BUILD_TESTS=ON
./scripts/fetch-data.sh

say "test: ctest -j${ONESTEP_TEST_JOBS:-1}"
set +e
ctest --test-dir build --output-on-failure -j"${ONESTEP_TEST_JOBS:-1}" "$@"
rc=$?
set -e
if [ $# -eq 0 ]; then
  say "test: the CUDA backend on the CPU emulation of CUDA (build-emu/)"
  mkdir -p build-emu
  if ! cmake -S . -B build-emu -DCMAKE_BUILD_TYPE=Release -DONESTEP_CUDA=OFF -DONESTEP_CUDA_EMULATION=ON \
       -DONESTEP_BUILD_BENCH=OFF > build-emu/configure.log 2>&1; then
    cat build-emu/configure.log >&2
    say "test: configuring build-emu/ failed" >&2
    exit 1
  fi
  cmake --build build-emu -j"$(nproc)" --target emulation_tests
  set +e
  ctest --test-dir build-emu --output-on-failure -j"${ONESTEP_TEST_JOBS:-1}" -R '^(cuda|cuda_emu|gpu_check)\.'
  rc_emu=$?
  set -e
  [ $rc -ne 0 ] || rc=$rc_emu
fi
if [ $rc -eq 0 ]; then say "test: all tests passed"; else say "test: FAILED (ctest exit code $rc)"; fi
exit $rc
