#include "train/stage_state.h"

#include <algorithm>

#include "optim/muon.h"
#include "optim/optim_names.h"

namespace onestep {

StageState::StageState(const ModelConfig& model, StageSpec spec, const OptimConfig& optim, int older_versions,
                       bool use_ef, Device device)
    : backend(backend_for(device)), stage(model, spec), weights(device), grad(device), update(device),
      prev_update(device) {
  const size_t n = static_cast<size_t>(stage.params().total());
  weights.zeros(n);
  for (int k = 0; k < older_versions; ++k) older.emplace_back(device), older.back().zeros(n);
  grad.zeros(n);
  update.zeros(n);
  if (use_ef) prev_update.zeros(n);
  optimizer = backend.make_optimizer(optim, stage.params());
  optimizer_name = optim.name;
}

const float* StageState::version_at_lag(int64_t lag) const {
  if (lag <= 0 || older.empty()) return weights.data();
  return older[static_cast<size_t>(std::min<int64_t>(lag, static_cast<int64_t>(older.size())) - 1)].data();
}

void StageState::init_weights(uint64_t seed) {
  std::vector<float> w(weights.size());
  stage.init_weights(w.data(), seed);
  weights = w;
  for (auto& v : older) v.copy_from(weights);  // versions below 0 are W(0): the startup convention
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
  s.backend.sum_pair(a, b, static_cast<int64_t>(s.stage.config().vocab_size) * s.stage.config().d_model);
}

ParamSquares grad_squares(const StageState& s, const float* grad) {
  ParamSquares out;
  std::vector<std::pair<int64_t, int64_t>> pieces;
  const auto& params = s.stage.params().all();
  for (size_t i = 0; i < params.size(); ++i)
    if (!(params[i].name == "lm_head.weight" && s.stage.holds_tied_copy()))
      out.param.push_back(i), pieces.emplace_back(params[i].offset, params[i].numel);
  out.sum = s.backend.sum_squares_each(grad, pieces);
  return out;
}

double unique_grad_sum_squares(const StageState& s) {
  double total = 0;
  for (const double x : grad_squares(s, s.grad.data()).sum) total += x;  // in parameter order
  return total;
}

void optimizer_step(StageState& s, double lr_scale, float grad_scale, const DelayConfig& delay, const float* stale) {
  const Backend& be = s.backend;
  const int64_t n = static_cast<int64_t>(s.weights.size());
  if (grad_scale != 1.0f) be.scale(s.grad.data(), grad_scale, n);
  if (delay.correction == "dc_asgd" && stale)
    be.dc_asgd(s.grad.data(), s.weights.data(), stale, n, static_cast<float>(delay.dc_lambda));
  s.optimizer->compute_update(s.update.data(), s.weights.data(), s.grad.data(), lr_scale);
  if (!s.older.empty()) {
    std::rotate(s.older.rbegin(), s.older.rbegin() + 1, s.older.rend());  // the oldest buffer is reused
    be.copy(s.older.front().data(), s.weights.data(), n);
  }
  float* x = s.weights.data();
  const float* u = s.update.data();
  if (delay.correction == "ef") {
    // Per group: in a Muon-family run, delay.ef_adamw_params = false leaves the AdamW-handled parameters
    // (embedding, head, norms) uncorrected. The first step is ordinary (no history).
    const bool muon_family = is_muon_family(s.optimizer_name);
    for (const auto& p : s.stage.params().all()) {
      const bool corrected = s.has_prev_update && (delay.ef_adamw_params || !muon_family || muon_takes(p));
      const float c = corrected ? static_cast<float>(delay.ef_coef) : 0.0f;
      be.apply_update(x + p.offset, u + p.offset, s.prev_update.data() + p.offset, p.numel, c);
    }
    s.has_prev_update = true;
    return;
  }
  be.apply_update(x, u, nullptr, n, 0.0f);
}

}  // namespace onestep
