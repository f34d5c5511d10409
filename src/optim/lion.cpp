#include "optim/lion.h"

#include "optim/adamw.h"
#include "optim/elementwise.h"

namespace onestep {

Lion::Lion(const ParamTable& table, LionHyper h) : PerParamStateOptimizer({table.all(), {"lion.m."}}), h_(h) {}

void Lion::compute_update(float* u, const float* x, const float* g, double lr_scale) {
  ++t_;
  const double lr = h_.lr * lr_scale;
  const float b1 = static_cast<float>(h_.beta1), omb1 = static_cast<float>(1.0 - h_.beta1);
  const float b2 = static_cast<float>(h_.beta2), omb2 = static_cast<float>(1.0 - h_.beta2);
  const float lrf = static_cast<float>(lr);
  optim_detail::for_each_param(state_.params(), u, x, g, [&](size_t k, const ParamInfo& p, auto view) {
    const float wd = decays(p) ? static_cast<float>(h_.weight_decay) : 0.0f;
    const auto [m] = state_.slices<1>(k);
    optim_detail::for_each_element(view.n, [=](int64_t i) {
      const float gi = view.g[i];
      const float c = b1 * m[i] + omb1 * gi;
      const float s = static_cast<float>((c > 0.0f) - (c < 0.0f));
      view.u[i] = lrf * (s + wd * view.x[i]);
      m[i] = b2 * m[i] + omb2 * gi;
    });
  });
}

}  // namespace onestep
