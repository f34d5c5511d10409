// AdamW's element-wise update, the same per-element formula as AdamWGroup::update (src/optim/adamw.cpp);
// the float scalars come from adamw_scalars() (ops_cuda.h), derived in double as the CPU derives them.
// sqrtf and '/' are IEEE-exact in CUDA (no --use_fast_math), so results match the CPU to rounding of
// FMA contraction.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops_cuda.h"

namespace onestep::cuda {

namespace {
__global__ void adamw_kernel(float* u, const float* x, const float* g, float* m, float* v, int64_t n,
                             AdamWScalars s) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float gi = g[i];
    const float mi = s.beta1 * m[i] + s.one_minus_beta1 * gi;
    const float vi = s.beta2 * v[i] + s.one_minus_beta2 * (gi * gi);
    m[i] = mi;
    v[i] = vi;
    const float mhat = mi * s.inv_bc1;
    const float vhat = vi * s.inv_bc2;
    u[i] = s.lr * (mhat / (sqrtf(vhat) + s.eps) + s.weight_decay * x[i]);
  }
}
}  // namespace

void adamw_update(float* u, const float* x, const float* g, float* m, float* v, int64_t n, const AdamWScalars& s,
                  cudaStream_t stream) {
  if (n <= 0) return;
  adamw_kernel<<<detail::grid_for(n), detail::kThreads, 0, stream>>>(u, x, g, m, v, n, s);
  ONESTEP_CUDA_LAUNCHED("adamw_update");
}

}  // namespace onestep::cuda
