#!/usr/bin/env bash
# The test verdict: installs what is missing, builds with the tests, fetches the corpus the tests use,
# runs the whole suite with ctest. Exit code 0 iff every test passes. Extra arguments go to ctest
# (e.g. -R tokenizer); ONESTEP_TEST_JOBS sets ctest's parallelism (default 1: the tests use 2 threads each).
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
if [ $rc -eq 0 ]; then say "test: all tests passed"; else say "test: FAILED (ctest exit code $rc)"; fi
exit $rc
