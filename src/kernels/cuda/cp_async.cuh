// Private to src/kernels/cuda: cp.async (sm_80+), copies from global to shared memory that do not pass through
// registers and do not stall the thread that issues them, so a block can fetch its next tile while it computes on
// the current one. Copies are issued, committed as a group, and waited for by group: after
// cp_async_wait<N>() all but the thread's N most recent groups have landed; other threads' copies are visible
// after a __syncthreads that follows their waits. The CPU emulation (tests/cuda_emu) lands a copy only at the wait.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace onestep::cuda::detail {

// Bytes (4, 8 or 16) from global src to shared dst, both aligned to it; with fill = false, zeros instead (src is
// then not read, but must still be a valid address). 16-byte copies bypass L1 (.cg: streamed tiles), smaller
// ones cannot (.ca).
template <int Bytes>
__device__ inline void cp_async(void* dst, const void* src, bool fill) {
  static_assert(Bytes == 4 || Bytes == 8 || Bytes == 16, "cp.async copies 4, 8 or 16 bytes");
#if defined(__CUDACC__) && __CUDA_ARCH__ >= 800
  const uint32_t d = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  if constexpr (Bytes == 16)
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(fill ? 16 : 0));
  else
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(d), "l"(src), "n"(Bytes),
                 "r"(fill ? Bytes : 0));
#elif defined(__CUDACC__)
  __trap();
#else
  ::emu::cp_async(dst, src, Bytes, fill ? Bytes : 0);
#endif
}
__device__ inline void cp_async_commit() {
#if defined(__CUDACC__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#elif !defined(__CUDACC__)
  ::emu::cp_async_commit();
#endif
}
template <int Pending>
__device__ inline void cp_async_wait() {
#if defined(__CUDACC__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(Pending) : "memory");
#elif !defined(__CUDACC__)
  ::emu::cp_async_wait(Pending);
#endif
}

}  // namespace onestep::cuda::detail
