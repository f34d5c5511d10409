// AdamW (PAPER.md §3), as a reusable group (the whole model in an AdamW run; embedding, head and norms in
// a Muon run) and as an Optimizer.
#pragma once
#include <vector>

#include "model/params.h"
#include "optim/layout.h"
#include "optim/optimizer.h"

namespace onestep {

struct AdamWHyper {
  double lr = 3e-3;  // peak lr; multiplied by lr_scale each step
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  double weight_decay = 0.1;  // decoupled; never applied to norm / 1-D parameters
};

// AdamW on a subset of the parameters. State (m, v) is stored compactly per parameter.
class AdamWGroup {
 public:
  AdamWGroup(std::vector<ParamInfo> params, AdamWHyper h);
  // Writes u on the group's slices of the flat buffers. t is the 1-based number of this step.
  void update(float* u, const float* x, const float* g, double lr_scale, int64_t t);
  // Appends "adamw.m.<name>" and "adamw.v.<name>" for every parameter of the group.
  void append_state(std::vector<StateBuffer>& out);
  const std::vector<ParamInfo>& params() const { return state_.params(); }

 private:
  AdamWHyper h_;
  optim_detail::PerParamState state_;  // m, v
};

// Weight decay applies to 2-D weights (matrices, embedding, head) but not to norm gains or any other 1-D
// parameter: the standard LLM practice (decaying a gain towards 0 only fights the normalisation).
bool decays(const ParamInfo& p);

class AdamW final : public Optimizer {
 public:
  AdamW(const ParamTable& table, AdamWHyper h);
  void compute_update(float* u, const float* x, const float* g, double lr_scale) override;
  std::vector<StateBuffer> state_buffers() override;

 private:
  AdamWGroup group_;
};

}  // namespace onestep
