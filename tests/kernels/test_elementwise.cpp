#include <omp.h>

#include "kernel_test_util.h"
#include "kernels/cpu/ops.h"

namespace {
using namespace onestep::cpu;

TEST(Elementwise, AddScaleFill) {
  std::mt19937 rng(9);
  const int64_t n = 100003;
  auto y = kt::randn(n, rng), x = kt::randn(n, rng);
  auto y0 = y;
  add_inplace(y.data(), x.data(), n);
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(y[i], y0[i] + x[i]);
  scale_inplace(y.data(), 0.5f, n);
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(y[i], (y0[i] + x[i]) * 0.5f);
  fill_zero(y.data(), n);
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(y[i], 0.0f);
}

TEST(Elementwise, SumSquaresDoubleAndThreadIndependent) {
  std::mt19937 rng(10);
  for (int64_t n : {int64_t{0}, int64_t{1}, int64_t{7}, int64_t{16384}, int64_t{100003}}) {
    auto x = kt::randn(static_cast<size_t>(n), rng);
    double ref = 0.0;
    for (float v : x) ref += static_cast<double>(v) * v;
    const int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    const double s1 = sum_squares(x.data(), n);
    omp_set_num_threads(2);
    const double s2 = sum_squares(x.data(), n);
    omp_set_num_threads(saved);
    EXPECT_NEAR(s1, ref, 1e-12 * (1 + ref)) << n;
    EXPECT_EQ(s1, s2) << n;
  }
}

}  // namespace
