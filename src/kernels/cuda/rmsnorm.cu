// RMSNorm: out = x * rstd * w with rstd = 1 / sqrt(mean(x^2) + eps). One block per row; the dw reduction
// over rows is two-pass (fixed row chunks, then the chunks in order), so it is deterministic.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops_cuda.h"

namespace onestep::cuda {

namespace {
constexpr int kRowsPerChunk = 64;  // rows summed by one thread of the dw partial pass

template <class Out>  // float, or __nv_bfloat16 (bf16 operand storage)
__global__ void rmsnorm_fwd_kernel(Out* out, float* rstd, const float* x, const float* w, int C, float eps) {
  const int64_t off = static_cast<int64_t>(blockIdx.x) * C;
  const float* xr = x + off;
  float ss = 0.0f;
  for (int c = threadIdx.x; c < C; c += blockDim.x) ss = fmaf(xr[c], xr[c], ss);
  ss = detail::block_sum(ss);
  const float r = 1.0f / sqrtf(ss / static_cast<float>(C) + eps);
  if (rstd && threadIdx.x == 0) rstd[blockIdx.x] = r;
  for (int c = threadIdx.x; c < C; c += blockDim.x) detail::store_value(out + off + c, xr[c] * r * w[c]);
}

// dx += rstd * (w * dout - x * k),  k = sum_c(w * dout * x) * rstd^2 / C.
__global__ void rmsnorm_bwd_dx_kernel(float* dx, const float* dout, const float* x, const float* w,
                                      const float* rstd, int C) {
  const int64_t off = static_cast<int64_t>(blockIdx.x) * C;
  const float r = rstd[blockIdx.x];
  float dot = 0.0f;
  for (int c = threadIdx.x; c < C; c += blockDim.x) dot = fmaf(w[c] * dout[off + c], x[off + c], dot);
  dot = detail::block_sum(dot);
  const float k = dot * r * r / static_cast<float>(C);
  for (int c = threadIdx.x; c < C; c += blockDim.x)
    dx[off + c] += r * (w[c] * dout[off + c] - x[off + c] * k);
}

// partial[chunk, c] = sum over the chunk's rows, in order, of dout * x * rstd.
__global__ void rmsnorm_bwd_dw_partial_kernel(float* partial, const float* dout, const float* x, const float* rstd,
                                              int N, int C) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  const int n0 = blockIdx.y * kRowsPerChunk;
  const int n1 = min(N, n0 + kRowsPerChunk);
  float acc = 0.0f;
  for (int n = n0; n < n1; ++n) {
    const int64_t i = static_cast<int64_t>(n) * C + c;
    acc += dout[i] * x[i] * rstd[n];
  }
  partial[static_cast<int64_t>(blockIdx.y) * C + c] = acc;
}

__global__ void rmsnorm_bwd_dw_final_kernel(float* dw, const float* partial, int nchunks, int C) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float acc = 0.0f;
  for (int k = 0; k < nchunks; ++k) acc += partial[static_cast<int64_t>(k) * C + c];
  dw[c] += acc;
}

template <class Out>
void rmsnorm_forward_to(Out* out, float* rstd, const float* x, const float* w, int N, int C, float eps,
                        cudaStream_t stream) {
  if (N <= 0 || C <= 0) return;
  rmsnorm_fwd_kernel<<<N, detail::kThreads, 0, stream>>>(detail::device_type(out), rstd, x, w, C, eps);
  ONESTEP_CUDA_LAUNCHED("rmsnorm_forward");
}
}  // namespace

void rmsnorm_forward(float* out, float* rstd, const float* x, const float* w, int N, int C, float eps,
                     cudaStream_t stream) {
  rmsnorm_forward_to(out, rstd, x, w, N, C, eps, stream);
}
void rmsnorm_forward(onestep::bf16* out, float* rstd, const float* x, const float* w, int N, int C, float eps,
                     cudaStream_t stream) {
  rmsnorm_forward_to(out, rstd, x, w, N, C, eps, stream);
}

void rmsnorm_backward(float* dx, float* dw, const float* dout, const float* x, const float* w, const float* rstd,
                      int N, int C, cudaStream_t stream) {
  if (N <= 0 || C <= 0) return;
  if (dx) {
    rmsnorm_bwd_dx_kernel<<<N, detail::kThreads, 0, stream>>>(dx, dout, x, w, rstd, C);
    ONESTEP_CUDA_LAUNCHED("rmsnorm_backward(dx)");
  }
  if (dw) {
    const int nchunks = (N + kRowsPerChunk - 1) / kRowsPerChunk;
    if (nchunks > 65535) throw std::runtime_error("rmsnorm_backward: too many rows");
    detail::Scratch partial(sizeof(float) * static_cast<size_t>(nchunks) * C, stream);
    const unsigned cblocks = (C + detail::kThreads - 1) / detail::kThreads;
    rmsnorm_bwd_dw_partial_kernel<<<dim3(cblocks, nchunks), detail::kThreads, 0, stream>>>(
        partial.as<float>(), dout, x, rstd, N, C);
    ONESTEP_CUDA_LAUNCHED("rmsnorm_backward(dw partial)");
    rmsnorm_bwd_dw_final_kernel<<<cblocks, detail::kThreads, 0, stream>>>(dw, partial.as<float>(), nchunks, C);
    ONESTEP_CUDA_LAUNCHED("rmsnorm_backward(dw)");
  }
}

}  // namespace onestep::cuda
