#include <omp.h>

#include "kernel_test_util.h"
#include "kernels/cpu/ops.h"

namespace {
using namespace onestep::cpu;

struct Shape {
  int B, T, H, KV, D;
  size_t qn() const { return static_cast<size_t>(B) * T * H * D; }
  size_t kn() const { return static_cast<size_t>(B) * T * KV * D; }
  size_t qi(int b, int t, int h, int d) const { return ((static_cast<size_t>(b) * T + t) * H + h) * D + d; }
  size_t ki(int b, int t, int g, int d) const { return ((static_cast<size_t>(b) * T + t) * KV + g) * D + d; }
};

// Causal GQA softmax attention with full score rows, in double. Optionally the lse [B,H,T].
std::vector<double> ref_attention(const Shape& s, const std::vector<double>& q, const std::vector<double>& k,
                                  const std::vector<double>& v, std::vector<double>* lse = nullptr) {
  std::vector<double> out(s.qn(), 0.0), p(s.T);
  if (lse) lse->assign(static_cast<size_t>(s.B) * s.H * s.T, 0.0);
  const double scale = 1.0 / std::sqrt(static_cast<double>(s.D));
  for (int b = 0; b < s.B; ++b)
    for (int h = 0; h < s.H; ++h) {
      const int g = h / (s.H / s.KV);
      for (int i = 0; i < s.T; ++i) {
        double mx = -1e300;
        for (int j = 0; j <= i; ++j) {
          double dot = 0.0;
          for (int d = 0; d < s.D; ++d) dot += q[s.qi(b, i, h, d)] * k[s.ki(b, j, g, d)];
          p[j] = dot * scale;
          mx = std::max(mx, p[j]);
        }
        double sum = 0.0;
        for (int j = 0; j <= i; ++j) sum += (p[j] = std::exp(p[j] - mx));
        if (lse) (*lse)[(static_cast<size_t>(b) * s.H + h) * s.T + i] = mx + std::log(sum);
        for (int j = 0; j <= i; ++j)
          for (int d = 0; d < s.D; ++d) out[s.qi(b, i, h, d)] += p[j] / sum * v[s.ki(b, j, g, d)];
      }
    }
  return out;
}

// Analytic backward of ref_attention for upstream gradient g (checked against finite differences below).
void ref_attention_backward(const Shape& s, const std::vector<double>& q, const std::vector<double>& k,
                            const std::vector<double>& v, const std::vector<double>& g,
                            std::vector<double>& dq, std::vector<double>& dk, std::vector<double>& dv) {
  dq.assign(s.qn(), 0.0);
  dk.assign(s.kn(), 0.0);
  dv.assign(s.kn(), 0.0);
  const double scale = 1.0 / std::sqrt(static_cast<double>(s.D));
  std::vector<double> p(s.T), dp(s.T);
  for (int b = 0; b < s.B; ++b)
    for (int h = 0; h < s.H; ++h) {
      const int kvh = h / (s.H / s.KV);
      for (int i = 0; i < s.T; ++i) {
        double mx = -1e300;
        for (int j = 0; j <= i; ++j) {
          double dot = 0.0;
          for (int d = 0; d < s.D; ++d) dot += q[s.qi(b, i, h, d)] * k[s.ki(b, j, kvh, d)];
          p[j] = dot * scale;
          mx = std::max(mx, p[j]);
        }
        double sum = 0.0;
        for (int j = 0; j <= i; ++j) sum += (p[j] = std::exp(p[j] - mx));
        double delta = 0.0;
        for (int j = 0; j <= i; ++j) {
          p[j] /= sum;
          double dot = 0.0;
          for (int d = 0; d < s.D; ++d) dot += g[s.qi(b, i, h, d)] * v[s.ki(b, j, kvh, d)];
          dp[j] = dot;
          delta += p[j] * dot;
        }
        for (int j = 0; j <= i; ++j) {
          const double ds = p[j] * (dp[j] - delta) * scale;
          for (int d = 0; d < s.D; ++d) {
            dq[s.qi(b, i, h, d)] += ds * k[s.ki(b, j, kvh, d)];
            dk[s.ki(b, j, kvh, d)] += ds * q[s.qi(b, i, h, d)];
            dv[s.ki(b, j, kvh, d)] += p[j] * g[s.qi(b, i, h, d)];
          }
        }
      }
    }
}

struct AttnRun {
  std::vector<float> out, lse, dq, dk, dv;
};

// Forward and backward of the kernels with `threads` OpenMP threads; gradients accumulate onto `init`.
AttnRun run_kernels(const Shape& s, const std::vector<float>& q, const std::vector<float>& k,
                    const std::vector<float>& v, const std::vector<float>& g, int threads,
                    float init = 0.0f) {
  const int saved = omp_get_max_threads();
  omp_set_num_threads(threads);
  AttnRun r;
  r.out.resize(s.qn());
  r.lse.resize(static_cast<size_t>(s.B) * s.H * s.T);
  attention_forward(r.out.data(), r.lse.data(), q.data(), k.data(), v.data(), s.B, s.T, s.H, s.KV, s.D);
  r.dq.assign(s.qn(), init);
  r.dk.assign(s.kn(), init);
  r.dv.assign(s.kn(), init);
  attention_backward(r.dq.data(), r.dk.data(), r.dv.data(), g.data(), q.data(), k.data(), v.data(),
                     r.out.data(), r.lse.data(), s.B, s.T, s.H, s.KV, s.D);
  omp_set_num_threads(saved);
  return r;
}

struct Inputs {
  std::vector<float> q, k, v, g;
  Inputs(const Shape& s, unsigned seed) {
    std::mt19937 rng(seed);
    q = kt::randn(s.qn(), rng);
    k = kt::randn(s.kn(), rng);
    v = kt::randn(s.kn(), rng);
    g = kt::randn(s.qn(), rng);
  }
};

// Every element's gradient against central differences, GQA, T = 37 (not a multiple of the tile).
TEST(Attention, GradientsFiniteDifferenceGQA) {
  const Shape s{1, 37, 4, 2, 8};
  const Inputs in(s, 11);
  // 1 thread runs the single-pass backward; 4 threads with B*KV = 2 units run the two-pass backward.
  const AttnRun r = run_kernels(s, in.q, in.k, in.v, in.g, 1);
  const AttnRun r4 = run_kernels(s, in.q, in.k, in.v, in.g, 4);
  EXPECT_EQ(r.out, r4.out);
  EXPECT_EQ(r.dq, r4.dq);
  EXPECT_EQ(r.dk, r4.dk);
  EXPECT_EQ(r.dv, r4.dv);

  auto q = kt::to_double(in.q), k = kt::to_double(in.k), v = kt::to_double(in.v);
  const auto g = kt::to_double(in.g);
  std::vector<double> lse;
  kt::expect_close(r.out, ref_attention(s, q, k, v, &lse), 1e-5, 1e-6, "out");
  kt::expect_close(r.lse, lse, 1e-5, 1e-6, "lse");
  auto loss = [&] { return kt::dot(g, ref_attention(s, q, k, v)); };
  kt::expect_grad(r.dq, q, loss, "dq");
  kt::expect_grad(r.dk, k, loss, "dk");
  kt::expect_grad(r.dv, v, loss, "dv");
}

// T larger than a tile (several tiles plus a tail), D = 64 as in the presets: elementwise against the
// analytic double backward, plus directional finite differences; gradients accumulate (+=).
TEST(Attention, MultiTileAgainstReference) {
  const Shape s{2, 150, 4, 2, 64};
  const Inputs in(s, 12);
  const AttnRun r = run_kernels(s, in.q, in.k, in.v, in.g, 2, 0.5f);
  auto q = kt::to_double(in.q), k = kt::to_double(in.k), v = kt::to_double(in.v);
  const auto g = kt::to_double(in.g);
  std::vector<double> lse, dq, dk, dv;
  kt::expect_close(r.out, ref_attention(s, q, k, v, &lse), 1e-5, 1e-6, "out");
  kt::expect_close(r.lse, lse, 1e-5, 1e-6, "lse");
  ref_attention_backward(s, q, k, v, g, dq, dk, dv);
  for (auto* d : {&dq, &dk, &dv})
    for (auto& x : *d) x += 0.5;
  kt::expect_close(r.dq, dq, 1e-4, 1e-5, "dq");
  kt::expect_close(r.dk, dk, 1e-4, 1e-5, "dk");
  kt::expect_close(r.dv, dv, 1e-4, 1e-5, "dv");

  std::mt19937 rng(13);
  auto loss = [&] { return kt::dot(g, ref_attention(s, q, k, v)); };
  auto minus_init = [](std::vector<float> x) {
    for (auto& e : x) e -= 0.5f;
    return x;
  };
  kt::expect_directional(minus_init(r.dq), q, loss, rng, "dq", 2);
  kt::expect_directional(minus_init(r.dk), k, loss, rng, "dk", 2);
  kt::expect_directional(minus_init(r.dv), v, loss, rng, "dv", 2);
}

// Head size that is not a multiple of 8 (scalar tails), three query heads per kv head.
TEST(Attention, OddHeadSize) {
  const Shape s{1, 70, 3, 1, 6};
  const Inputs in(s, 14);
  const AttnRun r = run_kernels(s, in.q, in.k, in.v, in.g, 2);
  auto q = kt::to_double(in.q), k = kt::to_double(in.k), v = kt::to_double(in.v);
  const auto g = kt::to_double(in.g);
  std::vector<double> lse, dq, dk, dv;
  kt::expect_close(r.out, ref_attention(s, q, k, v, &lse), 1e-5, 1e-6, "out");
  kt::expect_close(r.lse, lse, 1e-5, 1e-6, "lse");
  ref_attention_backward(s, q, k, v, g, dq, dk, dv);
  kt::expect_close(r.dq, dq, 1e-4, 1e-5, "dq");
  kt::expect_close(r.dk, dk, 1e-4, 1e-5, "dk");
  kt::expect_close(r.dv, dv, 1e-4, 1e-5, "dv");
}

// Changing a future key/value leaves every earlier output (and lse) bit-identical.
TEST(Attention, Causality) {
  const Shape s{2, 150, 4, 2, 16};
  Inputs in(s, 15);
  const AttnRun a = run_kernels(s, in.q, in.k, in.v, in.g, 2);
  const int tc = 100;
  std::mt19937 rng(16);
  std::normal_distribution<float> nd(0.0f, 5.0f);
  for (int b = 0; b < s.B; ++b)
    for (int g = 0; g < s.KV; ++g)
      for (int d = 0; d < s.D; ++d) {
        in.k[s.ki(b, tc, g, d)] = nd(rng);
        in.v[s.ki(b, tc, g, d)] = nd(rng);
      }
  const AttnRun c = run_kernels(s, in.q, in.k, in.v, in.g, 2);
  bool later_changed = false;
  for (int b = 0; b < s.B; ++b)
    for (int h = 0; h < s.H; ++h)
      for (int t = 0; t < s.T; ++t) {
        const size_t li = (static_cast<size_t>(b) * s.H + h) * s.T + t;
        if (t < tc) {
          EXPECT_EQ(a.lse[li], c.lse[li]);
        }
        for (int d = 0; d < s.D; ++d) {
          const size_t i = s.qi(b, t, h, d);
          if (t < tc) {
            ASSERT_EQ(a.out[i], c.out[i]) << b << " " << t << " " << h << " " << d;
          } else if (a.out[i] != c.out[i]) {
            later_changed = true;
          }
        }
      }
  EXPECT_TRUE(later_changed);
}

// Same inputs, same thread count: bit-identical gradients. Also independent of the thread count.
TEST(Attention, BackwardDeterministic) {
  const Shape s{2, 150, 4, 2, 64};
  const Inputs in(s, 17);
  const AttnRun a = run_kernels(s, in.q, in.k, in.v, in.g, 2);
  const AttnRun b = run_kernels(s, in.q, in.k, in.v, in.g, 2);
  EXPECT_EQ(a.dq, b.dq);
  EXPECT_EQ(a.dk, b.dk);
  EXPECT_EQ(a.dv, b.dv);
  const AttnRun c = run_kernels(s, in.q, in.k, in.v, in.g, 3);  // 3 threads: the two-pass scheme
  EXPECT_EQ(a.out, c.out);
  EXPECT_EQ(a.dq, c.dq);
  EXPECT_EQ(a.dk, c.dk);
  EXPECT_EQ(a.dv, c.dv);
}

}  // namespace
