#include "kernel_test_util.h"
#include "kernels/cpu/ops.h"

namespace {
using namespace onestep::cpu;

TEST(Embedding, ForwardAndRepeatedTokenGradients) {
  const int V = 11, C = 70, N = 23;  // C spans more than one 64-channel chunk, with a tail
  std::mt19937 rng(3);
  auto wte = kt::randn(V * C, rng), g = kt::randn(N * C, rng);
  std::vector<int32_t> tokens(N);
  std::uniform_int_distribution<int> tok(0, 4);  // few distinct ids: many repeats
  for (auto& t : tokens) t = tok(rng);
  tokens[0] = tokens[N - 1] = 10;

  std::vector<float> out(N * C);
  embedding_forward(out.data(), tokens.data(), wte.data(), N, C);
  for (int n = 0; n < N; ++n)
    for (int c = 0; c < C; ++c) ASSERT_EQ(out[n * C + c], wte[tokens[n] * C + c]);

  auto wte_ref = kt::to_double(wte);
  const auto gd = kt::to_double(g);
  auto loss = [&] {
    double s = 0.0;
    for (int n = 0; n < N; ++n)
      for (int c = 0; c < C; ++c) s += gd[n * C + c] * wte_ref[tokens[n] * C + c];
    return s;
  };
  std::vector<float> dwte(V * C, 0.0f);
  embedding_backward(dwte.data(), g.data(), tokens.data(), N, C);
  kt::expect_grad(dwte, wte_ref, loss, "dwte");
  for (int c = 0; c < C; ++c) EXPECT_EQ(dwte[7 * C + c], 0.0f);  // unused row untouched
  // Accumulates.
  std::vector<float> twice = dwte;
  embedding_backward(twice.data(), g.data(), tokens.data(), N, C);
  for (int i = 0; i < V * C; ++i) EXPECT_FLOAT_EQ(twice[i], 2 * dwte[i]);
}

}  // namespace
