// The CPU kernels (ops.h) as an ops object (see kernels/kernel_ops.h); kernels/cuda/cuda_ops.h is the
// CUDA counterpart.
#pragma once
#include <cstring>

#include "kernels/cpu/ops.h"
#include "kernels/kernel_ops.h"
#include "kernels/op_profile.h"

namespace onestep {

struct CpuOps {
  using Operand = float;  // the CPU kernels store every activation in fp32
#define ONESTEP_CPU_OP(name)                                       \
  template <class... A>                                            \
  auto name(A... a) const {                                        \
    return profiled(#name, [&] { return cpu::name(a...); });       \
  }
  ONESTEP_KERNEL_OPS(ONESTEP_CPU_OP)
#undef ONESTEP_CPU_OP
  void copy(float* dst, const float* src, int64_t n) const { std::memcpy(dst, src, sizeof(float) * n); }
};

}  // namespace onestep
