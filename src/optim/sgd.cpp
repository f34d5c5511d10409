#include "optim/sgd.h"

#include "optim/adamw.h"
#include "optim/elementwise.h"

namespace onestep {

Sgd::Sgd(const ParamTable& table, SgdHyper h) : PerParamStateOptimizer({table.all(), {"sgd.momentum."}}), h_(h) {}

void Sgd::compute_update(float* u, const float* x, const float* g, double lr_scale) {
  ++t_;
  const float lrf = static_cast<float>(h_.lr * lr_scale);
  const float mu = static_cast<float>(h_.momentum);
  const bool nest = h_.nesterov;
  optim_detail::for_each_param(state_.params(), u, x, g, [&](size_t k, const ParamInfo& p, auto view) {
    const float wd = decays(p) ? static_cast<float>(h_.weight_decay) : 0.0f;
    const auto [b] = state_.slices<1>(k);
    optim_detail::for_each_element(view.n, [=](int64_t i) {
      const float bi = mu * b[i] + view.g[i];
      b[i] = bi;
      const float d = nest ? view.g[i] + mu * bi : bi;
      view.u[i] = lrf * (d + wd * view.x[i]);
    });
  });
}

}  // namespace onestep
