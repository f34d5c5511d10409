// The CUDA kernels (ops_cuda.h) as an ops object (see kernels/kernel_ops.h): the same calls as CpuOps, each
// queued on `stream`. Plain C++17.
#pragma once
#include "kernels/cuda/ops_cuda.h"
#include "kernels/kernel_ops.h"
#include "kernels/op_profile.h"

namespace onestep {

struct CudaOps {
  cudaStream_t stream = 0;
#define ONESTEP_CUDA_OP(name)                                        \
  template <class... A>                                              \
  auto name(A... a) const {                                          \
    return profiled(#name, [&] { return cuda::name(a..., stream); }); \
  }
  ONESTEP_KERNEL_OPS(ONESTEP_CUDA_OP)
#undef ONESTEP_CUDA_OP
  void copy(float* dst, const float* src, int64_t n) const { cuda::copy_device(dst, src, n, stream); }
};

}  // namespace onestep
