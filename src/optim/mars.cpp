#include "optim/mars.h"

#include <cmath>

#include "optim/layout.h"
#include "optim/reduce.h"

namespace onestep {

bool mars_takes(const ParamInfo& p) { return p.shape.size() == 2; }

namespace {

std::vector<ParamInfo> select(const ParamTable& t, bool want_mars) {
  std::vector<ParamInfo> out;
  for (const auto& p : t.all())
    if (mars_takes(p) == want_mars) out.push_back(p);
  return out;
}

}  // namespace

Mars::Mars(const ParamTable& table, MarsHyper h)
    : h_(h), params_(select(table, true)), adamw_(select(table, false), {h.lr, h.beta1, h.beta2, h.eps, h.weight_decay}) {
  std::vector<int64_t> sizes;
  for (const auto& p : params_) sizes.push_back(p.numel);
  const int64_t total = optim_detail::pack(sizes, off_);
  m_.assign(total, 0.0f);
  v_.assign(total, 0.0f);
  prev_.assign(total, 0.0f);
}

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
  for (size_t k = 0; k < params_.size(); ++k) {
    const ParamInfo& p = params_[k];
    const float wd = decays(p) ? static_cast<float>(h_.weight_decay) : 0.0f;
    float* m = m_.data() + off_[k];
    float* v = v_.data() + off_[k];
    float* prev = prev_.data() + off_[k];
    const float* xp = x + p.offset;
    const float* gp = g + p.offset;
    float* up = u + p.offset;  // holds c first
    const int64_t n = p.numel;
#pragma omp parallel for schedule(static) if (n >= 32768)
    for (int64_t i = 0; i < n; ++i) {
      const float gi = gp[i];
      up[i] = gi + corr * (gi - prev[i]);
      prev[i] = gi;
    }
    const double norm = std::sqrt(optim_detail::sum_squares(up, n));
    const float cs = norm > 1.0 ? static_cast<float>(1.0 / norm) : 1.0f;
#pragma omp parallel for schedule(static) if (n >= 32768)
    for (int64_t i = 0; i < n; ++i) {
      const float c = up[i] * cs;
      const float mi = b1 * m[i] + omb1 * c;
      const float vi = b2 * v[i] + omb2 * (c * c);
      m[i] = mi;
      v[i] = vi;
      up[i] = lrf * ((mi * inv_bc1) / (std::sqrt(vi * inv_bc2) + eps) + wd * xp[i]);
    }
  }
  adamw_.update(u, x, g, lr_scale, t_);
}

std::vector<StateBuffer> Mars::state_buffers() {
  std::vector<StateBuffer> out;
  for (size_t k = 0; k < params_.size(); ++k) {
    const ParamInfo& p = params_[k];
    out.push_back({"mars.m." + p.name, m_.data() + off_[k], p.shape});
    out.push_back({"mars.v." + p.name, v_.data() + off_[k], p.shape});
    out.push_back({"mars.prev_grad." + p.name, prev_.data() + off_[k], p.shape});
  }
  adamw_.append_state(out);
  return out;
}

}  // namespace onestep
