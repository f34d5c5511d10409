#include "kernel_test_util.h"
#include "kernels/cpu/ops.h"

namespace {
using namespace onestep::cpu;

// out[N,OC] = inp[N,C] @ w[OC,C]^T in double.
std::vector<double> ref_matmul(const std::vector<double>& inp, const std::vector<double>& w, int N, int C,
                               int OC) {
  std::vector<double> out(static_cast<size_t>(N) * OC, 0.0);
  for (int n = 0; n < N; ++n)
    for (int o = 0; o < OC; ++o) {
      double s = 0.0;
      for (int c = 0; c < C; ++c) s += inp[n * C + c] * w[o * C + c];
      out[n * OC + o] = s;
    }
  return out;
}

TEST(Matmul, ForwardAndGradients) {
  const int N = 7, C = 13, OC = 5;  // non-square everywhere
  std::mt19937 rng(1);
  auto inp = kt::randn(N * C, rng), w = kt::randn(OC * C, rng), g = kt::randn(N * OC, rng);
  std::vector<float> out(N * OC);
  matmul_forward(out.data(), inp.data(), w.data(), N, C, OC);
  auto dinp_ref = kt::to_double(inp), w_ref = kt::to_double(w);
  const auto gd = kt::to_double(g);
  kt::expect_close(out, ref_matmul(dinp_ref, w_ref, N, C, OC), 1e-5, 1e-6, "out");

  std::vector<float> dinp(N * C, 0.0f), dw(OC * C, 0.0f);
  matmul_backward(dinp.data(), dw.data(), g.data(), inp.data(), w.data(), N, C, OC);
  auto loss = [&] { return kt::dot(gd, ref_matmul(dinp_ref, w_ref, N, C, OC)); };
  kt::expect_grad(dinp, dinp_ref, loss, "dinp");
  kt::expect_grad(dw, w_ref, loss, "dw");
}

TEST(Matmul, BackwardAccumulatesAndSkipsNull) {
  const int N = 9, C = 4, OC = 6;
  std::mt19937 rng(2);
  auto inp = kt::randn(N * C, rng), w = kt::randn(OC * C, rng), g = kt::randn(N * OC, rng);
  std::vector<float> dinp1(N * C, 0.0f), dw1(OC * C, 0.0f);
  matmul_backward(dinp1.data(), dw1.data(), g.data(), inp.data(), w.data(), N, C, OC);
  std::vector<float> dinp2(N * C, 0.0f), dw2(OC * C, 0.0f);
  matmul_backward(dinp2.data(), dw2.data(), g.data(), inp.data(), w.data(), N, C, OC);
  matmul_backward(dinp2.data(), dw2.data(), g.data(), inp.data(), w.data(), N, C, OC);
  for (int i = 0; i < N * C; ++i) EXPECT_FLOAT_EQ(dinp2[i], 2 * dinp1[i]);
  for (int i = 0; i < OC * C; ++i) EXPECT_FLOAT_EQ(dw2[i], 2 * dw1[i]);
  // Accumulation onto non-zero contents, and null outputs are skipped.
  std::vector<float> dinp3(N * C, 1.5f), dw3(OC * C, -2.0f);
  matmul_backward(dinp3.data(), nullptr, g.data(), inp.data(), w.data(), N, C, OC);
  matmul_backward(nullptr, dw3.data(), g.data(), inp.data(), w.data(), N, C, OC);
  for (int i = 0; i < N * C; ++i) EXPECT_FLOAT_EQ(dinp3[i], 1.5f + dinp1[i]);
  for (int i = 0; i < OC * C; ++i) EXPECT_FLOAT_EQ(dw3[i], -2.0f + dw1[i]);
}

}  // namespace
