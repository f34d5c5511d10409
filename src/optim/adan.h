// Adan (PAPER.md §3) on every parameter, in the form of the official PyTorch implementation
// (sail-sg/Adan, adan.py, _single_tensor_adan with no_prox = False). PyTorch convention: each beta here is
// 1 minus the Adan paper's (paper (0.02, 0.08, 0.01) = here (0.98, 0.92, 0.99)). At step t:
//   d   = g_t - g_{t-1}                       (no g_0: the first step uses g_{t-1} = g_t, so d = 0)
//   m   = b1 m   + (1-b1) g_t
//   m_d = b2 m_d + (1-b2) d
//   n   = b3 n   + (1-b3) (g_t + b2 d)^2        (b2 d = (1 - beta2_paper) (g_t - g_{t-1}))
//   s   = lr (m / bc1 + b2 m_d / bc2) / (sqrt(n / bc3) + eps),   bc_i = 1 - b_i^t
//   x'  = (x - s) / (1 + lr wd)                 (decoupled, "proximal" weight decay)
//   u   = x - x' = (s + lr wd x) / (1 + lr wd)  (computed in this cancellation-free form)
// Weight decay follows decays(): none for norms / 1-D parameters.
#pragma once
#include <vector>

#include "model/params.h"
#include "optim/layout.h"
#include "optim/optimizer.h"

namespace onestep {

struct AdanHyper {
  double lr = 3e-3;
  double beta1 = 0.98, beta2 = 0.92, beta3 = 0.99, eps = 1e-8;
  double weight_decay = 0.1;
};

// State: "adan.m.<name>", "adan.m_diff.<name>", "adan.n.<name>", "adan.prev_grad.<name>" per parameter.
class Adan final : public optim_detail::PerParamStateOptimizer {
 public:
  Adan(const ParamTable& table, AdanHyper h);
  void compute_update(float* u, const float* x, const float* g, double lr_scale) override;

 private:
  AdanHyper h_;
};

}  // namespace onestep
