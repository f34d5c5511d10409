// SwiGLU gate: out = silu(gate) * up, silu(g) = g * sigmoid(g). expf is the accurate (not __expf) exp. Memory-bound:
// where the tensors are 16-byte aligned, each thread moves 8 elements per load and store.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops_cuda.h"

namespace onestep::cuda {

namespace {
__device__ inline float sigmoidf(float g) { return 1.0f / (1.0f + expf(-g)); }

// The per-element expressions, which the 8-wide and the one-by-one loops share, so both give the same bits.
__device__ inline float swiglu_value(float g, float u) { return g * sigmoidf(g) * u; }
// silu'(g) = s * (1 + g * (1 - s)).  dgate += dout * up * silu'(g) ; dup += dout * silu(g).
__device__ inline void swiglu_grads(float& dg, float& du, float d, float g, float u) {
  const float s = sigmoidf(g);
  dg = dg + d * u * (s * fmaf(g, 1.0f - s, 1.0f));
  du = du + d * (g * s);
}

// Elements [0, n8) go 8 at a time in 16-byte loads and stores (n8 = 0 unless every pointer is 16-byte aligned),
// the rest one by one; each thread's first element of either loop is its index in the grid (times 8).
struct Split {
  int64_t n8, first, stride;
};
__device__ inline Split split(int64_t n, bool vec) {
  return {vec ? n / 8 * 8 : 0, blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x,
          static_cast<int64_t>(gridDim.x) * blockDim.x};
}

template <class Act>  // the storage of out, gate and up: float, or __nv_bfloat16 (bf16 operand storage)
__global__ void swiglu_fwd_kernel(Act* out, const Act* gate, const Act* up, int64_t n, bool vec) {
  const Split w = split(n, vec);
  for (int64_t i = 8 * w.first; i < w.n8; i += 8 * w.stride) {
    float g[8], u[8], o[8];
    detail::load8(g, gate + i), detail::load8(u, up + i);
#pragma unroll
    for (int e = 0; e < 8; ++e) o[e] = swiglu_value(g[e], u[e]);
    detail::store8(out + i, o);
  }
  for (int64_t i = w.n8 + w.first; i < n; i += w.stride)
    detail::store_value(out + i, swiglu_value(detail::load_value(gate + i), detail::load_value(up + i)));
}

template <class Act, class Grad>  // Grad: dgate and dup, float or bf16 (accumulated in fp32, rounded once per call)
__global__ void swiglu_bwd_kernel(Grad* dgate, Grad* dup, const float* dout, const Act* gate, const Act* up,
                                  int64_t n, bool vec) {
  const Split w = split(n, vec);
  for (int64_t i = 8 * w.first; i < w.n8; i += 8 * w.stride) {
    float g[8], u[8], d[8], dg[8] = {}, du[8] = {};
    detail::load8(g, gate + i), detail::load8(u, up + i), detail::load8(d, dout + i);
    if (dgate) detail::load8(dg, dgate + i);
    if (dup) detail::load8(du, dup + i);
#pragma unroll
    for (int e = 0; e < 8; ++e) swiglu_grads(dg[e], du[e], d[e], g[e], u[e]);
    if (dgate) detail::store8(dgate + i, dg);
    if (dup) detail::store8(dup + i, du);
  }
  for (int64_t i = w.n8 + w.first; i < n; i += w.stride) {
    float dg = dgate ? detail::load_value(dgate + i) : 0.0f, du = dup ? detail::load_value(dup + i) : 0.0f;
    swiglu_grads(dg, du, dout[i], detail::load_value(gate + i), detail::load_value(up + i));
    if (dgate) detail::store_value(dgate + i, dg);
    if (dup) detail::store_value(dup + i, du);
  }
}

// Threads for n elements, 8 per thread where they go 8 at a time.
unsigned blocks_for(int64_t n, bool vec) { return detail::grid_for(vec ? (n + 7) / 8 : n); }

template <class Act>
void swiglu_forward_as(Act* out, const Act* gate, const Act* up, int N, int F, cudaStream_t stream) {
  const int64_t n = static_cast<int64_t>(N) * F;
  if (n <= 0) return;
  const bool vec = detail::aligned16({out, gate, up});
  swiglu_fwd_kernel<<<blocks_for(n, vec), detail::kThreads, 0, stream>>>(out, gate, up, n, vec);
  ONESTEP_CUDA_LAUNCHED("swiglu_forward");
}
template <class Act, class Grad>
void swiglu_backward_as(Grad* dgate, Grad* dup, const float* dout, const Act* gate, const Act* up, int N, int F,
                        cudaStream_t stream) {
  const int64_t n = static_cast<int64_t>(N) * F;
  if (n <= 0 || (!dgate && !dup)) return;
  const bool vec = detail::aligned16({dgate, dup, dout, gate, up});  // a null gradient is aligned
  swiglu_bwd_kernel<<<blocks_for(n, vec), detail::kThreads, 0, stream>>>(dgate, dup, dout, gate, up, n, vec);
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
