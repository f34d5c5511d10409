#include "optim/mars.h"

#include <cmath>

#include "optim/elementwise.h"
#include "optim/reduce.h"

namespace onestep {

bool mars_takes(const ParamInfo& p) { return p.shape.size() == 2; }

Mars::Mars(const ParamTable& table, MarsHyper h)
    : h_(h),
      state_(optim_detail::select_params(table, mars_takes, true), {"mars.m.", "mars.v.", "mars.prev_grad."}),
      adamw_(optim_detail::select_params(table, mars_takes, false), {h.lr, h.beta1, h.beta2, h.eps, h.weight_decay}) {}

void Mars::compute_update(float* u, const float* x, const float* g, double lr_scale) {
  ++t_;
  const double lr = h_.lr * lr_scale;
  const double t = static_cast<double>(t_);
  const float b1 = static_cast<float>(h_.beta1), omb1 = static_cast<float>(1.0 - h_.beta1);
  const float b2 = static_cast<float>(h_.beta2), omb2 = static_cast<float>(1.0 - h_.beta2);
  const float inv_bc1 = static_cast<float>(1.0 / (1.0 - std::pow(h_.beta1, t)));
  const float inv_bc2 = static_cast<float>(1.0 / (1.0 - std::pow(h_.beta2, t)));
  const float eps = static_cast<float>(h_.eps), lrf = static_cast<float>(lr);
  const float corr = t_ == 1 ? 0.0f : static_cast<float>(h_.gamma * h_.beta1 / (1.0 - h_.beta1));
  optim_detail::for_each_param(state_.params(), u, x, g, [&](size_t k, const ParamInfo& p, auto view) {
    const float wd = decays(p) ? static_cast<float>(h_.weight_decay) : 0.0f;
    const auto [m, v, prev] = state_.slices<3>(k);
    float* up = view.u;  // holds c first
    optim_detail::for_each_element(view.n, [=](int64_t i) {
      const float gi = view.g[i];
      up[i] = gi + corr * (gi - prev[i]);
      prev[i] = gi;
    });
    const double norm = std::sqrt(optim_detail::sum_squares(up, view.n));
    const float cs = norm > 1.0 ? static_cast<float>(1.0 / norm) : 1.0f;
    optim_detail::for_each_element(view.n, [=](int64_t i) {
      const float c = up[i] * cs;
      const float mi = b1 * m[i] + omb1 * c;
      const float vi = b2 * v[i] + omb2 * (c * c);
      m[i] = mi;
      v[i] = vi;
      up[i] = lrf * ((mi * inv_bc1) / (std::sqrt(vi * inv_bc2) + eps) + wd * view.x[i]);
    });
  });
  adamw_.update(u, x, g, lr_scale, t_);
}

std::vector<StateBuffer> Mars::state_buffers() {
  std::vector<StateBuffer> out;
  state_.append(out);
  adamw_.append_state(out);
  return out;
}

}  // namespace onestep
