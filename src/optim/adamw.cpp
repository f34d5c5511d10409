#include "optim/adamw.h"

#include <cmath>

namespace onestep {

bool decays(const ParamInfo& p) { return p.role != ParamRole::norm && p.shape.size() >= 2; }

AdamWGroup::AdamWGroup(std::vector<ParamInfo> params, AdamWHyper h) : params_(std::move(params)), h_(h) {
  int64_t total = 0;
  for (const auto& p : params_) {
    state_off_.push_back(total);
    total += (p.numel + 15) / 16 * 16;
  }
  m_.assign(total, 0.0f);
  v_.assign(total, 0.0f);
}

void AdamWGroup::update(float* u, const float* x, const float* g, double lr_scale, int64_t t) {
  const double lr = h_.lr * lr_scale;
  const double bc1 = 1.0 - std::pow(h_.beta1, static_cast<double>(t));
  const double bc2 = 1.0 - std::pow(h_.beta2, static_cast<double>(t));
  const float b1 = static_cast<float>(h_.beta1), omb1 = static_cast<float>(1.0 - h_.beta1);
  const float b2 = static_cast<float>(h_.beta2), omb2 = static_cast<float>(1.0 - h_.beta2);
  const float inv_bc1 = static_cast<float>(1.0 / bc1), inv_bc2 = static_cast<float>(1.0 / bc2);
  const float eps = static_cast<float>(h_.eps), lrf = static_cast<float>(lr);
  for (size_t k = 0; k < params_.size(); ++k) {
    const ParamInfo& p = params_[k];
    const float wd = decays(p) ? static_cast<float>(h_.weight_decay) : 0.0f;
    float* m = m_.data() + state_off_[k];
    float* v = v_.data() + state_off_[k];
    const float* xp = x + p.offset;
    const float* gp = g + p.offset;
    float* up = u + p.offset;
    const int64_t n = p.numel;
#pragma omp parallel for schedule(static) if (n >= 32768)
    for (int64_t i = 0; i < n; ++i) {
      const float gi = gp[i];
      const float mi = b1 * m[i] + omb1 * gi;
      const float vi = b2 * v[i] + omb2 * (gi * gi);
      m[i] = mi;
      v[i] = vi;
      const float mhat = mi * inv_bc1;
      const float vhat = vi * inv_bc2;
      up[i] = lrf * (mhat / (std::sqrt(vhat) + eps) + wd * xp[i]);
    }
  }
}

void AdamWGroup::append_state(std::vector<StateBuffer>& out) {
  for (size_t k = 0; k < params_.size(); ++k) {
    const ParamInfo& p = params_[k];
    out.push_back({"adamw.m." + p.name, m_.data() + state_off_[k], p.shape});
    out.push_back({"adamw.v." + p.name, v_.data() + state_off_[k], p.shape});
  }
}

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
