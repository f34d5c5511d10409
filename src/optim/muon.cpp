#include "optim/muon.h"

#include <algorithm>
#include <cmath>

#include "optim/elementwise.h"
#include "optim/matrix_loop.h"

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
  largest_first_ = optim_detail::largest_first(params().size(), [this](size_t k) {
    const ParamInfo& p = params()[k];  // Newton–Schulz costs about min(r, c)^2 max(r, c) per step
    const int64_t s = std::min(p.rows(), p.cols());
    return s * s * std::max(p.rows(), p.cols());
  });
}

void MuonMatrices::for_each_matrix(const std::function<void(size_t, Scratch&)>& step) {
  optim_detail::grow_to_slots(scratch_, [this] {
    Scratch s;
    for (const auto& p : params()) {
      s.q.resize(std::max<size_t>(s.q.size(), p.numel));
      s.ws.reserve(p.rows(), p.cols());
    }
    return s;
  });
  optim_detail::for_each_matrix(largest_first_, optim_detail::MatrixLoop::shared_out_if_many,
                                [&](size_t k, int slot) { step(k, scratch_[slot]); });
}

float* MuonMatrices::orthogonalized_momentum(size_t k, Scratch& s, float* u, const float* g, const MuonHyper& h) {
  const ParamInfo& p = params()[k];
  const float mu = static_cast<float>(h.momentum);
  const bool nest = h.nesterov;
  const auto [B] = mom_.slices<1>(k);
  const float* gp = g + p.offset;
  float* q = s.q.data();
  optim_detail::for_each_element(p.numel, [=](int64_t i) {
    const float b = mu * B[i] + gp[i];
    B[i] = b;
    q[i] = nest ? gp[i] + mu * b : b;
  }, kMuonParallelMin);
  float* X = u + p.offset;
  newton_schulz(X, q, static_cast<int>(p.rows()), static_cast<int>(p.cols()), h.ns_steps, static_cast<float>(h.eps),
                s.ws);
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
  mats_.for_each_matrix([&](size_t k, MuonMatrices::Scratch& s) {
    mats_.orthogonalized_momentum(k, s, u, g, h_);
    mats_.finish_update(k, u, x, h_, lr);
  });
  adamw_.update(u, x, g, lr_scale, t_);
}

std::vector<StateBuffer> Muon::state_buffers() {
  std::vector<StateBuffer> out;
  mats_.append_state(out);
  adamw_.append_state(out);
  return out;
}

}  // namespace onestep
