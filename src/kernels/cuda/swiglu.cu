// SwiGLU gate: out = silu(gate) * up, silu(g) = g * sigmoid(g). expf is the accurate (not __expf) exp.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops_cuda.h"

namespace onestep::cuda {

namespace {
__device__ inline float sigmoidf(float g) { return 1.0f / (1.0f + expf(-g)); }

template <class Out>  // float, or __nv_bfloat16 (bf16 operand storage)
__global__ void swiglu_fwd_kernel(Out* out, const float* gate, const float* up, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float g = gate[i];
    detail::store_value(out + i, g * sigmoidf(g) * up[i]);
  }
}

// silu'(g) = s * (1 + g * (1 - s)).  dgate += dout * up * silu'(g) ; dup += dout * silu(g).
__global__ void swiglu_bwd_kernel(float* dgate, float* dup, const float* dout, const float* gate, const float* up,
                                  int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float g = gate[i], s = sigmoidf(g), d = dout[i];
    if (dgate) dgate[i] += d * up[i] * (s * fmaf(g, 1.0f - s, 1.0f));
    if (dup) dup[i] += d * (g * s);
  }
}

template <class Out>
void swiglu_forward_to(Out* out, const float* gate, const float* up, int N, int F, cudaStream_t stream) {
  const int64_t n = static_cast<int64_t>(N) * F;
  if (n <= 0) return;
  swiglu_fwd_kernel<<<detail::grid_for(n), detail::kThreads, 0, stream>>>(detail::device_type(out), gate, up, n);
  ONESTEP_CUDA_LAUNCHED("swiglu_forward");
}
}  // namespace

void swiglu_forward(float* out, const float* gate, const float* up, int N, int F, cudaStream_t stream) {
  swiglu_forward_to(out, gate, up, N, F, stream);
}
void swiglu_forward(onestep::bf16* out, const float* gate, const float* up, int N, int F, cudaStream_t stream) {
  swiglu_forward_to(out, gate, up, N, F, stream);
}

void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up, int N, int F,
                     cudaStream_t stream) {
  const int64_t n = static_cast<int64_t>(N) * F;
  if (n <= 0 || (!dgate && !dup)) return;
  swiglu_bwd_kernel<<<detail::grid_for(n), detail::kThreads, 0, stream>>>(dgate, dup, dout, gate, up, n);
  ONESTEP_CUDA_LAUNCHED("swiglu_backward");
}

}  // namespace onestep::cuda
