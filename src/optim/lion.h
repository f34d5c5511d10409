// Lion (PAPER.md §3) on every parameter: u = lr (sign(b1 m + (1-b1) g) + wd x), then
// m = b2 m + (1-b2) g. sign(0) = 0. Weight decay follows decays(): none for norms / 1-D parameters.
#pragma once
#include <vector>

#include "model/params.h"
#include "optim/layout.h"
#include "optim/optimizer.h"

namespace onestep {

struct LionHyper {
  double lr = 3e-4;
  double beta1 = 0.9, beta2 = 0.99;
  double weight_decay = 0.1;
};

// State: "lion.m.<name>" per parameter.
class Lion final : public optim_detail::PerParamStateOptimizer {
 public:
  Lion(const ParamTable& table, LionHyper h);
  void compute_update(float* u, const float* x, const float* g, double lr_scale) override;

 private:
  LionHyper h_;
};

}  // namespace onestep
