// SGD with momentum (PAPER.md §3) on every parameter: buf = mu buf + g (no dampening; the first step gives
// buf = g); direction d = g + mu buf (Nesterov) or buf; u = lr (d + wd x). Weight decay is decoupled and
// follows decays(): none for norms / 1-D parameters.
#pragma once
#include <vector>

#include "model/params.h"
#include "optim/layout.h"
#include "optim/optimizer.h"

namespace onestep {

struct SgdHyper {
  double lr = 0.1;
  double momentum = 0.9;
  bool nesterov = true;
  double weight_decay = 0.1;
};

// State: "sgd.momentum.<name>" per parameter.
class Sgd final : public optim_detail::PerParamStateOptimizer {
 public:
  Sgd(const ParamTable& table, SgdHyper h);
  void compute_update(float* u, const float* x, const float* g, double lr_scale) override;

 private:
  SgdHyper h_;
};

}  // namespace onestep
