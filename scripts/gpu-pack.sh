#!/usr/bin/env bash
# Prepares what scripts/gpu-check.sh needs on a bare GPU machine that has CUDA 13 but none of onestep's other
# dependencies (OpenBLAS, PCRE2, Open MPI, ...) and no package registry: builds the CUDA backend here for
# Hopper (sm_90) and copies the two binaries and the non-CUDA shared libraries they load into .gpu-carry/
# (git-ignored), packed as one xz archive (a call carries at most 64 MiB with the working tree; OpenBLAS alone is
# 36 MB unpacked). Then run scripts/gpu-check.sh there with .gpu-carry carried along. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build-cuda -DCMAKE_BUILD_TYPE=Release -DONESTEP_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
  -DONESTEP_BUILD_BENCH=OFF > /dev/null
cmake --build build-cuda -j"$(nproc)" --target onestep test_cuda
rm -rf .gpu-carry && mkdir -p .gpu-carry/bin .gpu-carry/lib
cp build-cuda/onestep build-cuda/test_cuda .gpu-carry/bin/
strip .gpu-carry/bin/*
# Everything the loader resolves except the C/C++ runtimes (newer there) and CUDA's own libraries (the GPU
# machine's toolkit provides them; cuBLAS alone is larger than what a call may carry).
ldd build-cuda/onestep build-cuda/test_cuda | awk '/=> \// {print $3}' | sort -u \
  | grep -v -E '/(libc|libm|libpthread|libdl|librt|libstdc\+\+|libgcc_s|libcuda|libcudart|libcublas|libcublasLt)\.so' \
  | while read -r lib; do cp -L "$lib" .gpu-carry/lib/; done
# The commit the binaries come from (the device machine's copy of .git may be older than the working tree).
echo "$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src tests CMakeLists.txt || echo ' with local changes')" > .gpu-carry/commit
tar -C .gpu-carry -cJf .gpu-carry/onestep-gpu.tar.xz bin lib commit
rm -f .gpu-carry/commit
rm -rf .gpu-carry/bin .gpu-carry/lib
du -sh .gpu-carry
echo "carry .gpu-carry and run: bash scripts/gpu-check.sh"
