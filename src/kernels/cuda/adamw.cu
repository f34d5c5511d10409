// The AdamW family: AdamW (AdamWGroup::update, src/optim/adamw.cpp) and MARS in its AdamW form
// (Mars::compute_update, src/optim/mars.cpp), the same per-element expressions as the CPU's; the float
// scalars come from adamw_scalars() / mars_scalars() (optim_cuda.h), derived in double as the CPU derives
// them. sqrtf and '/' are IEEE-exact in CUDA (no --use_fast_math), so results match the CPU to rounding
// of FMA contraction (and, for MARS, to the last bits of the double norm of c).
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/cuda/optim_cuda.h"

namespace onestep::cuda {

namespace {

// PAPER.md §3, AdamW: m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; u = lr (m^ / (sqrt(v^) + eps) + wd x).
// Updates m[i], v[i]; returns u[i]. MARS runs it on its corrected gradient c.
__device__ inline float adamw_element(float gi, float* m, float* v, float xi, int64_t i, const AdamWScalars& s) {
  const float mi = s.beta1 * m[i] + s.one_minus_beta1 * gi;
  const float vi = s.beta2 * v[i] + s.one_minus_beta2 * (gi * gi);
  m[i] = mi;
  v[i] = vi;
  const float mhat = mi * s.inv_bc1;
  const float vhat = vi * s.inv_bc2;
  return s.lr * (mhat / (sqrtf(vhat) + s.eps) + s.weight_decay * xi);
}

}  // namespace

void adamw_update(float* u, const float* x, const float* g, float* m, float* v, int64_t n, const AdamWScalars& s,
                  cudaStream_t stream) {
  detail::for_each_element(n, stream, "adamw_update", [=] __device__(int64_t i) {
    u[i] = adamw_element(g[i], m, v, x[i], i, s);
  });
}

// PAPER.md §3, MARS: c = g_t + gamma b1/(1-b1) (g_t - g_{t-1}); c /= ||c|| if ||c|| > 1; AdamW on c.
void mars_update(float* u, const float* x, const float* g, float* m, float* v, float* prev_grad, int64_t n,
                 const MarsScalars& s, cudaStream_t stream) {
  if (n <= 0) return;
  const float corr = s.corr;
  detail::for_each_element(n, stream, "mars_update(c)", [=] __device__(int64_t i) {
    const float gi = g[i];
    u[i] = gi + corr * (gi - prev_grad[i]);
    prev_grad[i] = gi;
  });
  // The norm of c and the scale cs, on the device: [0] = sum of squares (double), then cs (float).
  detail::Scratch scratch(2 * sizeof(double), stream);
  double* sumsq = scratch.as<double>();
  float* cs = reinterpret_cast<float*>(sumsq + 1);
  sum_squares_async(sumsq, u, n, stream);
  detail::run_single(stream, "mars_update(norm)", [=] __device__() {
    const double norm = sqrt(*sumsq);
    *cs = norm > 1.0 ? static_cast<float>(1.0 / norm) : 1.0f;
  });
  const AdamWScalars a = s.adam;
  detail::for_each_element(n, stream, "mars_update(adamw)", [=] __device__(int64_t i) {
    const float c = u[i] * *cs;
    u[i] = adamw_element(c, m, v, x[i], i, a);
  });
}

}  // namespace onestep::cuda
