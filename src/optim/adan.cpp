#include "optim/adan.h"

#include <cmath>

#include "optim/adamw.h"
#include "optim/layout.h"

namespace onestep {

Adan::Adan(const ParamTable& table, AdanHyper h) : h_(h), params_(table.all()) {
  std::vector<int64_t> sizes;
  for (const auto& p : params_) sizes.push_back(p.numel);
  const int64_t total = optim_detail::pack(sizes, off_);
  m_.assign(total, 0.0f);
  md_.assign(total, 0.0f);
  n_.assign(total, 0.0f);
  prev_.assign(total, 0.0f);
}

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
  for (size_t k = 0; k < params_.size(); ++k) {
    const ParamInfo& p = params_[k];
    const double lwd = decays(p) ? lr * h_.weight_decay : 0.0;
    const float lwdf = static_cast<float>(lwd), inv_1p = static_cast<float>(1.0 / (1.0 + lwd));
    float* m = m_.data() + off_[k];
    float* md = md_.data() + off_[k];
    float* nn = n_.data() + off_[k];
    float* prev = prev_.data() + off_[k];
    const float* xp = x + p.offset;
    const float* gp = g + p.offset;
    float* up = u + p.offset;
    const int64_t n = p.numel;
#pragma omp parallel for schedule(static) if (n >= 32768)
    for (int64_t i = 0; i < n; ++i) {
      const float gi = gp[i];
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
      up[i] = (s + lwdf * xp[i]) * inv_1p;
    }
  }
}

std::vector<StateBuffer> Adan::state_buffers() {
  std::vector<StateBuffer> out;
  for (size_t k = 0; k < params_.size(); ++k) {
    const ParamInfo& p = params_[k];
    out.push_back({"adan.m." + p.name, m_.data() + off_[k], p.shape});
    out.push_back({"adan.m_diff." + p.name, md_.data() + off_[k], p.shape});
    out.push_back({"adan.n." + p.name, n_.data() + off_[k], p.shape});
    out.push_back({"adan.prev_grad." + p.name, prev_.data() + off_[k], p.shape});
  }
  return out;
}

}  // namespace onestep
