#include "optim/adamw.h"

#include <cmath>

#include "optim/elementwise.h"

namespace onestep {

bool decays(const ParamInfo& p) { return p.role != ParamRole::norm && p.shape.size() >= 2; }

AdamWGroup::AdamWGroup(std::vector<ParamInfo> params, AdamWHyper h)
    : h_(h), state_(std::move(params), {"adamw.m.", "adamw.v."}) {}

void AdamWGroup::update(float* u, const float* x, const float* g, double lr_scale, int64_t t) {
  const double lr = h_.lr * lr_scale;
  const double bc1 = 1.0 - std::pow(h_.beta1, static_cast<double>(t));
  const double bc2 = 1.0 - std::pow(h_.beta2, static_cast<double>(t));
  const float b1 = static_cast<float>(h_.beta1), omb1 = static_cast<float>(1.0 - h_.beta1);
  const float b2 = static_cast<float>(h_.beta2), omb2 = static_cast<float>(1.0 - h_.beta2);
  const float inv_bc1 = static_cast<float>(1.0 / bc1), inv_bc2 = static_cast<float>(1.0 / bc2);
  const float eps = static_cast<float>(h_.eps), lrf = static_cast<float>(lr);
  optim_detail::for_each_param(state_.params(), u, x, g, [&](size_t k, const ParamInfo& p, auto view) {
    const float wd = decays(p) ? static_cast<float>(h_.weight_decay) : 0.0f;
    const auto [m, v] = state_.slices<2>(k);
    optim_detail::for_each_element(view.n, [=](int64_t i) {
      const float gi = view.g[i];
      const float mi = b1 * m[i] + omb1 * gi;
      const float vi = b2 * v[i] + omb2 * (gi * gi);
      m[i] = mi;
      v[i] = vi;
      const float mhat = mi * inv_bc1;
      const float vhat = vi * inv_bc2;
      view.u[i] = lrf * (mhat / (std::sqrt(vhat) + eps) + wd * view.x[i]);
    });
  });
}

void AdamWGroup::append_state(std::vector<StateBuffer>& out) { state_.append(out); }

AdamW::AdamW(const ParamTable& table, AdamWHyper h) : group_(table.all(), h) {}

void AdamW::compute_update(float* u, const float* x, const float* g, double lr_scale) {
  ++t_;
  group_.update(u, x, g, lr_scale, t_);
}

std::vector<StateBuffer> AdamW::state_buffers() {
  std::vector<StateBuffer> out;
  group_.append_state(out);
  return out;
}

}  // namespace onestep
