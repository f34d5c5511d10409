#include "optim/lion.h"

#include "optim/adamw.h"
#include "optim/layout.h"

namespace onestep {

Lion::Lion(const ParamTable& table, LionHyper h) : h_(h), params_(table.all()) {
  std::vector<int64_t> sizes;
  for (const auto& p : params_) sizes.push_back(p.numel);
  m_.assign(optim_detail::pack(sizes, off_), 0.0f);
}

void Lion::compute_update(float* u, const float* x, const float* g, double lr_scale) {
  ++t_;
  const double lr = h_.lr * lr_scale;
  const float b1 = static_cast<float>(h_.beta1), omb1 = static_cast<float>(1.0 - h_.beta1);
  const float b2 = static_cast<float>(h_.beta2), omb2 = static_cast<float>(1.0 - h_.beta2);
  const float lrf = static_cast<float>(lr);
  for (size_t k = 0; k < params_.size(); ++k) {
    const ParamInfo& p = params_[k];
    const float wd = decays(p) ? static_cast<float>(h_.weight_decay) : 0.0f;
    float* m = m_.data() + off_[k];
    const float* xp = x + p.offset;
    const float* gp = g + p.offset;
    float* up = u + p.offset;
    const int64_t n = p.numel;
#pragma omp parallel for schedule(static) if (n >= 32768)
    for (int64_t i = 0; i < n; ++i) {
      const float gi = gp[i];
      const float c = b1 * m[i] + omb1 * gi;
      const float s = static_cast<float>((c > 0.0f) - (c < 0.0f));
      up[i] = lrf * (s + wd * xp[i]);
      m[i] = b2 * m[i] + omb2 * gi;
    }
  }
}

std::vector<StateBuffer> Lion::state_buffers() {
  std::vector<StateBuffer> out;
  for (size_t k = 0; k < params_.size(); ++k)
    out.push_back({"lion.m." + params_[k].name, m_.data() + off_[k], params_[k].shape});
  return out;
}

}  // namespace onestep
