// Element-wise helpers. The double reduction uses a fixed split into blocks whose partial sums are
// added in block order, so the result does not depend on the thread count.
#include <cstddef>
#include <vector>

#include "kernels/cpu/ops.h"

namespace onestep::cpu {

void add_inplace(float* y, const float* x, int64_t n) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

void scale_inplace(float* y, float s, int64_t n) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) y[i] *= s;
}

namespace {
// Sum of squares of x[lo, hi) with four double lanes combined in a fixed order.
double block_sum_squares(const float* x, int64_t lo, int64_t hi) {
  double acc[4] = {0.0, 0.0, 0.0, 0.0};
  int64_t i = lo;
  for (; i + 4 <= hi; i += 4)
    for (int j = 0; j < 4; ++j) acc[j] += static_cast<double>(x[i + j]) * x[i + j];
  for (; i < hi; ++i) acc[0] += static_cast<double>(x[i]) * x[i];
  return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}
}  // namespace

double sum_squares(const float* x, int64_t n) {
  constexpr int64_t kBlock = 1 << 14;
  const int64_t nblocks = (n + kBlock - 1) / kBlock;
  if (nblocks <= 1) return n > 0 ? block_sum_squares(x, 0, n) : 0.0;
  // Partials per fixed block, then a serial sum in block order: independent of the thread count.
  std::vector<double> partial(static_cast<std::size_t>(nblocks));
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < nblocks; ++b)
    partial[b] = block_sum_squares(x, b * kBlock, b * kBlock + kBlock < n ? b * kBlock + kBlock : n);
  double total = 0.0;
  for (int64_t b = 0; b < nblocks; ++b) total += partial[b];
  return total;
}

void fill_zero(float* y, int64_t n) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) y[i] = 0.0f;
}

}  // namespace onestep::cpu
