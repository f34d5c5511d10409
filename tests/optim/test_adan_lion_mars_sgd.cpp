// Adan, Lion, MARS and SGD against double references written from PAPER.md §3 (and, for Adan, the official
// PyTorch form), several steps with a changing lr scale.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "optim/optimizer.h"
#include "reference.h"

using namespace onestep;

namespace {

// A matrix, a norm gain and an embedding; the norm gets no weight decay.
ParamTable mixed_table() {
  ParamTable t;
  t.add("model.layers.0.mlp.up_proj.weight", {4, 3}, ParamRole::matrix);
  t.add("model.norm.weight", {5}, ParamRole::norm);
  t.add("model.embed_tokens.weight", {3, 4}, ParamRole::embedding);
  return t;
}

const double kScales[4] = {1.0, 0.5, 0.8, 0.3};

OptimConfig config(const std::string& name, double lr) {
  OptimConfig c;
  c.name = name;
  c.lr = lr;
  c.weight_decay = 0.1;
  return c;
}

// Runs 4 steps of `name` on mixed_table() and checks every element against ref(k, g, x, t, lr, wd).
template <class Ref>
void run_elementwise(const OptimConfig& c, std::vector<Ref>& ref, double tol_abs) {
  ParamTable t = mixed_table();
  const int64_t N = t.total();
  auto x = optim_test::gaussian(N, 100);
  std::vector<float> u(N, 0.0f);
  auto opt = make_optimizer(c, t);
  ref.assign(N, Ref());
  for (int step = 1; step <= 4; ++step) {
    auto g = optim_test::gaussian(N, 100 + step);
    opt->compute_update(u.data(), x.data(), g.data(), kScales[step - 1]);
    for (const auto& p : t.all()) {
      const double wd = p.role == ParamRole::norm ? 0.0 : 0.1;
      for (int64_t i = 0; i < p.numel; ++i) {
        const int64_t k = p.offset + i;
        const double ur = ref[k].step(g[k], x[k], step, c.lr * kScales[step - 1], wd);
        EXPECT_NEAR(u[k], ur, tol_abs * c.lr + 1e-5 * std::abs(ur)) << p.name << "[" << i << "] step " << step;
      }
    }
    for (int64_t k = 0; k < N; ++k) x[k] -= u[k];
  }
}

// Adan, PyTorch convention b = (0.98, 0.92, 0.99): moments of g, of d = g_t - g_{t-1} (0 at the first
// step) and of (g + 0.92 d)^2; bias-corrected; x' = (x - s) / (1 + lr wd); u = x - x'.
struct RefAdan {
  double m = 0, md = 0, n = 0, prev = 0;
  double step(double g, double x, int t, double lr, double wd) {
    const double b1 = 0.98, b2 = 0.92, b3 = 0.99, eps = 1e-8;
    double d = t == 1 ? 0.0 : g - prev;
    prev = g;
    m = b1 * m + (1 - b1) * g;
    md = b2 * md + (1 - b2) * d;
    n = b3 * n + (1 - b3) * (g + b2 * d) * (g + b2 * d);
    double mh = m / (1 - std::pow(b1, t)), mdh = md / (1 - std::pow(b2, t)), nh = n / (1 - std::pow(b3, t));
    double s = lr * (mh + b2 * mdh) / (std::sqrt(nh) + eps);
    return x - (x - s) / (1 + lr * wd);
  }
};

// Lion b = (0.9, 0.99): u = lr (sign(b1 m + (1-b1) g) + wd x), then m = b2 m + (1-b2) g.
struct RefLion {
  double m = 0;
  double step(double g, double x, int, double lr, double wd) {
    double c = 0.9 * m + 0.1 * g;
    double u = lr * ((c > 0 ? 1.0 : c < 0 ? -1.0 : 0.0) + wd * x);
    m = 0.99 * m + 0.01 * g;
    return u;
  }
};

// SGD: buf = mu buf + g; d = g + mu buf (Nesterov) or buf; u = lr (d + wd x).
struct RefSgd {
  double buf = 0;
  static inline bool nesterov = true;
  static inline double mu = 0.9;
  double step(double g, double x, int, double lr, double wd) {
    buf = mu * buf + g;
    double d = nesterov ? g + mu * buf : buf;
    return lr * (d + wd * x);
  }
};

}  // namespace

TEST(Adan, FourStepsMatchDoubleReference) {
  std::vector<RefAdan> ref;
  run_elementwise(config("adan", 0.01), ref, 1e-6);
  // After 4 steps the state holds the last gradient and the moments of the reference.
  ParamTable t = mixed_table();
  auto opt = make_optimizer(config("adan", 0.01), t);
  auto sb = opt->state_buffers();
  ASSERT_EQ(sb.size(), 4 * t.size());
  EXPECT_EQ(sb[0].name, "adan.m.model.layers.0.mlp.up_proj.weight");
  EXPECT_EQ(sb[1].name, "adan.m_diff.model.layers.0.mlp.up_proj.weight");
  EXPECT_EQ(sb[2].name, "adan.n.model.layers.0.mlp.up_proj.weight");
  EXPECT_EQ(sb[3].name, "adan.prev_grad.model.layers.0.mlp.up_proj.weight");
}

TEST(Adan, StateMatchesReferenceMoments) {
  ParamTable t = mixed_table();
  const int64_t N = t.total();
  auto x = optim_test::gaussian(N, 5);
  std::vector<float> u(N);
  auto opt = make_optimizer(config("adan", 0.01), t);
  std::vector<RefAdan> ref(N);
  for (int step = 1; step <= 3; ++step) {
    auto g = optim_test::gaussian(N, 5 + step);
    opt->compute_update(u.data(), x.data(), g.data(), 1.0);
    for (int64_t k = 0; k < N; ++k) ref[k].step(g[k], x[k], step, 0.01, 0.1);
  }
  for (const auto& b : opt->state_buffers()) {
    const ParamInfo& p = t.at(b.name.substr(b.name.find('.', 5) + 1));
    for (int64_t i = 0; i < p.numel; ++i) {
      const RefAdan& r = ref[p.offset + i];
      double want = b.name.rfind("adan.m.", 0) == 0        ? r.m
                    : b.name.rfind("adan.m_diff.", 0) == 0 ? r.md
                    : b.name.rfind("adan.n.", 0) == 0      ? r.n
                                                           : r.prev;
      EXPECT_NEAR(b.data[i], want, 1e-6 * (1 + std::abs(want))) << b.name << "[" << i << "]";
    }
  }
}

TEST(Adan, WeightDecayIsProximal) {
  // Zero gradient: s = 0 and x' = x / (1 + lr wd), so u = x lr wd / (1 + lr wd); none for the norm.
  ParamTable t = mixed_table();
  std::vector<float> x(t.total(), 2.0f), g(t.total(), 0.0f), u(t.total(), 0.0f);
  auto opt = make_optimizer(config("adan", 0.5), t);
  opt->compute_update(u.data(), x.data(), g.data(), 1.0);
  for (const auto& p : t.all())
    for (int64_t i = 0; i < p.numel; ++i) {
      double want = p.role == ParamRole::norm ? 0.0 : 2.0 - 2.0 / (1 + 0.5 * 0.1);
      EXPECT_NEAR(u[p.offset + i], want, 1e-7) << p.name;
    }
}

TEST(Lion, FourStepsMatchDoubleReference) {
  std::vector<RefLion> ref;
  run_elementwise(config("lion", 1e-3), ref, 1e-6);
  // The update is lr * (+-1 + wd x): magnitude check on the first step with x = 0.
  ParamTable t = mixed_table();
  std::vector<float> x(t.total(), 0.0f), u(t.total(), 0.0f);
  auto g = optim_test::gaussian(t.total(), 7);
  make_optimizer(config("lion", 1e-3), t)->compute_update(u.data(), x.data(), g.data(), 1.0);
  for (const auto& p : t.all())
    for (int64_t i = 0; i < p.numel; ++i) EXPECT_FLOAT_EQ(std::abs(u[p.offset + i]), 1e-3f);
}

TEST(Sgd, FourStepsMatchDoubleReferenceNesterovAndPlain) {
  for (bool nest : {true, false}) {
    RefSgd::nesterov = nest;
    RefSgd::mu = 0.9;
    OptimConfig c = config("sgd", 0.05);
    c.nesterov = nest;
    std::vector<RefSgd> ref;
    run_elementwise(c, ref, 1e-6);
  }
  RefSgd::nesterov = true;
  RefSgd::mu = 0.5;
  OptimConfig c = config("sgd", 0.05);
  c.momentum = 0.5;
  std::vector<RefSgd> ref;
  run_elementwise(c, ref, 1e-6);
}

namespace {

// MARS (AdamW form) on one tensor: c = g + gamma b1/(1-b1) (g - g_prev) (c = g at step 1), scaled to norm 1
// if its norm is larger, then bias-corrected AdamW on c.
struct RefMarsTensor {
  std::vector<double> m, v, prev;
  double last_norm = 0;
  std::vector<double> step(const float* g, const float* x, int64_t n, int t, double lr, double wd, double b1,
                           double b2, double eps, double gamma) {
    if (m.empty()) m.assign(n, 0.0), v.assign(n, 0.0), prev.assign(n, 0.0);
    std::vector<double> c(n), u(n);
    double ss = 0;
    for (int64_t i = 0; i < n; ++i) {
      c[i] = t == 1 ? g[i] : g[i] + gamma * b1 / (1 - b1) * (g[i] - prev[i]);
      ss += c[i] * c[i];
      prev[i] = g[i];
    }
    last_norm = std::sqrt(ss);
    for (int64_t i = 0; i < n; ++i) {
      double ci = last_norm > 1 ? c[i] / last_norm : c[i];
      m[i] = b1 * m[i] + (1 - b1) * ci;
      v[i] = b2 * v[i] + (1 - b2) * ci * ci;
      double mh = m[i] / (1 - std::pow(b1, t)), vh = v[i] / (1 - std::pow(b2, t));
      u[i] = lr * (mh / (std::sqrt(vh) + eps) + wd * x[i]);
    }
    return u;
  }
};

}  // namespace

TEST(Mars, FourStepsMatchDoubleReferenceWithAndWithoutClipping) {
  ParamTable t;
  t.add("model.layers.0.mlp.up_proj.weight", {4, 3}, ParamRole::matrix);  // gradient norm > 1: scaled
  t.add("model.layers.0.mlp.down_proj.weight", {3, 4}, ParamRole::matrix);  // gradient norm < 1
  t.add("model.norm.weight", {5}, ParamRole::norm);                          // AdamW, same betas
  t.add("lm_head.weight", {2, 6}, ParamRole::head);
  const int64_t N = t.total();
  OptimConfig c = config("mars", 0.01);  // defaults: b = (0.95, 0.99), eps 1e-8, gamma 0.025
  auto opt = make_optimizer(c, t);
  auto x = optim_test::gaussian(N, 200);
  std::vector<float> u(N);
  std::vector<RefMarsTensor> ref(t.size());
  std::vector<double> am(N, 0.0), av(N, 0.0);
  int clipped = 0, unclipped = 0;
  for (int step = 1; step <= 4; ++step) {
    auto g = optim_test::gaussian(N, 200 + step);
    for (int64_t i = 0; i < 12; ++i) g[t.at("model.layers.0.mlp.down_proj.weight").offset + i] *= 0.1f;
    const double lr = 0.01 * kScales[step - 1];
    opt->compute_update(u.data(), x.data(), g.data(), kScales[step - 1]);
    for (size_t k = 0; k < t.size(); ++k) {
      const ParamInfo& p = t.all()[k];
      if (p.shape.size() == 2) {
        auto want = ref[k].step(g.data() + p.offset, x.data() + p.offset, p.numel, step, lr, 0.1, 0.95, 0.99,
                                1e-8, 0.025);
        (ref[k].last_norm > 1 ? clipped : unclipped)++;
        for (int64_t i = 0; i < p.numel; ++i)
          EXPECT_NEAR(u[p.offset + i], want[i], 1e-8 + 1e-5 * std::abs(want[i])) << p.name << " step " << step;
      } else {
        for (int64_t i = 0; i < p.numel; ++i) {
          const int64_t q = p.offset + i;
          am[q] = 0.95 * am[q] + 0.05 * g[q];
          av[q] = 0.99 * av[q] + 0.01 * double(g[q]) * g[q];
          double want = lr * (am[q] / (1 - std::pow(0.95, step)) / (std::sqrt(av[q] / (1 - std::pow(0.99, step))) + 1e-8));
          EXPECT_NEAR(u[q], want, 1e-8 + 1e-5 * std::abs(want)) << p.name << " step " << step;
        }
      }
    }
    for (int64_t k = 0; k < N; ++k) x[k] -= u[k];
  }
  EXPECT_GT(clipped, 0);
  EXPECT_GT(unclipped, 0);
  std::vector<std::string> names;
  for (const auto& b : opt->state_buffers()) names.push_back(b.name);
  EXPECT_EQ(names.size(), 3u * 3 + 2);
  EXPECT_EQ(names[0], "mars.m.model.layers.0.mlp.up_proj.weight");
  EXPECT_EQ(names[1], "mars.v.model.layers.0.mlp.up_proj.weight");
  EXPECT_EQ(names[2], "mars.prev_grad.model.layers.0.mlp.up_proj.weight");
  EXPECT_EQ(names[9], "adamw.m.model.norm.weight");
}
