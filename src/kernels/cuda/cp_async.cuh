// Private to src/kernels/cuda: cp.async (sm_80+), copies from global to shared memory that do not pass through
// registers and do not stall the thread that issues them, so a block can fetch its next tile while it computes on
// the current one. Copies are issued, committed as a group, and waited for by group: after
// cp_async_wait<N>() all but the thread's N most recent groups have landed; other threads' copies are visible
// after a __syncthreads that follows their waits. The CPU emulation (tests/cuda_emu) lands a copy only at the wait.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace onestep::cuda::detail {

// 16 bytes from global src to shared dst, both 16-byte aligned; with fill = false, 16 zero bytes instead (src is
// then not read, but must still be a valid address).
__device__ inline void cp_async16(void* dst, const void* src, bool fill) {
#if defined(__CUDACC__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(
                   static_cast<uint32_t>(__cvta_generic_to_shared(dst))),
               "l"(src), "r"(fill ? 16 : 0));
#elif defined(__CUDACC__)
  __trap();
#else
  ::emu::cp_async(dst, src, 16, fill ? 16 : 0);
#endif
}
// 4 bytes (one float), both addresses 4-byte aligned; zeros with fill = false.
__device__ inline void cp_async4(void* dst, const void* src, bool fill) {
#if defined(__CUDACC__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(
                   static_cast<uint32_t>(__cvta_generic_to_shared(dst))),
               "l"(src), "r"(fill ? 4 : 0));
#elif defined(__CUDACC__)
  __trap();
#else
  ::emu::cp_async(dst, src, 4, fill ? 4 : 0);
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
