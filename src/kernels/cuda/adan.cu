// Adan (Adan::compute_update, src/optim/adan.cpp): the same per-element expression, PyTorch beta convention;
// the float scalars come from adan_scalars() (optim_cuda.h), derived in double as the CPU derives them.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/optim_cuda.h"

namespace onestep::cuda {

// PAPER.md §3, Adan: moments of g, of d = g_t - g_{t-1} and of (g + b2 d)^2, bias-corrected;
// decoupled weight decay x' = (x - s) / (1 + lr wd), u = x - x' = (s + lr wd x) / (1 + lr wd).
void adan_update(float* u, const float* x, const float* g, float* m, float* m_diff, float* nu, float* prev_grad,
                 int64_t n, const AdanScalars& s, cudaStream_t stream) {
  detail::for_each_element(n, stream, "adan_update", [=] __device__(int64_t i) {
    const float gi = g[i];
    const float d = s.first ? 0.0f : gi - prev_grad[i];
    const float mi = s.beta1 * m[i] + s.one_minus_beta1 * gi;
    const float mdi = s.beta2 * m_diff[i] + s.one_minus_beta2 * d;
    const float c = gi + s.beta2 * d;
    const float ni = s.beta3 * nu[i] + s.one_minus_beta3 * (c * c);
    m[i] = mi;
    m_diff[i] = mdi;
    nu[i] = ni;
    prev_grad[i] = gi;
    const float st = s.lr * (mi * s.inv_bc1 + s.beta2_over_bc2 * mdi) / (sqrtf(ni * s.inv_bc3) + s.eps);
    u[i] = (st + s.lr_wd * x[i]) * s.inv_one_plus_lr_wd;
  });
}

}  // namespace onestep::cuda
