// MARS, AdamW form (PAPER.md §3; the "mars-adamw" variant of the official implementation), on every 2-D
// parameter (matrices, embedding, head). At step t, per parameter tensor:
//   c = g_t + gamma b1/(1-b1) (g_t - g_{t-1})      (no g_0: the first step uses g_{t-1} = g_t, so c = g_t)
//   if ||c||_2 > 1: c = c / ||c||_2                (Frobenius norm of this tensor's c)
//   m = b1 m + (1-b1) c;  v = b2 v + (1-b2) c^2;  u = lr (m^ / (sqrt(v^) + eps) + wd x)  (bias-corrected)
// 1-D parameters (norms) go to a plain AdamW group with the same lr, betas and eps (as in the official
// code, which keeps MARS for 2-D tensors and AdamW for 1-D ones); they get no weight decay.
#pragma once
#include <vector>

#include "optim/adamw.h"
#include "optim/layout.h"
#include "optim/optimizer.h"

namespace onestep {

struct MarsHyper {
  double lr = 3e-3;
  double beta1 = 0.95, beta2 = 0.99, eps = 1e-8;
  double gamma = 0.025;
  double weight_decay = 0.1;
};

bool mars_takes(const ParamInfo& p);  // 2-D parameters

class Mars final : public Optimizer {
 public:
  Mars(const ParamTable& table, MarsHyper h);
  void compute_update(float* u, const float* x, const float* g, double lr_scale) override;
  // "mars.m.<name>", "mars.v.<name>", "mars.prev_grad.<name>" per 2-D parameter, then the AdamW group's.
  std::vector<StateBuffer> state_buffers() override;

 private:
  MarsHyper h_;
  optim_detail::PerParamState state_;  // m, v, prev_grad of the 2-D parameters
  AdamWGroup adamw_;
};

}  // namespace onestep
