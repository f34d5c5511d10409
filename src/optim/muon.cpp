#include "optim/muon.h"

#include <algorithm>
#include <cmath>

#include "optim/elementwise.h"

namespace onestep {

bool muon_takes(const ParamInfo& p) { return p.role == ParamRole::matrix && p.shape.size() == 2; }

double muon_scale(int64_t rows, int64_t cols, bool adamw_rms) {
  if (adamw_rms) return 0.2 * std::sqrt(static_cast<double>(std::max(rows, cols)));
  return std::sqrt(std::max(1.0, static_cast<double>(rows) / static_cast<double>(cols)));
}

namespace {
// Below this many elements the Muon-family loops run on the calling thread alone.
constexpr int64_t kMuonParallelMin = 65536;
}  // namespace

MuonMatrices::MuonMatrices(const ParamTable& table, const char* momentum_name)
    : mom_(optim_detail::select_params(table, muon_takes, true), {momentum_name}) {
  int64_t max_numel = 0;
  for (const auto& p : params()) {
    max_numel = std::max(max_numel, p.numel);
    ws_.reserve(p.rows(), p.cols());
  }
  q_.assign(max_numel, 0.0f);
}

float* MuonMatrices::orthogonalized_momentum(size_t k, float* u, const float* g, const MuonHyper& h) {
  const ParamInfo& p = params()[k];
  const float mu = static_cast<float>(h.momentum);
  const bool nest = h.nesterov;
  const auto [B] = mom_.slices<1>(k);
  const float* gp = g + p.offset;
  float* q = q_.data();
  optim_detail::for_each_element(p.numel, [=](int64_t i) {
    const float b = mu * B[i] + gp[i];
    B[i] = b;
    q[i] = nest ? gp[i] + mu * b : b;
  }, kMuonParallelMin);
  float* X = u + p.offset;
  newton_schulz(X, q, static_cast<int>(p.rows()), static_cast<int>(p.cols()), h.ns_steps, static_cast<float>(h.eps),
                ws_);
  return X;
}

void MuonMatrices::finish_update(size_t k, float* u, const float* x, const MuonHyper& h, double lr,
                                 double extra_scale) const {
  const ParamInfo& p = params()[k];
  const float a = static_cast<float>(lr * muon_scale(p.rows(), p.cols(), h.adamw_rms_scale) * extra_scale);
  const float d = static_cast<float>(lr * h.weight_decay);
  float* X = u + p.offset;
  const float* xp = x + p.offset;
  optim_detail::for_each_element(p.numel, [=](int64_t i) { X[i] = a * X[i] + d * xp[i]; }, kMuonParallelMin);
}

Muon::Muon(const ParamTable& table, MuonHyper h, AdamWHyper adamw)
    : h_(h), mats_(table, "muon.momentum."), adamw_(optim_detail::select_params(table, muon_takes, false), adamw) {}

void Muon::compute_update(float* u, const float* x, const float* g, double lr_scale) {
  ++t_;
  const double lr = h_.lr * lr_scale;
  for (size_t k = 0; k < mats_.params().size(); ++k) {
    mats_.orthogonalized_momentum(k, u, g, h_);
    mats_.finish_update(k, u, x, h_, lr);
  }
  adamw_.update(u, x, g, lr_scale, t_);
}

std::vector<StateBuffer> Muon::state_buffers() {
  std::vector<StateBuffer> out;
  mats_.append_state(out);
  adamw_.append_state(out);
  return out;
}

}  // namespace onestep
