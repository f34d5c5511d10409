#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "optim/optimizer.h"
#include "reference.h"

using namespace onestep;
using optim_test::Mat;

namespace {

OptimConfig muon_config(const std::string& scale, bool nesterov = true) {
  OptimConfig c;
  c.name = "muon";
  c.lr = 0.02;
  c.weight_decay = 0.1;
  c.muon_scale = scale;
  c.nesterov = nesterov;
  c.adamw_lr = 0.004;
  c.adamw_beta1 = 0.8;
  c.adamw_beta2 = 0.9;
  c.adamw_eps = 1e-6;
  return c;
}

double max_abs(const Mat& m) {
  double a = 0;
  for (double v : m) a = std::max(a, std::abs(v));
  return a;
}

// Expected Muon update of one matrix: u = lr s NS(q) + lr wd x.
Mat muon_ref(const Mat& q, const std::vector<float>& x, int64_t off, int rows, int cols, double s) {
  Mat X = optim_test::ns_reference(q, rows, cols, 5);
  Mat u(X.size());
  for (size_t i = 0; i < X.size(); ++i) u[i] = 0.02 * s * X[i] + 0.02 * 0.1 * x[off + i];
  return u;
}

void expect_close(const float* got, const Mat& want, const std::string& what) {
  double tol = 1e-4 * max_abs(want);
  for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(got[i], want[i], tol) << what << " [" << i << "]";
}

}  // namespace

class MuonShapes : public ::testing::TestWithParam<std::tuple<int, int, std::string>> {};

TEST_P(MuonShapes, OneStepMatchesDoubleNewtonSchulz) {
  auto [rows, cols, scale] = GetParam();
  ParamTable t;
  t.add("model.layers.0.mlp.up_proj.weight", {rows, cols}, ParamRole::matrix);
  const ParamInfo& p = t.all()[0];
  auto x = optim_test::gaussian(t.total(), 10), g = optim_test::gaussian(t.total(), 11);
  std::vector<float> u(t.total(), 0.0f);
  auto opt = make_optimizer(muon_config(scale), t);
  opt->compute_update(u.data(), x.data(), g.data(), 1.0);

  // Step 1: B = g; Nesterov q = g + 0.95 B = 1.95 g.
  Mat q(p.numel);
  for (int64_t i = 0; i < p.numel; ++i) q[i] = 1.95 * g[i];
  // Scale rules written out by hand for each shape.
  double s;
  if (scale == "spectral") s = rows > cols ? std::sqrt(double(rows) / cols) : 1.0;
  else s = 0.2 * std::sqrt(double(std::max(rows, cols)));
  expect_close(u.data() + p.offset, muon_ref(q, x, p.offset, rows, cols, s), "u");
}

INSTANTIATE_TEST_SUITE_P(WideTallSquare, MuonShapes,
                         ::testing::Values(std::make_tuple(4, 6, std::string("spectral")),
                                           std::make_tuple(4, 6, std::string("adamw_rms")),
                                           std::make_tuple(9, 3, std::string("spectral")),
                                           std::make_tuple(9, 3, std::string("adamw_rms")),
                                           std::make_tuple(5, 5, std::string("spectral"))));

TEST(Muon, TallScaleIsLarger) {
  // For a tall 16 x 4 matrix the spectral scale is sqrt(4) = 2: the update's RMS is twice that of the
  // transposed (wide) problem, whose orthogonalised matrix has the same singular values.
  ParamTable tall, wide;
  tall.add("a", {16, 4}, ParamRole::matrix);
  wide.add("a", {4, 16}, ParamRole::matrix);
  auto g = optim_test::gaussian(64, 3);
  std::vector<float> gt(64);
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 4; ++j) gt[j * 16 + i] = g[i * 4 + j];
  std::vector<float> x(64, 0.0f), u1(64), u2(64);
  make_optimizer(muon_config("spectral"), tall)->compute_update(u1.data(), x.data(), g.data(), 1.0);
  make_optimizer(muon_config("spectral"), wide)->compute_update(u2.data(), x.data(), gt.data(), 1.0);
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 4; ++j) EXPECT_NEAR(u1[i * 4 + j], 2.0 * u2[j * 16 + i], 1e-6);
}

TEST(Muon, NesterovVersusPlainMomentumOverTwoSteps) {
  const int rows = 6, cols = 4;
  for (bool nest : {true, false}) {
    ParamTable t;
    t.add("model.layers.0.self_attn.q_proj.weight", {rows, cols}, ParamRole::matrix);
    auto x = optim_test::gaussian(t.total(), 20);
    auto g1 = optim_test::gaussian(t.total(), 21), g2 = optim_test::gaussian(t.total(), 22);
    std::vector<float> u(t.total(), 0.0f);
    auto opt = make_optimizer(muon_config("spectral", nest), t);
    opt->compute_update(u.data(), x.data(), g1.data(), 1.0);
    opt->compute_update(u.data(), x.data(), g2.data(), 0.5);
    const double mu = 0.95;
    Mat q(rows * cols);
    for (int i = 0; i < rows * cols; ++i) {
      double B = mu * g1[i] + g2[i];  // B1 = g1, B2 = mu B1 + g2
      q[i] = nest ? g2[i] + mu * B : B;
    }
    Mat X = optim_test::ns_reference(q, rows, cols, 5);
    Mat want(X.size());
    const double lr = 0.02 * 0.5, s = std::sqrt(1.5);
    for (size_t i = 0; i < X.size(); ++i) want[i] = lr * s * X[i] + lr * 0.1 * x[i];
    expect_close(u.data(), want, nest ? "nesterov" : "plain");
    auto sb = opt->state_buffers();
    ASSERT_EQ(sb.size(), 1u);
    EXPECT_EQ(sb[0].name, "muon.momentum.model.layers.0.self_attn.q_proj.weight");
    for (int i = 0; i < rows * cols; ++i) EXPECT_NEAR(sb[0].data[i], mu * g1[i] + g2[i], 1e-6);
  }
}

TEST(Muon, RoutesMatricesToMuonAndTheRestToAdamW) {
  ParamTable t;
  t.add("model.embed_tokens.weight", {10, 6}, ParamRole::embedding);
  t.add("model.layers.0.input_layernorm.weight", {6}, ParamRole::norm);
  t.add("model.layers.0.mlp.up_proj.weight", {8, 6}, ParamRole::matrix);
  t.add("lm_head.weight", {10, 6}, ParamRole::head);
  auto x = optim_test::gaussian(t.total(), 30), g = optim_test::gaussian(t.total(), 31);
  std::vector<float> u(t.total(), 0.0f);
  auto opt = make_optimizer(muon_config("spectral"), t);
  const double scale = 0.5;
  opt->compute_update(u.data(), x.data(), g.data(), scale);
  for (const auto& p : t.all()) {
    if (p.role == ParamRole::matrix) {
      Mat q(p.numel);
      for (int64_t i = 0; i < p.numel; ++i) q[i] = 1.95 * g[p.offset + i];
      Mat X = optim_test::ns_reference(q, 8, 6, 5);
      Mat want(X.size());
      for (size_t i = 0; i < X.size(); ++i)
        want[i] = 0.01 * std::sqrt(8.0 / 6.0) * X[i] + 0.01 * 0.1 * x[p.offset + i];
      expect_close(u.data() + p.offset, want, p.name);
    } else {
      // AdamW group, first step: m^ = g, v^ = g^2, so u = adamw_lr * (g / (|g| + eps) + wd x).
      double wd = p.role == ParamRole::norm ? 0.0 : 0.1;
      for (int64_t i = 0; i < p.numel; ++i) {
        double gi = g[p.offset + i];
        double want = 0.004 * scale * (gi / (std::abs(gi) + 1e-6) + wd * x[p.offset + i]);
        EXPECT_NEAR(u[p.offset + i], want, 1e-8 + 1e-5 * std::abs(want)) << p.name << "[" << i << "]";
      }
    }
  }
  // Second step checks the AdamW group's own betas (0.8, 0.9) through the bias-corrected moments.
  auto g2 = optim_test::gaussian(t.total(), 32);
  opt->compute_update(u.data(), x.data(), g2.data(), 1.0);
  const ParamInfo& e = t.at("model.embed_tokens.weight");
  for (int64_t i = 0; i < e.numel; ++i) {
    double a = g[e.offset + i], b = g2[e.offset + i];
    double m = (0.8 * 0.2 * a + 0.2 * b) / (1 - 0.64), v = (0.9 * 0.1 * a * a + 0.1 * b * b) / (1 - 0.81);
    double want = 0.004 * (m / (std::sqrt(v) + 1e-6) + 0.1 * x[e.offset + i]);
    EXPECT_NEAR(u[e.offset + i], want, 1e-8 + 1e-5 * std::abs(want));
  }
  auto sb = opt->state_buffers();
  std::vector<std::string> names;
  for (const auto& b : sb) names.push_back(b.name);
  std::sort(names.begin(), names.end());
  std::vector<std::string> expect = {"adamw.m.lm_head.weight",
                                     "adamw.m.model.embed_tokens.weight",
                                     "adamw.m.model.layers.0.input_layernorm.weight",
                                     "adamw.v.lm_head.weight",
                                     "adamw.v.model.embed_tokens.weight",
                                     "adamw.v.model.layers.0.input_layernorm.weight",
                                     "muon.momentum.model.layers.0.mlp.up_proj.weight"};
  EXPECT_EQ(names, expect);
}

TEST(Muon, DeterministicAndUpdateIsOrthogonalScale) {
  ParamTable t;
  t.add("model.layers.0.mlp.down_proj.weight", {96, 160}, ParamRole::matrix);
  auto x = optim_test::gaussian(t.total(), 40), g = optim_test::gaussian(t.total(), 41);
  std::vector<float> u1(t.total()), u2(t.total());
  OptimConfig c = muon_config("spectral");
  c.weight_decay = 0.0;
  auto o1 = make_optimizer(c, t), o2 = make_optimizer(c, t);
  for (int s = 0; s < 3; ++s) {
    o1->compute_update(u1.data(), x.data(), g.data(), 1.0);
    o2->compute_update(u2.data(), x.data(), g.data(), 1.0);
  }
  EXPECT_EQ(0, std::memcmp(u1.data(), u2.data(), sizeof(float) * u1.size()));
  // Nearly orthogonal rows: ||u||_F^2 / lr^2 ~ number of rows (singular values near 1).
  double ss = 0;
  for (int64_t i = 0; i < 96 * 160; ++i) ss += double(u1[i]) * u1[i];
  double per_sv = ss / (0.02 * 0.02) / 96;
  EXPECT_GT(per_sv, 0.5);
  EXPECT_LT(per_sv, 1.44);
}
