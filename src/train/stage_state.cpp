#include "train/stage_state.h"

#include <algorithm>

#include "kernels/cpu/ops.h"
#include "optim/muon.h"

namespace onestep {

StageState::StageState(const ModelConfig& model, StageSpec spec, const OptimConfig& optim, int older_versions,
                       bool use_ef)
    : stage(model, spec) {
  const size_t n = static_cast<size_t>(stage.params().total());
  weights.assign(n, 0.f);
  older.assign(static_cast<size_t>(older_versions), std::vector<float>(n, 0.f));
  grad.assign(n, 0.f);
  update.assign(n, 0.f);
  if (use_ef) prev_update.assign(n, 0.f);
  optimizer = make_optimizer(optim, stage.params());
  optimizer_name = optim.name;
}

const float* StageState::version_at_lag(int64_t lag) const {
  if (lag <= 0 || older.empty()) return weights.data();
  return older[static_cast<size_t>(std::min<int64_t>(lag, static_cast<int64_t>(older.size())) - 1)].data();
}

namespace {
float* grad_of(StageState& s, const char* name) {
  const ParamInfo* p = s.stage.params().find(name);
  return p ? s.grad.data() + p->offset : nullptr;
}
}  // namespace

float* tied_embedding_grad(StageState& s) {
  return s.stage.config().tie_embeddings ? grad_of(s, "model.embed_tokens.weight") : nullptr;
}
float* tied_head_grad(StageState& s) { return s.stage.holds_tied_copy() ? grad_of(s, "lm_head.weight") : nullptr; }

void reduce_tied_embedding_local(StageState& s) {
  float* a = tied_embedding_grad(s);
  float* b = tied_head_grad(s);
  if (!a || !b) return;
  const int64_t n = static_cast<int64_t>(s.stage.config().vocab_size) * s.stage.config().d_model;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) a[i] = b[i] = a[i] + b[i];
}

double unique_grad_sum_squares(const StageState& s) {
  double total = 0;
  for (const auto& p : s.stage.params().all()) {
    if (p.name == "lm_head.weight" && s.stage.holds_tied_copy()) continue;
    total += cpu::sum_squares(s.grad.data() + p.offset, p.numel);
  }
  return total;
}

void optimizer_step(StageState& s, double lr_scale, float grad_scale, const DelayConfig& delay, const float* stale) {
  const int64_t n = static_cast<int64_t>(s.weights.size());
  if (grad_scale != 1.0f) cpu::scale_inplace(s.grad.data(), grad_scale, n);
  if (delay.correction == "dc_asgd" && stale) {
    const float lambda = static_cast<float>(delay.dc_lambda);
    float* g = s.grad.data();
    const float* w = s.weights.data();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) g[i] += lambda * g[i] * g[i] * (w[i] - stale[i]);
  }
  s.optimizer->compute_update(s.update.data(), s.weights.data(), s.grad.data(), lr_scale);
  if (!s.older.empty()) {
    std::rotate(s.older.rbegin(), s.older.rbegin() + 1, s.older.rend());  // the oldest buffer is reused
    std::copy(s.weights.begin(), s.weights.end(), s.older.front().begin());
  }
  float* x = s.weights.data();
  const float* u = s.update.data();
  if (delay.correction == "ef") {
    float* up = s.prev_update.data();
    // Per group: in a Muon-family run, delay.ef_adamw_params = false leaves the AdamW-handled parameters
    // (embedding, head, norms) uncorrected. The first step is ordinary (no history).
    const bool muon_family = s.optimizer_name == "muon" || s.optimizer_name == "normuon";
    for (const auto& p : s.stage.params().all()) {
      const bool corrected = s.has_prev_update && (delay.ef_adamw_params || !muon_family || muon_takes(p));
      const float c = corrected ? static_cast<float>(delay.ef_coef) : 0.0f;
      float* xp = x + p.offset;
      const float* uq = u + p.offset;
      float* upp = up + p.offset;
#pragma omp parallel for schedule(static) if (p.numel >= 32768)
      for (int64_t i = 0; i < p.numel; ++i) {
        xp[i] -= uq[i] + c * (uq[i] - upp[i]);
        upp[i] = uq[i];
      }
    }
    s.has_prev_update = true;
    return;
  }
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) x[i] -= u[i];
}

}  // namespace onestep
