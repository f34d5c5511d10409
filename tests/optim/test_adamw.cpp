#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "optim/optimizer.h"
#include "reference.h"

using namespace onestep;

namespace {

// Independent double AdamW step for one element (PAPER.md §3).
struct RefAdam {
  double m = 0, v = 0;
  double step(double g, double x, int t, double lr, double b1, double b2, double eps, double wd) {
    m = b1 * m + (1 - b1) * g;
    v = b2 * v + (1 - b2) * g * g;
    double mh = m / (1 - std::pow(b1, t)), vh = v / (1 - std::pow(b2, t));
    return lr * (mh / (std::sqrt(vh) + eps) + wd * x);
  }
};

ParamTable small_table() {
  ParamTable t;
  t.add("model.layers.0.mlp.up_proj.weight", {2, 2}, ParamRole::matrix);
  t.add("model.norm.weight", {3}, ParamRole::norm);
  t.add("model.embed_tokens.weight", {3, 2}, ParamRole::embedding);
  return t;
}

OptimConfig adamw_config() {
  OptimConfig c;
  c.name = "adamw";
  c.lr = 0.01;
  c.weight_decay = 0.1;
  return c;
}

}  // namespace

TEST(AdamW, ThreeStepsMatchDoubleReferenceAndSkipDecayOnNorms) {
  ParamTable t = small_table();
  const int64_t N = t.total();
  std::vector<float> x(N, 0.0f), g(N, 0.0f), u(N, 0.0f);
  for (const auto& p : t.all())
    for (int64_t i = 0; i < p.numel; ++i) x[p.offset + i] = 0.5f - 0.3f * static_cast<float>(i);
  auto opt = make_optimizer(adamw_config(), t);

  std::vector<double> xr(x.begin(), x.end());
  std::vector<RefAdam> ref(N);
  const double lr_scales[3] = {1.0, 0.5, 0.25};
  const float sentinel = 12345.0f;
  for (int step = 1; step <= 3; ++step) {
    for (const auto& p : t.all())
      for (int64_t i = 0; i < p.numel; ++i)
        g[p.offset + i] = std::sin(1.0f + static_cast<float>(i) * 0.7f + static_cast<float>(step) * 1.3f) *
                          (p.role == ParamRole::norm ? 0.01f : 1.0f);
    std::fill(u.begin(), u.end(), sentinel);
    opt->compute_update(u.data(), x.data(), g.data(), lr_scales[step - 1]);
    EXPECT_EQ(opt->steps_taken(), step);
    std::vector<bool> covered(N, false);
    for (const auto& p : t.all()) {
      double wd = p.role == ParamRole::norm ? 0.0 : 0.1;
      for (int64_t i = 0; i < p.numel; ++i) {
        int64_t k = p.offset + i;
        covered[k] = true;
        double ur = ref[k].step(g[k], xr[k], step, 0.01 * lr_scales[step - 1], 0.9, 0.95, 1e-8, wd);
        EXPECT_NEAR(u[k], ur, 1e-9 + 2e-6 * std::abs(ur)) << p.name << "[" << i << "] step " << step;
        xr[k] -= ur;
      }
    }
    for (int64_t k = 0; k < N; ++k)
      if (!covered[k]) { EXPECT_EQ(u[k], sentinel) << "gap " << k << " was written"; }
    for (int64_t k = 0; k < N; ++k) x[k] -= u[k];
  }
}

TEST(AdamW, WeightDecayOnlyOnTwoDimensionalParams) {
  // With a zero gradient at step 1, m = v = 0 and u = lr * wd * x exactly.
  ParamTable t = small_table();
  std::vector<float> x(t.total(), 2.0f), g(t.total(), 0.0f), u(t.total(), 0.0f);
  auto opt = make_optimizer(adamw_config(), t);
  opt->compute_update(u.data(), x.data(), g.data(), 1.0);
  for (const auto& p : t.all())
    for (int64_t i = 0; i < p.numel; ++i) {
      float expect = p.role == ParamRole::norm ? 0.0f : 0.01f * 0.1f * 2.0f;
      EXPECT_NEAR(u[p.offset + i], expect, 1e-9) << p.name;
    }
}

TEST(AdamW, StateBuffersAreNamedAndHoldMoments) {
  ParamTable t = small_table();
  std::vector<float> x(t.total(), 0.0f), g(t.total(), 0.0f), u(t.total(), 0.0f);
  for (int64_t k = 0; k < t.total(); ++k) g[k] = 0.1f * static_cast<float>(k % 7) - 0.2f;
  auto opt = make_optimizer(adamw_config(), t);
  opt->compute_update(u.data(), x.data(), g.data(), 1.0);
  auto sb = opt->state_buffers();
  ASSERT_EQ(sb.size(), 2 * t.size());
  for (const auto& p : t.all()) {
    const StateBuffer* m = nullptr;
    const StateBuffer* v = nullptr;
    for (const auto& b : sb) {
      if (b.name == "adamw.m." + p.name) m = &b;
      if (b.name == "adamw.v." + p.name) v = &b;
    }
    ASSERT_NE(m, nullptr) << p.name;
    ASSERT_NE(v, nullptr) << p.name;
    EXPECT_EQ(m->shape, p.shape);
    for (int64_t i = 0; i < p.numel; ++i) {
      double gi = g[p.offset + i];
      EXPECT_NEAR(m->data[i], 0.1 * gi, 1e-7);
      EXPECT_NEAR(v->data[i], 0.05 * gi * gi, 1e-8);
    }
  }
}

TEST(AdamW, Deterministic) {
  ParamTable t;
  t.add("model.layers.0.mlp.up_proj.weight", {300, 257}, ParamRole::matrix);
  t.add("model.norm.weight", {257}, ParamRole::norm);
  auto x = optim_test::gaussian(t.total(), 1), g = optim_test::gaussian(t.total(), 2);
  std::vector<float> u1(t.total(), 0.0f), u2(t.total(), 0.0f);
  auto o1 = make_optimizer(adamw_config(), t), o2 = make_optimizer(adamw_config(), t);
  for (int s = 0; s < 2; ++s) {
    o1->compute_update(u1.data(), x.data(), g.data(), 1.0);
    o2->compute_update(u2.data(), x.data(), g.data(), 1.0);
  }
  EXPECT_EQ(0, std::memcmp(u1.data(), u2.data(), sizeof(float) * u1.size()));
}
