// The CUDA kernels (ops_cuda.h) as an ops object (see kernels/kernel_ops.h): the same calls as CpuOps, each
// queued on `stream`. OperandT is the storage of the activations only matmuls read (model/stage.h): float, or
// bf16 in bf16 precision; ops_cuda.h overloads the kernels that write or read them. Plain C++17.
#pragma once
#include "kernels/cuda/ops_cuda.h"
#include "kernels/kernel_ops.h"
#include "kernels/op_profile.h"

namespace onestep {

template <class OperandT>
struct CudaOpsOf {
  using Operand = OperandT;
  cudaStream_t stream = 0;
#define ONESTEP_CUDA_OP(name)                                        \
  template <class... A>                                              \
  auto name(A... a) const {                                          \
    return profiled(#name, [&] { return cuda::name(a..., stream); }); \
  }
  ONESTEP_KERNEL_OPS(ONESTEP_CUDA_OP)
#undef ONESTEP_CUDA_OP
  // fp32 to fp32, or converting between fp32 and the bf16 operands (the boundary tensors between stages are fp32).
  template <class Dst, class Src>
  void copy(Dst* dst, const Src* src, int64_t n) const {
    cuda::copy_device(dst, src, n, stream);
  }
};
using CudaOps = CudaOpsOf<float>;      // fp32 storage (fp32 and tf32 precision)
using CudaBf16Ops = CudaOpsOf<bf16>;   // bf16 operand storage (bf16 precision)

}  // namespace onestep
