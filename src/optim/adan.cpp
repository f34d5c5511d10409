#include "optim/adan.h"

#include <cmath>

#include "optim/adamw.h"
#include "optim/elementwise.h"

namespace onestep {

Adan::Adan(const ParamTable& table, AdanHyper h)
    : PerParamStateOptimizer({table.all(), {"adan.m.", "adan.m_diff.", "adan.n.", "adan.prev_grad."}}), h_(h) {}

void Adan::compute_update(float* u, const float* x, const float* g, double lr_scale) {
  ++t_;
  const double lr = h_.lr * lr_scale;
  const double t = static_cast<double>(t_);
  const float b1 = static_cast<float>(h_.beta1), omb1 = static_cast<float>(1.0 - h_.beta1);
  const float b2 = static_cast<float>(h_.beta2), omb2 = static_cast<float>(1.0 - h_.beta2);
  const float b3 = static_cast<float>(h_.beta3), omb3 = static_cast<float>(1.0 - h_.beta3);
  const float inv_bc1 = static_cast<float>(1.0 / (1.0 - std::pow(h_.beta1, t)));
  const float b2_bc2 = static_cast<float>(h_.beta2 / (1.0 - std::pow(h_.beta2, t)));
  const float inv_bc3 = static_cast<float>(1.0 / (1.0 - std::pow(h_.beta3, t)));
  const float eps = static_cast<float>(h_.eps), lrf = static_cast<float>(lr);
  const bool first = t_ == 1;
  optim_detail::for_each_param(state_.params(), u, x, g, [&](size_t k, const ParamInfo& p, auto view) {
    const double lwd = decays(p) ? lr * h_.weight_decay : 0.0;
    const float lwdf = static_cast<float>(lwd), inv_1p = static_cast<float>(1.0 / (1.0 + lwd));
    const auto [m, md, nn, prev] = state_.slices<4>(k);
    optim_detail::for_each_element(view.n, [=](int64_t i) {
      const float gi = view.g[i];
      const float d = first ? 0.0f : gi - prev[i];
      const float mi = b1 * m[i] + omb1 * gi;
      const float mdi = b2 * md[i] + omb2 * d;
      const float c = gi + b2 * d;
      const float ni = b3 * nn[i] + omb3 * (c * c);
      m[i] = mi;
      md[i] = mdi;
      nn[i] = ni;
      prev[i] = gi;
      const float s = lrf * (mi * inv_bc1 + b2_bc2 * mdi) / (std::sqrt(ni * inv_bc3) + eps);
      view.u[i] = (s + lwdf * view.x[i]) * inv_1p;
    });
  });
}

}  // namespace onestep
