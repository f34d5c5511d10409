#include "kernel_test_util.h"
#include "kernels/cpu/ops.h"

namespace {
using namespace onestep::cpu;

std::vector<double> ref_swiglu(const std::vector<double>& gate, const std::vector<double>& up) {
  std::vector<double> out(gate.size());
  for (size_t i = 0; i < gate.size(); ++i) out[i] = gate[i] / (1.0 + std::exp(-gate[i])) * up[i];
  return out;
}

TEST(SwiGLU, ForwardAndGradients) {
  const int N = 5, F = 37;
  std::mt19937 rng(5);
  auto gate = kt::randn(N * F, rng, 3.0f), up = kt::randn(N * F, rng), g = kt::randn(N * F, rng);
  gate[0] = 40.0f;  // saturated ends
  gate[1] = -40.0f;
  std::vector<float> out(N * F);
  swiglu_forward(out.data(), gate.data(), up.data(), N, F);
  auto gr = kt::to_double(gate), ur = kt::to_double(up);
  const auto gd = kt::to_double(g);
  kt::expect_close(out, ref_swiglu(gr, ur), 1e-5, 1e-6, "out");

  std::vector<float> dgate(N * F, 0.0f), dup(N * F, 0.0f);
  swiglu_backward(dgate.data(), dup.data(), g.data(), gate.data(), up.data(), N, F);
  auto loss = [&] { return kt::dot(gd, ref_swiglu(gr, ur)); };
  kt::expect_grad(dgate, gr, loss, "dgate");
  kt::expect_grad(dup, ur, loss, "dup");

  std::vector<float> dgate2 = dgate, dup2 = dup;
  swiglu_backward(dgate2.data(), dup2.data(), g.data(), gate.data(), up.data(), N, F);
  for (int i = 0; i < N * F; ++i) {
    EXPECT_FLOAT_EQ(dgate2[i], 2 * dgate[i]);
    EXPECT_FLOAT_EQ(dup2[i], 2 * dup[i]);
  }
}

}  // namespace
