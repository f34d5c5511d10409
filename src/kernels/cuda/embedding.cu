// Token embedding lookup and its scatter-add backward.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops_cuda.h"

namespace onestep::cuda {

namespace {
__global__ void embedding_fwd_kernel(float* out, const int32_t* tokens, const float* wte, int64_t total, int C) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = i / C, c = i % C;
    out[i] = wte[static_cast<int64_t>(tokens[n]) * C + c];
  }
}

// float atomicAdd: rows of repeated tokens are summed in an unspecified order (not deterministic).
__global__ void embedding_bwd_kernel(float* dwte, const float* dout, const int32_t* tokens, int64_t total, int C) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = i / C, c = i % C;
    atomicAdd(dwte + static_cast<int64_t>(tokens[n]) * C + c, dout[i]);
  }
}
}  // namespace

void embedding_forward(float* out, const int32_t* tokens, const float* wte, int N, int C, cudaStream_t stream) {
  const int64_t total = static_cast<int64_t>(N) * C;
  if (total <= 0) return;
  embedding_fwd_kernel<<<detail::grid_for(total), detail::kThreads, 0, stream>>>(out, tokens, wte, total, C);
  ONESTEP_CUDA_LAUNCHED("embedding_forward");
}

void embedding_backward(float* dwte, const float* dout, const int32_t* tokens, int N, int C, cudaStream_t stream) {
  const int64_t total = static_cast<int64_t>(N) * C;
  if (total <= 0) return;
  embedding_bwd_kernel<<<detail::grid_for(total), detail::kThreads, 0, stream>>>(dwte, dout, tokens, total, C);
  ONESTEP_CUDA_LAUNCHED("embedding_backward");
}

}  // namespace onestep::cuda
