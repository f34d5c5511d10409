// SwiGLU gate: out = silu(gate) * up, silu(g) = g * sigmoid(g). expf is the accurate (not __expf) exp.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops_cuda.h"

namespace onestep::cuda {

namespace {
__device__ inline float sigmoidf(float g) { return 1.0f / (1.0f + expf(-g)); }

template <class Act>  // the storage of out, gate and up: float, or __nv_bfloat16 (bf16 operand storage)
__global__ void swiglu_fwd_kernel(Act* out, const Act* gate, const Act* up, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float g = detail::load_value(gate + i);
    detail::store_value(out + i, g * sigmoidf(g) * detail::load_value(up + i));
  }
}

// silu'(g) = s * (1 + g * (1 - s)).  dgate += dout * up * silu'(g) ; dup += dout * silu(g).
template <class Act, class Grad>  // Grad: dgate and dup, float or bf16 (accumulated in fp32, rounded once per call)
__global__ void swiglu_bwd_kernel(Grad* dgate, Grad* dup, const float* dout, const Act* gate, const Act* up,
                                  int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float g = detail::load_value(gate + i), s = sigmoidf(g), d = dout[i];
    if (dgate)
      detail::store_value(dgate + i,
                          detail::load_value(dgate + i) + d * detail::load_value(up + i) * (s * fmaf(g, 1.0f - s, 1.0f)));
    if (dup) detail::store_value(dup + i, detail::load_value(dup + i) + d * (g * s));
  }
}

template <class Act>
void swiglu_forward_as(Act* out, const Act* gate, const Act* up, int N, int F, cudaStream_t stream) {
  const int64_t n = static_cast<int64_t>(N) * F;
  if (n <= 0) return;
  swiglu_fwd_kernel<<<detail::grid_for(n), detail::kThreads, 0, stream>>>(out, gate, up, n);
  ONESTEP_CUDA_LAUNCHED("swiglu_forward");
}
template <class Act, class Grad>
void swiglu_backward_as(Grad* dgate, Grad* dup, const float* dout, const Act* gate, const Act* up, int N, int F,
                        cudaStream_t stream) {
  const int64_t n = static_cast<int64_t>(N) * F;
  if (n <= 0 || (!dgate && !dup)) return;
  swiglu_bwd_kernel<<<detail::grid_for(n), detail::kThreads, 0, stream>>>(dgate, dup, dout, gate, up, n);
  ONESTEP_CUDA_LAUNCHED("swiglu_backward");
}
}  // namespace

void swiglu_forward(float* out, const float* gate, const float* up, int N, int F, cudaStream_t stream) {
  swiglu_forward_as(out, gate, up, N, F, stream);
}
void swiglu_forward(onestep::bf16* out, const onestep::bf16* gate, const onestep::bf16* up, int N, int F,
                    cudaStream_t stream) {
  swiglu_forward_as(detail::device_type(out), detail::device_type(gate), detail::device_type(up), N, F, stream);
}
void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up, int N, int F,
                     cudaStream_t stream) {
  swiglu_backward_as(dgate, dup, dout, gate, up, N, F, stream);
}
void swiglu_backward(onestep::bf16* dgate, onestep::bf16* dup, const float* dout, const onestep::bf16* gate,
                     const onestep::bf16* up, int N, int F, cudaStream_t stream) {
  swiglu_backward_as(detail::device_type(dgate), detail::device_type(dup), dout, detail::device_type(gate),
                     detail::device_type(up), N, F, stream);
}

}  // namespace onestep::cuda
