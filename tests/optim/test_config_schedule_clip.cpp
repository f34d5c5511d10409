#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "core/error.h"
#include "optim/optim_config.h"
#include "optim/optimizer.h"
#include "reference.h"

using namespace onestep;

// ---- lr schedule ----

TEST(LrSchedule, WarmupThenCosine) {
  // T = 100, warm-up 10% -> W = 10 steps: 0.1, 0.2, ..., 1.0 at step 9.
  EXPECT_NEAR(lr_scale_at(0, 100, 0.1, 0.1), 0.1, 1e-12);
  EXPECT_NEAR(lr_scale_at(4, 100, 0.1, 0.1), 0.5, 1e-12);
  EXPECT_DOUBLE_EQ(lr_scale_at(9, 100, 0.1, 0.1), 1.0);
  EXPECT_DOUBLE_EQ(lr_scale_at(10, 100, 0.1, 0.1), 1.0);  // cosine starts at the peak
  EXPECT_DOUBLE_EQ(lr_scale_at(99, 100, 0.1, 0.1), 0.1);  // last step: min_lr_frac
  // T = 102: W = ceil(10.2) = 11, decay over steps 11..101 (90 intervals); step 56 is half way: cos = 0.
  EXPECT_NEAR(lr_scale_at(56, 102, 0.1, 0.1), 0.55, 1e-12);
  EXPECT_DOUBLE_EQ(lr_scale_at(101, 102, 0.1, 0.1), 0.1);
  // Non-increasing after warm-up, never below the floor.
  double prev = 2;
  for (long s = 10; s < 100; ++s) {
    double v = lr_scale_at(s, 100, 0.1, 0.25);
    EXPECT_LE(v, prev);
    EXPECT_GE(v, 0.25);
    prev = v;
  }
}

TEST(LrSchedule, EdgeCases) {
  // 0.1 * 30 is 3.0000000000000004 in double; the warm-up is still 3 steps.
  EXPECT_NEAR(lr_scale_at(0, 30, 0.1, 0.0), 1.0 / 3.0, 1e-12);
  EXPECT_DOUBLE_EQ(lr_scale_at(2, 30, 0.1, 0.0), 1.0);
  // No warm-up: the first step is the peak.
  EXPECT_DOUBLE_EQ(lr_scale_at(0, 50, 0.0, 0.1), 1.0);
  EXPECT_DOUBLE_EQ(lr_scale_at(49, 50, 0.0, 0.1), 0.1);
  // A single step.
  EXPECT_DOUBLE_EQ(lr_scale_at(0, 1, 0.1, 0.1), 1.0);
  // Past the end stays at the floor.
  EXPECT_DOUBLE_EQ(lr_scale_at(150, 100, 0.1, 0.1), 0.1);
}

// ---- resolve ----

static void expect_bad_input(OptimConfig c, const std::string& key, const std::string& also = "") {
  try {
    resolve_optim_defaults(c, "cfg.toml");
    ADD_FAILURE() << "no error for " << key;
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::bad_input);
    std::string msg = e.what();
    EXPECT_NE(msg.find("cfg.toml"), std::string::npos) << msg;
    EXPECT_NE(msg.find(key), std::string::npos) << msg;
    if (!also.empty()) { EXPECT_NE(msg.find(also), std::string::npos) << msg; }
  }
}

TEST(Resolve, Errors) {
  OptimConfig c;
  c.name = "adamx";
  expect_bad_input(c, "optim.name", "'adamx'");
  c = OptimConfig();
  c.lr = -1e-3;
  expect_bad_input(c, "optim.lr");
  c.lr = std::numeric_limits<double>::infinity();
  expect_bad_input(c, "optim.lr");
  c = OptimConfig();
  c.name = "muon";
  c.muon_scale = "frobenius";
  expect_bad_input(c, "optim.muon_scale", "frobenius");
  c = OptimConfig();
  c.beta1 = 1.0;
  expect_bad_input(c, "optim.beta1");
  c = OptimConfig();
  c.beta2 = -0.1;
  expect_bad_input(c, "optim.beta2");
  c = OptimConfig();
  c.eps = 0;
  expect_bad_input(c, "optim.eps");
  c = OptimConfig();
  c.name = "muon";
  c.ns_steps = 0;
  expect_bad_input(c, "optim.ns_steps");
  c = OptimConfig();
  c.name = "muon";
  c.momentum = 1.5;
  expect_bad_input(c, "optim.momentum");
  // make_optimizer validates too.
  c = OptimConfig();
  c.lr = 0;
  ParamTable t;
  EXPECT_THROW(make_optimizer(c, t), Error);
}

TEST(Resolve, Defaults) {
  OptimConfig a;
  a.name = "adamw";
  resolve_optim_defaults(a, "x");
  EXPECT_DOUBLE_EQ(a.lr, 3e-3);
  EXPECT_DOUBLE_EQ(a.beta1, 0.9);
  EXPECT_DOUBLE_EQ(a.beta2, 0.95);
  EXPECT_DOUBLE_EQ(a.eps, 1e-8);
  OptimConfig m;
  m.name = "muon";
  resolve_optim_defaults(m, "x");
  EXPECT_DOUBLE_EQ(m.lr, 0.02);
  EXPECT_DOUBLE_EQ(m.momentum, 0.95);
  EXPECT_DOUBLE_EQ(m.adamw_lr, 3e-3);
  EXPECT_DOUBLE_EQ(m.eps, 1e-7);
  // Values the user set are kept; resolving twice changes nothing.
  OptimConfig u;
  u.name = "muon";
  u.lr = 0.05;
  u.adamw_lr = 1e-3;
  u.momentum = 0.9;
  resolve_optim_defaults(u, "x");
  resolve_optim_defaults(u, "x");
  EXPECT_DOUBLE_EQ(u.lr, 0.05);
  EXPECT_DOUBLE_EQ(u.adamw_lr, 1e-3);
  EXPECT_DOUBLE_EQ(u.momentum, 0.9);
}

TEST(Resolve, DefaultsOfTheOtherOptimizers) {
  auto resolved = [](const std::string& name) {
    OptimConfig c;
    c.name = name;
    resolve_optim_defaults(c, "x");
    return c;
  };
  OptimConfig n = resolved("normuon");
  EXPECT_DOUBLE_EQ(n.lr, 0.02);
  EXPECT_DOUBLE_EQ(n.momentum, 0.95);
  EXPECT_DOUBLE_EQ(n.beta2, 0.95);
  EXPECT_DOUBLE_EQ(n.eps, 1e-8);
  EXPECT_DOUBLE_EQ(n.adamw_lr, 3e-3);
  OptimConfig a = resolved("adan");
  EXPECT_DOUBLE_EQ(a.lr, 3e-3);
  EXPECT_DOUBLE_EQ(a.beta1, 0.98);
  EXPECT_DOUBLE_EQ(a.beta2, 0.92);
  EXPECT_DOUBLE_EQ(a.beta3, 0.99);
  EXPECT_DOUBLE_EQ(a.eps, 1e-8);
  OptimConfig l = resolved("lion");
  EXPECT_DOUBLE_EQ(l.lr, 3e-4);
  EXPECT_DOUBLE_EQ(l.beta1, 0.9);
  EXPECT_DOUBLE_EQ(l.beta2, 0.99);
  EXPECT_TRUE(std::isnan(l.eps));  // not used by Lion
  OptimConfig m = resolved("mars");
  EXPECT_DOUBLE_EQ(m.lr, 3e-3);
  EXPECT_DOUBLE_EQ(m.beta1, 0.95);
  EXPECT_DOUBLE_EQ(m.beta2, 0.99);
  EXPECT_DOUBLE_EQ(m.eps, 1e-8);
  EXPECT_DOUBLE_EQ(m.gamma, 0.025);
  OptimConfig s = resolved("soap");
  EXPECT_DOUBLE_EQ(s.lr, 3e-3);
  EXPECT_DOUBLE_EQ(s.beta1, 0.95);
  EXPECT_DOUBLE_EQ(s.beta2, 0.95);
  EXPECT_DOUBLE_EQ(s.eps, 1e-8);
  EXPECT_EQ(s.precond_freq, 10);
  OptimConfig g = resolved("sgd");
  EXPECT_DOUBLE_EQ(g.lr, 0.1);
  EXPECT_DOUBLE_EQ(g.momentum, 0.9);
  EXPECT_TRUE(g.nesterov);
  // Keys of other optimizers stay "not applicable".
  OptimConfig w = resolved("adamw");
  EXPECT_TRUE(std::isnan(w.gamma));
  EXPECT_EQ(w.precond_freq, -1);
  EXPECT_TRUE(std::isnan(w.beta3));
  // User values are kept.
  OptimConfig u;
  u.name = "soap";
  u.precond_freq = 3;
  u.beta2 = 0.99;
  resolve_optim_defaults(u, "x");
  resolve_optim_defaults(u, "x");
  EXPECT_EQ(u.precond_freq, 3);
  EXPECT_DOUBLE_EQ(u.beta2, 0.99);
}

TEST(Resolve, BadValuesOfTheOtherOptimizers) {
  auto with = [](const std::string& name) {
    OptimConfig c;
    c.name = name;
    return c;
  };
  OptimConfig c = with("normuon");
  c.beta2 = 1.0;
  expect_bad_input(c, "optim.beta2");
  c = with("normuon");
  c.muon_scale = "frobenius";
  expect_bad_input(c, "optim.muon_scale");
  c = with("adan");
  c.beta3 = 1.5;
  expect_bad_input(c, "optim.beta3");
  c = with("lion");
  c.beta1 = -0.5;
  expect_bad_input(c, "optim.beta1");
  c = with("mars");
  c.gamma = -0.1;
  expect_bad_input(c, "optim.gamma");
  c = with("mars");
  c.gamma = std::numeric_limits<double>::infinity();
  expect_bad_input(c, "optim.gamma");
  c = with("soap");
  c.precond_freq = 0;
  expect_bad_input(c, "optim.precond_freq");
  c = with("sgd");
  c.momentum = 1.0;
  expect_bad_input(c, "optim.momentum");
  c = with("sgd");
  c.lr = 0;
  expect_bad_input(c, "optim.lr");
}

// ---- clipping helpers ----

TEST(Clip, SumSquaresAndScaleIgnoreGaps) {
  ParamTable t;
  t.add("a", {3}, ParamRole::norm);           // padded to 16
  t.add("b", {5, 7}, ParamRole::matrix);      // padded to 48
  t.add("c", {101, 100}, ParamRole::matrix);  // several reduction chunks
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> g(t.total(), nan);  // gaps hold NaN: they must not be read into the sum
  double want = 0;
  for (const auto& p : t.all())
    for (int64_t i = 0; i < p.numel; ++i) {
      float v = 0.001f * static_cast<float>((i * 37 + p.offset) % 101) - 0.05f;
      g[p.offset + i] = v;
      want += double(v) * v;
    }
  EXPECT_NEAR(grad_sum_squares(g.data(), t), want, 1e-12 * want);
  scale_grads(g.data(), t, 0.5f);
  EXPECT_NEAR(grad_sum_squares(g.data(), t), 0.25 * want, 1e-12 * want);
  for (int64_t k = 0; k < t.total(); ++k) {
    bool inside = false;
    for (const auto& p : t.all()) inside |= (k >= p.offset && k < p.offset + p.numel);
    if (!inside) { EXPECT_TRUE(std::isnan(g[k])) << k; }
  }
}

TEST(Clip, SumSquaresIndependentOfThreadCount) {
  ParamTable t;
  t.add("w", {1000, 333}, ParamRole::matrix);
  auto g = optim_test::gaussian(t.total(), 9);
  int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  double s1 = grad_sum_squares(g.data(), t);
  omp_set_num_threads(2);
  double s2 = grad_sum_squares(g.data(), t);
  omp_set_num_threads(saved);
  EXPECT_EQ(std::memcmp(&s1, &s2, sizeof(double)), 0);
  double want = 0;
  for (int64_t i = 0; i < 333000; ++i) want += double(g[i]) * g[i];
  EXPECT_NEAR(s1, want, 1e-10 * want);
}
