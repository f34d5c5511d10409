// The delay corrections of optimizer_step (src/train/stage_state.cpp), per element as the CPU applies them.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/optim_cuda.h"

namespace onestep::cuda {

// PAPER.md §2, EF: x <- x - u_t - c (u_t - u_{t-1}); the stored u_{t-1} is the uncorrected update.
void ef_apply_update(float* x, const float* u, float* u_prev, int64_t n, float c, cudaStream_t stream) {
  detail::for_each_element(n, stream, "ef_apply_update", [=] __device__(int64_t i) {
    const float ui = u[i];
    x[i] -= ui + c * (ui - u_prev[i]);
    u_prev[i] = ui;
  });
}

// DC-ASGD: g <- g + lambda g g (w - stale).
void dc_asgd_compensate(float* g, const float* w, const float* stale, int64_t n, float lambda,
                        cudaStream_t stream) {
  detail::for_each_element(n, stream, "dc_asgd_compensate", [=] __device__(int64_t i) {
    g[i] += lambda * g[i] * g[i] * (w[i] - stale[i]);
  });
}

}  // namespace onestep::cuda
