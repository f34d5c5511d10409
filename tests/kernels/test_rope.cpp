#include "kernel_test_util.h"
#include "kernels/cpu/ops.h"

namespace {
using namespace onestep::cpu;

// HF rotate_half: out = x * cos + rotate_half(x) * sin, rotate_half([x1, x2]) = [-x2, x1].
std::vector<double> ref_rope(const std::vector<double>& x, int B, int T, int H, int D, double theta) {
  std::vector<double> out(x.size());
  const int half = D / 2;
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < T; ++t)
      for (int h = 0; h < H; ++h) {
        const size_t off = ((static_cast<size_t>(b) * T + t) * H + h) * D;
        for (int i = 0; i < D; ++i) {
          const int fi = i % half;
          const double a = t * std::pow(theta, -2.0 * fi / D);
          const double rot = i < half ? -x[off + i + half] : x[off + i - half];
          out[off + i] = x[off + i] * std::cos(a) + rot * std::sin(a);
        }
      }
  return out;
}

TEST(Rope, ForwardGradientsAndProperties) {
  const int B = 2, T = 9, H = 3, D = 16;
  const float theta = 10000.0f;
  std::mt19937 rng(7);
  auto x = kt::randn(B * T * H * D, rng), g = kt::randn(B * T * H * D, rng);
  std::vector<float> out(x.size());
  rope_forward(out.data(), x.data(), B, T, H, D, theta);
  auto xr = kt::to_double(x);
  const auto gd = kt::to_double(g);
  kt::expect_close(out, ref_rope(xr, B, T, H, D, theta), 1e-5, 1e-6, "out");

  // In place gives the same bits.
  std::vector<float> inplace = x;
  rope_forward(inplace.data(), inplace.data(), B, T, H, D, theta);
  EXPECT_EQ(inplace, out);

  const int half = D / 2;
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < T; ++t)
      for (int h = 0; h < H; ++h) {
        const size_t off = ((static_cast<size_t>(b) * T + t) * H + h) * D;
        for (int i = 0; i < half; ++i) {
          if (t == 0) {  // position 0 is the identity
            EXPECT_EQ(out[off + i], x[off + i]);
            EXPECT_EQ(out[off + i + half], x[off + i + half]);
          }
          // a rotation preserves the norm of each (i, i + D/2) pair
          const double n0 = std::hypot(x[off + i], x[off + i + half]);
          const double n1 = std::hypot(out[off + i], out[off + i + half]);
          EXPECT_NEAR(n1, n0, 1e-5 * (1 + n0));
        }
      }

  std::vector<float> dx(x.size(), 0.0f);
  rope_backward(dx.data(), g.data(), B, T, H, D, theta);
  auto loss = [&] { return kt::dot(gd, ref_rope(xr, B, T, H, D, theta)); };
  kt::expect_grad(dx, xr, loss, "dx");
  std::vector<float> dx2 = dx;
  rope_backward(dx2.data(), g.data(), B, T, H, D, theta);
  for (size_t i = 0; i < dx.size(); ++i) EXPECT_FLOAT_EQ(dx2[i], 2 * dx[i]);
}

TEST(Rope, LongSequenceAngles) {
  // Large positions exercise the table precision (angles computed in double).
  const int B = 1, T = 2048, H = 1, D = 64;
  std::mt19937 rng(8);
  auto x = kt::randn(B * T * H * D, rng);
  std::vector<float> out(x.size());
  rope_forward(out.data(), x.data(), B, T, H, D, 10000.0f);
  kt::expect_close(out, ref_rope(kt::to_double(x), B, T, H, D, 10000.0), 1e-5, 1e-6, "out");
}

}  // namespace
