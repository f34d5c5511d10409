// NorMuon against a double reference written from PAPER.md §3: Muon's X (Nesterov momentum, Newton–Schulz),
// per-row second moment, row normalisation, rescale to the RMS of X, Muon's shape scale, decoupled decay.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "optim/optimizer.h"
#include "reference.h"

using namespace onestep;
using optim_test::Mat;

namespace {

OptimConfig normuon_config(const std::string& scale) {
  OptimConfig c;
  c.name = "normuon";
  c.lr = 0.02;
  c.weight_decay = 0.1;
  c.muon_scale = scale;
  c.adamw_lr = 0.004;
  c.beta2 = 0.9;
  c.eps = 1e-6;
  return c;
}

struct RefNorMuon {
  int rows, cols;
  Mat B;
  std::vector<double> v;
  Mat step(const float* g, const float* x, double lr, double s, double mu, double b2, double eps, double wd) {
    const int n = rows * cols;
    if (B.empty()) B.assign(n, 0.0), v.assign(rows, 0.0);
    Mat q(n);
    for (int i = 0; i < n; ++i) {
      B[i] = mu * B[i] + g[i];
      q[i] = g[i] + mu * B[i];
    }
    Mat X = optim_test::ns_reference(q, rows, cols, 5);
    Mat Y(n);
    double ssx = 0, ssy = 0;
    for (int r = 0; r < rows; ++r) {
      double mean = 0;
      for (int j = 0; j < cols; ++j) mean += X[r * cols + j] * X[r * cols + j] / cols;
      v[r] = b2 * v[r] + (1 - b2) * mean;
      for (int j = 0; j < cols; ++j) {
        Y[r * cols + j] = X[r * cols + j] / (std::sqrt(v[r]) + eps);
        ssx += X[r * cols + j] * X[r * cols + j];
        ssy += Y[r * cols + j] * Y[r * cols + j];
      }
    }
    const double rms_x = std::sqrt(ssx / n), rms_y = std::sqrt(ssy / n);
    Mat u(n);
    for (int i = 0; i < n; ++i) u[i] = lr * s * Y[i] * (rms_x / rms_y) + lr * wd * x[i];
    return u;
  }
};

double max_abs(const Mat& m) {
  double a = 0;
  for (double v : m) a = std::max(a, std::abs(v));
  return a;
}

}  // namespace

class NorMuonScale : public ::testing::TestWithParam<std::string> {};

TEST_P(NorMuonScale, ThreeStepsMatchDoubleReference) {
  const std::string scale = GetParam();
  ParamTable t;
  t.add("model.embed_tokens.weight", {7, 4}, ParamRole::embedding);
  t.add("model.layers.0.mlp.up_proj.weight", {9, 4}, ParamRole::matrix);    // tall
  t.add("model.layers.0.mlp.down_proj.weight", {4, 9}, ParamRole::matrix);  // wide
  t.add("model.norm.weight", {4}, ParamRole::norm);
  const int64_t N = t.total();
  auto x = optim_test::gaussian(N, 300);
  std::vector<float> u(N);
  auto opt = make_optimizer(normuon_config(scale), t);
  RefNorMuon tall{9, 4, {}, {}}, wide{4, 9, {}, {}};
  std::vector<double> am(N, 0.0), av(N, 0.0);
  const double scales[3] = {1.0, 0.5, 0.7};
  for (int step = 1; step <= 3; ++step) {
    auto g = optim_test::gaussian(N, 300 + step);
    opt->compute_update(u.data(), x.data(), g.data(), scales[step - 1]);
    const double lr = 0.02 * scales[step - 1];
    for (RefNorMuon* r : {&tall, &wide}) {
      const ParamInfo& p = t.at(r == &tall ? "model.layers.0.mlp.up_proj.weight" : "model.layers.0.mlp.down_proj.weight");
      double s = scale == "spectral" ? std::sqrt(std::max(1.0, double(r->rows) / r->cols))
                                     : 0.2 * std::sqrt(double(std::max(r->rows, r->cols)));
      Mat want = r->step(g.data() + p.offset, x.data() + p.offset, lr, s, 0.95, 0.9, 1e-6, 0.1);
      const double tol = 1e-4 * max_abs(want);
      for (int64_t i = 0; i < p.numel; ++i)
        EXPECT_NEAR(u[p.offset + i], want[i], tol) << p.name << "[" << i << "] step " << step;
    }
    // AdamW group: adamw_lr 0.004 with adamw betas (0.9, 0.95), eps 1e-8.
    for (const char* name : {"model.embed_tokens.weight", "model.norm.weight"}) {
      const ParamInfo& p = t.at(name);
      const double wd = p.role == ParamRole::norm ? 0.0 : 0.1;
      for (int64_t i = 0; i < p.numel; ++i) {
        const int64_t q = p.offset + i;
        am[q] = 0.9 * am[q] + 0.1 * g[q];
        av[q] = 0.95 * av[q] + 0.05 * double(g[q]) * g[q];
        double want = 0.004 * scales[step - 1] *
                      (am[q] / (1 - std::pow(0.9, step)) / (std::sqrt(av[q] / (1 - std::pow(0.95, step))) + 1e-8) +
                       wd * x[q]);
        EXPECT_NEAR(u[q], want, 1e-9 + 1e-5 * std::abs(want)) << name << " step " << step;
      }
    }
    for (int64_t k = 0; k < N; ++k) x[k] -= u[k];
  }
  // State: momentum and per-row second moment of each matrix, then the AdamW group.
  auto sb = opt->state_buffers();
  ASSERT_EQ(sb.size(), 4u + 4u);
  EXPECT_EQ(sb[0].name, "normuon.momentum.model.layers.0.mlp.up_proj.weight");
  EXPECT_EQ(sb[1].name, "normuon.v_row.model.layers.0.mlp.up_proj.weight");
  EXPECT_EQ(sb[1].shape, std::vector<int64_t>{9});
  for (int r = 0; r < 9; ++r) EXPECT_NEAR(sb[1].data[r], tall.v[r], 1e-4 * tall.v[r]);
  for (int r = 0; r < 4; ++r) EXPECT_NEAR(sb[3].data[r], wide.v[r], 1e-4 * wide.v[r]);
}

INSTANTIATE_TEST_SUITE_P(Rules, NorMuonScale, ::testing::Values("spectral", "adamw_rms"));

TEST(NorMuon, UpdateHasMuonRms) {
  // With wd = 0 the update's RMS is lr * s * RMS(X), the RMS of Muon's orthogonalised X, whatever v_row.
  ParamTable t;
  t.add("model.layers.0.self_attn.o_proj.weight", {12, 20}, ParamRole::matrix);
  auto g = optim_test::gaussian(t.total(), 40);
  std::vector<float> x(t.total(), 0.0f), u(t.total());
  OptimConfig c = normuon_config("spectral");
  c.weight_decay = 0;
  make_optimizer(c, t)->compute_update(u.data(), x.data(), g.data(), 1.0);
  Mat q(240);
  for (int i = 0; i < 240; ++i) q[i] = 1.95 * g[i];
  Mat X = optim_test::ns_reference(q, 12, 20, 5);
  double ssx = 0, ssu = 0;
  for (int i = 0; i < 240; ++i) ssx += X[i] * X[i], ssu += double(u[i]) * u[i];
  EXPECT_NEAR(std::sqrt(ssu) / 0.02, std::sqrt(ssx), 1e-4 * std::sqrt(ssx));
}
