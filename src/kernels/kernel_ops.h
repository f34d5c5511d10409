// The training kernels the model calls, listed once. Each backend turns the list into an "ops object"
// (kernels/cpu/cpu_ops.h, kernels/cuda/cuda_ops.h) whose member functions forward to its kernels with the
// signatures of kernels/cpu/ops.h; the model code (model/stage_compute.h) is written once against it.
#pragma once

#define ONESTEP_KERNEL_OPS(X)                                                                                   \
  X(matmul_forward) X(matmul_backward) X(embedding_forward) X(embedding_backward) X(rmsnorm_forward)           \
  X(rmsnorm_backward) X(rope_forward) X(rope_backward) X(attention_forward) X(attention_backward)             \
  X(swiglu_forward) X(swiglu_backward) X(cross_entropy_forward) X(cross_entropy_backward) X(add_inplace)      \
  X(scale_inplace) X(fill_zero)
