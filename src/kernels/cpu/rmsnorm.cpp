// RMSNorm: out = x * rstd * w with rstd = 1 / sqrt(mean(x^2) + eps).
#include <cmath>

#include "kernels/cpu/ops.h"

namespace onestep::cpu {

void rmsnorm_forward(float* out, float* rstd, const float* x, const float* w, int N, int C, float eps) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    const float* xr = x + static_cast<int64_t>(n) * C;
    float* o = out + static_cast<int64_t>(n) * C;
    float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
    for (int c = 0; c < C; ++c) ss += xr[c] * xr[c];
    const float r = 1.0f / std::sqrt(ss / static_cast<float>(C) + eps);
    if (rstd) rstd[n] = r;
#pragma omp simd
    for (int c = 0; c < C; ++c) o[c] = xr[c] * r * w[c];
  }
}

// With xhat = x * rstd:  dw += sum_n dout * xhat ;
// dx += rstd * (w * dout - xhat * mean_c(w * dout * xhat)).
void rmsnorm_backward(float* dx, float* dw, const float* dout, const float* x, const float* w,
                      const float* rstd, int N, int C) {
  if (dx) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; ++n) {
      const int64_t off = static_cast<int64_t>(n) * C;
      const float* xr = x + off;
      const float* g = dout + off;
      float* d = dx + off;
      const float r = rstd[n];
      float dot = 0.0f;  // sum_c w * dout * x
#pragma omp simd reduction(+ : dot)
      for (int c = 0; c < C; ++c) dot += w[c] * g[c] * xr[c];
      const float k = dot * r * r / static_cast<float>(C);  // mean(w*dout*xhat) * rstd
#pragma omp simd
      for (int c = 0; c < C; ++c) d[c] += r * (w[c] * g[c] - xr[c] * k);
    }
  }
  if (dw) {
    // Channel chunks per thread, rows in order: a fixed summation order for every thread count.
    constexpr int kChunk = 64;
    const int nchunks = (C + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static)
    for (int ch = 0; ch < nchunks; ++ch) {
      const int c0 = ch * kChunk;
      const int len = c0 + kChunk < C ? kChunk : C - c0;
      float acc[kChunk] = {};
      for (int n = 0; n < N; ++n) {
        const int64_t off = static_cast<int64_t>(n) * C + c0;
        const float r = rstd[n];
#pragma omp simd
        for (int c = 0; c < len; ++c) acc[c] += dout[off + c] * x[off + c] * r;
      }
      for (int c = 0; c < len; ++c) dw[c0 + c] += acc[c];
    }
  }
}

}  // namespace onestep::cpu
