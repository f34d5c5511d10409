#include "kernel_test_util.h"
#include "kernels/cpu/ops.h"

namespace {
using namespace onestep::cpu;

// Per-row losses (0 for ignored rows) and their mean over non-ignored rows, in double.
double ref_ce(const std::vector<double>& logits, const std::vector<int32_t>& t, int N, int V,
              std::vector<double>* losses = nullptr) {
  double total = 0.0;
  int count = 0;
  for (int n = 0; n < N; ++n) {
    double l = 0.0;
    if (t[n] >= 0) {
      double mx = -1e300;
      for (int j = 0; j < V; ++j) mx = std::max(mx, logits[n * V + j]);
      double s = 0.0;
      for (int j = 0; j < V; ++j) s += std::exp(logits[n * V + j] - mx);
      l = std::log(s) + mx - logits[n * V + t[n]];
      total += l;
      ++count;
    }
    if (losses) losses->push_back(l);
  }
  return count ? total / count : 0.0;
}

TEST(CrossEntropy, ForwardAndGradientWithIgnoredTargets) {
  const int N = 7, V = 53;
  std::mt19937 rng(6);
  auto logits = kt::randn(N * V, rng, 3.0f);
  for (int j = 0; j < V; ++j) logits[2 * V + j] += 1000.0f;  // stability: a row with huge logits
  std::vector<int32_t> t = {3, -1, 52, 0, -100, 17, 9};
  std::vector<float> losses(N);
  const double mean = cross_entropy_forward(losses.data(), logits.data(), t.data(), N, V);
  auto lr = kt::to_double(logits);
  std::vector<double> losses_ref;
  const double mean_ref = ref_ce(lr, t, N, V, &losses_ref);
  EXPECT_NEAR(mean, mean_ref, 1e-5 * std::fabs(mean_ref));
  kt::expect_close(losses, losses_ref, 1e-5, 1e-6, "losses");
  EXPECT_EQ(losses[1], 0.0f);
  EXPECT_EQ(losses[4], 0.0f);

  const float scale = 1.0f / 5.0f;      // 5 non-ignored rows: the gradient of the mean
  std::vector<float> d(N * V, 123.0f);  // overwritten, not accumulated
  cross_entropy_backward(d.data(), logits.data(), t.data(), N, V, scale);
  for (int j = 0; j < V; ++j) {
    EXPECT_EQ(d[1 * V + j], 0.0f);
    EXPECT_EQ(d[4 * V + j], 0.0f);
  }
  auto loss = [&] { return ref_ce(lr, t, N, V); };
  kt::expect_grad(d, lr, loss, "dlogits");

  // dlogits may alias logits (the fused classifier): same result bit for bit.
  std::vector<float> inplace = logits;
  cross_entropy_backward(inplace.data(), inplace.data(), t.data(), N, V, scale);
  EXPECT_EQ(inplace, d);
}

TEST(CrossEntropy, UniformLogitsGiveLogV) {
  const int N = 4, V = 8192;
  std::vector<float> logits(static_cast<size_t>(N) * V, 0.25f);
  std::vector<int32_t> t = {0, 100, 8191, 5};
  std::vector<float> losses(N);
  const double mean = cross_entropy_forward(losses.data(), logits.data(), t.data(), N, V);
  EXPECT_NEAR(mean, std::log(8192.0), 1e-5);
  for (float l : losses) EXPECT_NEAR(l, std::log(8192.0), 1e-5);
  // All targets ignored: mean 0, no NaN.
  std::vector<int32_t> none(N, -1);
  EXPECT_EQ(cross_entropy_forward(losses.data(), logits.data(), none.data(), N, V), 0.0);
}

}  // namespace
