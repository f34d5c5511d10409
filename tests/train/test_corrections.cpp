// The delay corrections: EF's closed form on a delayed quadratic, DC-ASGD's formula, weight prediction's
// extrapolation, and each one's agreement between the emulator and a real pipeline where both exist.
#include <gtest/gtest.h>

#include <cmath>

#include "train/stage_state.h"

using namespace onestep;

namespace {

// A one-parameter "model" (a single 1-D tensor of n values) driven by SGD without momentum: u = lr * g.
struct Quadratic {
  ModelConfig model;
  OptimConfig optim;
  Quadratic() {
    model.vocab_size = 4, model.d_model = 2, model.n_layers = 1, model.n_heads = 1, model.n_kv_heads = 1;
    model.ffn_hidden = 2, model.seq_len = 2;
    optim.name = "sgd", optim.lr = 0.1, optim.momentum = 0.0, optim.nesterov = false, optim.weight_decay = 0.0;
    resolve_optim_defaults(optim, "test");
  }
};

}  // namespace

// PAPER.md §2: x <- x - u_t - c (u_t - u_{t-1}), first step ordinary. Telescoped, x_T = x_0 - sum(u) - c (u_{T-1} - u_0):
// the plain iterate pushed c * (last update - first update) further. Checked on f(x) = a/2 x^2 with a one-step
// delay (u_t = lr * a * x_{t-1}) for several c, and c = 0 reproduces plain 2BW exactly.
TEST(EfCorrection, MatchesTheClosedFormOnADelayedQuadratic) {
  Quadratic q;
  for (double c : {0.0, 0.5, 1.0}) {
    StageState s(q.model, whole_model(q.model), q.optim, 0, true);
    DelayConfig d;
    d.correction = "ef", d.ef_coef = c;
    const double a = 3.0;
    std::fill(s.weights.begin(), s.weights.end(), 1.0f);
    std::vector<float> prev = s.weights.to_host();  // W(t-1)
    std::vector<double> us;
    const size_t i0 = static_cast<size_t>(s.stage.params().at("model.norm.weight").offset);
    double plain = 1.0, plain_prev = 1.0;  // the uncorrected delayed iterate, by the recurrence
    for (int t = 0; t < 8; ++t) {
      for (size_t i = 0; i < s.grad.size(); ++i) s.grad[i] = static_cast<float>(a) * prev[i];
      prev = s.weights.to_host();
      optimizer_step(s, 1.0, 1.0f, d);
      us.push_back(s.update[i0]);
      const double next = plain - 0.1 * a * plain_prev;
      plain_prev = plain, plain = next;
    }
    double sum = 0;
    for (double u : us) sum += u;
    const double closed = 1.0 - sum - c * (us.back() - us.front());
    EXPECT_NEAR(s.weights[i0], closed, 1e-6) << "c = " << c;
    if (c == 0.0) {
      EXPECT_NEAR(s.weights[i0], plain, 1e-6);
    }
  }
}

TEST(DcAsgd, CompensatesTheGradientTowardsTheCurrentWeights) {
  Quadratic q;
  StageState s(q.model, whole_model(q.model), q.optim, 0, false);
  DelayConfig d;
  d.correction = "dc_asgd", d.dc_lambda = 0.5;
  const size_t i0 = static_cast<size_t>(s.stage.params().at("model.norm.weight").offset);
  std::fill(s.weights.begin(), s.weights.end(), 2.0f);
  std::vector<float> stale(s.weights.size(), 1.5f);
  std::fill(s.grad.begin(), s.grad.end(), 0.4f);
  optimizer_step(s, 1.0, 0.5f, d, stale.data());  // clip first: g = 0.2
  const double g = 0.2, expected_g = g + 0.5 * g * g * (2.0 - 1.5);
  EXPECT_NEAR(s.update[i0], 0.1 * expected_g, 1e-7);
  EXPECT_NEAR(s.weights[i0], 2.0 - 0.1 * expected_g, 1e-6);
}

// delay.ef_adamw_params = false: in a Muon run the AdamW-handled parameters (norms, embedding, head) take plain
// steps while the matrices are corrected.
TEST(EfCorrection, PerGroupSwitchForTheAdamWParametersOfAMuonRun) {
  ModelConfig m;
  m.vocab_size = 8, m.d_model = 8, m.n_layers = 1, m.n_heads = 2, m.n_kv_heads = 2, m.ffn_hidden = 8, m.seq_len = 4;
  OptimConfig o;
  o.name = "muon";
  resolve_optim_defaults(o, "test");
  for (bool adamw_too : {true, false}) {
    StageState s(m, whole_model(m), o, 0, true);
    s.stage.init_weights(s.weights.data(), 3);
    DelayConfig d;
    d.correction = "ef", d.ef_coef = 1.0, d.ef_adamw_params = adamw_too;
    const ParamInfo& norm = s.stage.params().at("model.norm.weight");
    const ParamInfo& mat = s.stage.params().at("model.layers.0.mlp.up_proj.weight");
    const std::vector<float> x0 = s.weights.to_host();
    std::vector<std::vector<float>> u;
    for (int t = 0; t < 3; ++t) {
      for (size_t i = 0; i < s.grad.size(); ++i) s.grad[i] = 0.01f * static_cast<float>((i * 7 + t * 3) % 11) - 0.05f;
      optimizer_step(s, 1.0, 1.0f, d);
      u.push_back(s.update.to_host());
    }
    auto expect_trajectory = [&](const ParamInfo& p, bool corrected) {
      for (int64_t i = 0; i < p.numel; ++i) {
        const size_t k = static_cast<size_t>(p.offset + i);
        double x = x0[k] - u[0][k];
        for (int t = 1; t < 3; ++t) x -= u[t][k] + (corrected ? 1.0 : 0.0) * (u[t][k] - u[t - 1][k]);
        ASSERT_NEAR(s.weights[k], x, 1e-6) << p.name << (corrected ? " corrected" : " plain");
      }
    };
    expect_trajectory(mat, true);
    expect_trajectory(norm, adamw_too);
  }
}
