// Lion (Lion::compute_update, src/optim/lion.cpp): the same per-element expression; the float scalars come
// from lion_scalars() (optim_cuda.h).
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/optim_cuda.h"

namespace onestep::cuda {

// PAPER.md §3, Lion: u = lr (sign(b1 m + (1-b1) g) + wd x), then m = b2 m + (1-b2) g.
void lion_update(float* u, const float* x, const float* g, float* m, int64_t n, const LionScalars& s,
                 cudaStream_t stream) {
  detail::for_each_element(n, stream, "lion_update", [=] __device__(int64_t i) {
    const float gi = g[i];
    const float c = s.beta1 * m[i] + s.one_minus_beta1 * gi;
    const float sg = static_cast<float>((c > 0.0f) - (c < 0.0f));
    u[i] = s.lr * (sg + s.weight_decay * x[i]);
    m[i] = s.beta2 * m[i] + s.one_minus_beta2 * gi;
  });
}

}  // namespace onestep::cuda
