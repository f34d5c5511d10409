#include "optim/muon.h"

#include <algorithm>
#include <cmath>

namespace onestep {

bool muon_takes(const ParamInfo& p) { return p.role == ParamRole::matrix && p.shape.size() == 2; }

double muon_scale(int64_t rows, int64_t cols, bool adamw_rms) {
  if (adamw_rms) return 0.2 * std::sqrt(static_cast<double>(std::max(rows, cols)));
  return std::sqrt(std::max(1.0, static_cast<double>(rows) / static_cast<double>(cols)));
}

static std::vector<ParamInfo> select(const ParamTable& t, bool want_muon) {
  std::vector<ParamInfo> out;
  for (const auto& p : t.all())
    if (muon_takes(p) == want_muon) out.push_back(p);
  return out;
}

Muon::Muon(const ParamTable& table, MuonHyper h, AdamWHyper adamw)
    : h_(h), mats_(select(table, true)), adamw_(select(table, false), adamw) {
  int64_t total = 0, max_numel = 0;
  for (const auto& p : mats_) {
    mom_off_.push_back(total);
    total += (p.numel + 15) / 16 * 16;
    max_numel = std::max(max_numel, p.numel);
    ws_.reserve(p.rows(), p.cols());
  }
  mom_.assign(total, 0.0f);
  q_.assign(max_numel, 0.0f);
}

void Muon::compute_update(float* u, const float* x, const float* g, double lr_scale) {
  ++t_;
  const double lr = h_.lr * lr_scale;
  const float mu = static_cast<float>(h_.momentum);
  for (size_t k = 0; k < mats_.size(); ++k) {
    const ParamInfo& p = mats_[k];
    const int64_t n = p.numel;
    float* B = mom_.data() + mom_off_[k];
    const float* gp = g + p.offset;
    float* q = q_.data();
    const bool nest = h_.nesterov;
#pragma omp parallel for schedule(static) if (n >= 65536)
    for (int64_t i = 0; i < n; ++i) {
      const float b = mu * B[i] + gp[i];
      B[i] = b;
      q[i] = nest ? gp[i] + mu * b : b;
    }
    float* up = u + p.offset;
    newton_schulz(up, q, static_cast<int>(p.rows()), static_cast<int>(p.cols()), h_.ns_steps,
                  static_cast<float>(h_.eps), ws_);
    const float a = static_cast<float>(lr * muon_scale(p.rows(), p.cols(), h_.adamw_rms_scale));
    const float d = static_cast<float>(lr * h_.weight_decay);
    const float* xp = x + p.offset;
#pragma omp parallel for schedule(static) if (n >= 65536)
    for (int64_t i = 0; i < n; ++i) up[i] = a * up[i] + d * xp[i];
  }
  adamw_.update(u, x, g, lr_scale, t_);
}

std::vector<StateBuffer> Muon::state_buffers() {
  std::vector<StateBuffer> out;
  for (size_t k = 0; k < mats_.size(); ++k)
    out.push_back({"muon.momentum." + mats_[k].name, mom_.data() + mom_off_[k], mats_[k].shape});
  adamw_.append_state(out);
  return out;
}

}  // namespace onestep
