#include "optim/normuon.h"

#include <cmath>

#include "optim/layout.h"
#include "optim/reduce.h"

namespace onestep {

NorMuon::NorMuon(const ParamTable& table, NorMuonHyper h, AdamWHyper adamw)
    : h_(h),
      mats_(table, "normuon.momentum."),
      adamw_(optim_detail::select_params(table, muon_takes, false), adamw) {
  std::vector<int64_t> nr;
  for (const auto& p : mats_.params()) nr.push_back(p.rows());
  v_.assign(optim_detail::pack(nr, v_off_), 0.0f);
}

void NorMuon::compute_update(float* u, const float* x, const float* g, double lr_scale) {
  ++t_;
  const MuonHyper& mh = h_.muon;
  const double lr = mh.lr * lr_scale;
  const float b2 = static_cast<float>(h_.beta2), omb2 = static_cast<float>(1.0 - h_.beta2);
  const float eps = static_cast<float>(h_.eps);
  mats_.for_each_matrix([&](size_t k, MuonMatrices::Scratch& s) {
    const ParamInfo& p = mats_.params()[k];
    const int64_t n = p.numel, rows = p.rows(), cols = p.cols();
    float* v = v_.data() + v_off_[k];
    float* X = mats_.orthogonalized_momentum(k, s, u, g, mh);  // u's slice holds X, then Y, then the update
    const double ss_x = optim_detail::sum_squares(X, n);
    // Per-row second moment and normalisation; each row is summed by one thread in a fixed order (inside
    // for_each_matrix's parallel loop this region has one thread).
#pragma omp parallel for schedule(static) if (n >= 65536)
    for (int64_t r = 0; r < rows; ++r) {
      float* xr = X + r * cols;
      double sum = 0;
      for (int64_t j = 0; j < cols; ++j) sum += static_cast<double>(xr[j]) * xr[j];
      const float vr = b2 * v[r] + omb2 * static_cast<float>(sum / static_cast<double>(cols));
      v[r] = vr;
      const float inv = 1.0f / (std::sqrt(vr) + eps);
      for (int64_t j = 0; j < cols; ++j) xr[j] *= inv;
    }
    const double ss_y = optim_detail::sum_squares(X, n);
    const double rescale = ss_y > 0 ? std::sqrt(ss_x / ss_y) : 0.0;
    mats_.finish_update(k, u, x, mh, lr, rescale);  // u = lr s rescale Y + lr wd x
  });
  adamw_.update(u, x, g, lr_scale, t_);
}

std::vector<StateBuffer> NorMuon::state_buffers() {
  std::vector<StateBuffer> out;
  for (size_t k = 0; k < mats_.params().size(); ++k) {
    const ParamInfo& p = mats_.params()[k];
    mats_.append_state(out, k);
    out.push_back({"normuon.v_row." + p.name, v_.data() + v_off_[k], {p.rows()}});
  }
  adamw_.append_state(out);
  return out;
}

}  // namespace onestep
