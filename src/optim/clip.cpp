#include <algorithm>
#include <vector>

#include "optim/optimizer.h"
#include "optim/reduce.h"

namespace onestep {

namespace optim_detail {

// Fixed 8192-float chunks, each summed in double with 4 interleaved accumulators, chunk sums added in
// order: the result does not depend on the number of threads.
double sum_squares(const float* x, int64_t n) {
  constexpr int64_t CH = 8192;
  const int64_t nch = (n + CH - 1) / CH;
  auto chunk = [&](int64_t k) {
    const float* p = x + k * CH;
    const int64_t len = std::min(CH, n - k * CH);
    double a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    int64_t i = 0;
    for (; i + 4 <= len; i += 4) {
      a0 += static_cast<double>(p[i]) * p[i];
      a1 += static_cast<double>(p[i + 1]) * p[i + 1];
      a2 += static_cast<double>(p[i + 2]) * p[i + 2];
      a3 += static_cast<double>(p[i + 3]) * p[i + 3];
    }
    for (; i < len; ++i) a0 += static_cast<double>(p[i]) * p[i];
    return (a0 + a1) + (a2 + a3);
  };
  if (nch <= 1) return nch == 1 ? chunk(0) : 0.0;
  std::vector<double> part(nch);
#pragma omp parallel for schedule(static) if (nch >= 8)
  for (int64_t k = 0; k < nch; ++k) part[k] = chunk(k);
  double s = 0;
  for (double v : part) s += v;
  return s;
}

}  // namespace optim_detail

// Sum of squares over every parameter slice (gaps between slices are ignored), in parameter order.
double grad_sum_squares(const float* g, const ParamTable& table) {
  double s = 0;
  for (const auto& p : table.all()) s += optim_detail::sum_squares(g + p.offset, p.numel);
  return s;
}

void scale_grads(float* g, const ParamTable& table, float s) {
  for (const auto& p : table.all()) {
    float* q = g + p.offset;
    const int64_t n = p.numel;
#pragma omp parallel for schedule(static) if (n >= 65536)
    for (int64_t i = 0; i < n; ++i) q[i] *= s;
  }
}

}  // namespace onestep
