#include "optim/normuon.h"

#include <algorithm>
#include <cmath>

#include "optim/layout.h"
#include "optim/reduce.h"

namespace onestep {

namespace {

std::vector<ParamInfo> select(const ParamTable& t, bool want_muon) {
  std::vector<ParamInfo> out;
  for (const auto& p : t.all())
    if (muon_takes(p) == want_muon) out.push_back(p);
  return out;
}

}  // namespace

NorMuon::NorMuon(const ParamTable& table, NorMuonHyper h, AdamWHyper adamw)
    : h_(h), mats_(select(table, true)), adamw_(select(table, false), adamw) {
  std::vector<int64_t> nm, nr;
  int64_t max_numel = 0;
  for (const auto& p : mats_) {
    nm.push_back(p.numel);
    nr.push_back(p.rows());
    max_numel = std::max(max_numel, p.numel);
    ws_.reserve(p.rows(), p.cols());
  }
  mom_.assign(optim_detail::pack(nm, mom_off_), 0.0f);
  v_.assign(optim_detail::pack(nr, v_off_), 0.0f);
  q_.assign(max_numel, 0.0f);
}

void NorMuon::compute_update(float* u, const float* x, const float* g, double lr_scale) {
  ++t_;
  const MuonHyper& mh = h_.muon;
  const double lr = mh.lr * lr_scale;
  const float mu = static_cast<float>(mh.momentum);
  const float b2 = static_cast<float>(h_.beta2), omb2 = static_cast<float>(1.0 - h_.beta2);
  const float eps = static_cast<float>(h_.eps);
  for (size_t k = 0; k < mats_.size(); ++k) {
    const ParamInfo& p = mats_[k];
    const int64_t n = p.numel, rows = p.rows(), cols = p.cols();
    float* B = mom_.data() + mom_off_[k];
    float* v = v_.data() + v_off_[k];
    const float* gp = g + p.offset;
    float* q = q_.data();
    const bool nest = mh.nesterov;
#pragma omp parallel for schedule(static) if (n >= 65536)
    for (int64_t i = 0; i < n; ++i) {
      const float b = mu * B[i] + gp[i];
      B[i] = b;
      q[i] = nest ? gp[i] + mu * b : b;
    }
    float* X = u + p.offset;  // u's slice holds X, then Y, then the update
    newton_schulz(X, q, static_cast<int>(rows), static_cast<int>(cols), mh.ns_steps,
                  static_cast<float>(mh.eps), ws_);
    const double ss_x = optim_detail::sum_squares(X, n);
    // Per-row second moment and normalisation; each row is summed by one thread in a fixed order.
#pragma omp parallel for schedule(static) if (n >= 65536)
    for (int64_t r = 0; r < rows; ++r) {
      float* xr = X + r * cols;
      double s = 0;
      for (int64_t j = 0; j < cols; ++j) s += static_cast<double>(xr[j]) * xr[j];
      const float vr = b2 * v[r] + omb2 * static_cast<float>(s / static_cast<double>(cols));
      v[r] = vr;
      const float inv = 1.0f / (std::sqrt(vr) + eps);
      for (int64_t j = 0; j < cols; ++j) xr[j] *= inv;
    }
    const double ss_y = optim_detail::sum_squares(X, n);
    const double rescale = ss_y > 0 ? std::sqrt(ss_x / ss_y) : 0.0;
    const float a = static_cast<float>(lr * muon_scale(rows, cols, mh.adamw_rms_scale) * rescale);
    const float d = static_cast<float>(lr * mh.weight_decay);
    const float* xp = x + p.offset;
#pragma omp parallel for schedule(static) if (n >= 65536)
    for (int64_t i = 0; i < n; ++i) X[i] = a * X[i] + d * xp[i];
  }
  adamw_.update(u, x, g, lr_scale, t_);
}

std::vector<StateBuffer> NorMuon::state_buffers() {
  std::vector<StateBuffer> out;
  for (size_t k = 0; k < mats_.size(); ++k) {
    const ParamInfo& p = mats_[k];
    out.push_back({"normuon.momentum." + p.name, mom_.data() + mom_off_[k], p.shape});
    out.push_back({"normuon.v_row." + p.name, v_.data() + v_off_[k], {p.rows()}});
  }
  adamw_.append_state(out);
  return out;
}

}  // namespace onestep
