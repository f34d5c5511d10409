#include "optim/sgd.h"

#include "optim/adamw.h"
#include "optim/layout.h"

namespace onestep {

Sgd::Sgd(const ParamTable& table, SgdHyper h) : h_(h), params_(table.all()) {
  std::vector<int64_t> sizes;
  for (const auto& p : params_) sizes.push_back(p.numel);
  buf_.assign(optim_detail::pack(sizes, off_), 0.0f);
}

void Sgd::compute_update(float* u, const float* x, const float* g, double lr_scale) {
  ++t_;
  const float lrf = static_cast<float>(h_.lr * lr_scale);
  const float mu = static_cast<float>(h_.momentum);
  const bool nest = h_.nesterov;
  for (size_t k = 0; k < params_.size(); ++k) {
    const ParamInfo& p = params_[k];
    const float wd = decays(p) ? static_cast<float>(h_.weight_decay) : 0.0f;
    float* b = buf_.data() + off_[k];
    const float* xp = x + p.offset;
    const float* gp = g + p.offset;
    float* up = u + p.offset;
    const int64_t n = p.numel;
#pragma omp parallel for schedule(static) if (n >= 32768)
    for (int64_t i = 0; i < n; ++i) {
      const float bi = mu * b[i] + gp[i];
      b[i] = bi;
      const float d = nest ? gp[i] + mu * bi : bi;
      up[i] = lrf * (d + wd * xp[i]);
    }
  }
}

std::vector<StateBuffer> Sgd::state_buffers() {
  std::vector<StateBuffer> out;
  for (size_t k = 0; k < params_.size(); ++k)
    out.push_back({"sgd.momentum." + params_[k].name, buf_.data() + off_[k], params_[k].shape});
  return out;
}

}  // namespace onestep
