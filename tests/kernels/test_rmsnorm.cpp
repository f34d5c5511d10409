#include "kernel_test_util.h"
#include "kernels/cpu/ops.h"

namespace {
using namespace onestep::cpu;

std::vector<double> ref_rmsnorm(const std::vector<double>& x, const std::vector<double>& w, int N, int C,
                                double eps, std::vector<double>* rstd = nullptr) {
  std::vector<double> out(x.size());
  for (int n = 0; n < N; ++n) {
    double ss = 0.0;
    for (int c = 0; c < C; ++c) ss += x[n * C + c] * x[n * C + c];
    const double r = 1.0 / std::sqrt(ss / C + eps);
    if (rstd) rstd->push_back(r);
    for (int c = 0; c < C; ++c) out[n * C + c] = x[n * C + c] * r * w[c];
  }
  return out;
}

TEST(RmsNorm, ForwardAndGradients) {
  const int N = 6, C = 67;  // more than one 64-channel chunk of the dw reduction
  const float eps = 1e-5f;
  std::mt19937 rng(4);
  auto x = kt::randn(N * C, rng, 2.0f), w = kt::randn(C, rng), g = kt::randn(N * C, rng);
  for (auto& wi : w) wi += 1.0f;
  std::vector<float> out(N * C), rstd(N);
  rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), N, C, eps);
  auto xr = kt::to_double(x), wr = kt::to_double(w);
  const auto gd = kt::to_double(g);
  std::vector<double> rstd_ref;
  kt::expect_close(out, ref_rmsnorm(xr, wr, N, C, eps, &rstd_ref), 1e-5, 1e-6, "out");
  kt::expect_close(rstd, rstd_ref, 1e-5, 0.0, "rstd");

  std::vector<float> dx(N * C, 0.0f), dw(C, 0.0f);
  rmsnorm_backward(dx.data(), dw.data(), g.data(), x.data(), w.data(), rstd.data(), N, C);
  auto loss = [&] { return kt::dot(gd, ref_rmsnorm(xr, wr, N, C, eps)); };
  kt::expect_grad(dx, xr, loss, "dx");
  kt::expect_grad(dw, wr, loss, "dw");

  // Accumulates into both outputs.
  std::vector<float> dx2 = dx, dw2 = dw;
  rmsnorm_backward(dx2.data(), dw2.data(), g.data(), x.data(), w.data(), rstd.data(), N, C);
  for (int i = 0; i < N * C; ++i) EXPECT_FLOAT_EQ(dx2[i], 2 * dx[i]);
  for (int i = 0; i < C; ++i) EXPECT_FLOAT_EQ(dw2[i], 2 * dw[i]);
}

}  // namespace
