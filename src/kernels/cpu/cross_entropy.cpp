// Softmax cross-entropy over the vocabulary, numerically stable (max-subtracted).
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/fast_math.h"
#include "kernels/cpu/ops.h"

namespace onestep::cpu {

using namespace detail;

namespace {
// max and sum(exp(x - max)) of one row.
inline void row_max_sum(const float* x, int V, float& mx, float& sum) {
  float m = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : m)
  for (int j = 0; j < V; ++j) m = x[j] > m ? x[j] : m;
  float s = 0.0f;
  int j = 0;
#ifdef ONESTEP_CPU_AVX2
  const __m256 vm = _mm256_set1_ps(m);
  __m256 acc = _mm256_setzero_ps();
  for (; j + 8 <= V; j += 8) acc = _mm256_add_ps(acc, exp8(_mm256_sub_ps(_mm256_loadu_ps(x + j), vm)));
  s = hsum8(acc);
#endif
  for (; j < V; ++j) s += fast_exp(x[j] - m);
  mx = m;
  sum = s;
}

// d[j] = exp(x[j] - mx) * k ; d may alias x.
inline void write_probs(float* d, const float* x, int V, float mx, float k) {
  int j = 0;
#ifdef ONESTEP_CPU_AVX2
  const __m256 vm = _mm256_set1_ps(mx), vk = _mm256_set1_ps(k);
  for (; j + 8 <= V; j += 8)
    _mm256_storeu_ps(d + j, _mm256_mul_ps(exp8(_mm256_sub_ps(_mm256_loadu_ps(x + j), vm)), vk));
#endif
  for (; j < V; ++j) d[j] = fast_exp(x[j] - mx) * k;
}
}  // namespace

double cross_entropy_forward(float* losses, const float* logits, const int32_t* targets, int N, int V) {
  std::vector<float> row_loss(static_cast<size_t>(N > 0 ? N : 0));
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    const int t = targets[n];
    float l = 0.0f;
    if (t >= 0) {
      const float* x = logits + static_cast<int64_t>(n) * V;
      float mx, sum;
      row_max_sum(x, V, mx, sum);
      l = std::log(sum) + mx - x[t];
    }
    row_loss[n] = l;
    if (losses) losses[n] = l;
  }
  double total = 0.0;  // serial, in row order: deterministic
  int64_t count = 0;
  for (int n = 0; n < N; ++n)
    if (targets[n] >= 0) {
      total += row_loss[n];
      ++count;
    }
  return count > 0 ? total / static_cast<double>(count) : 0.0;
}

void cross_entropy_backward(float* dlogits, const float* logits, const int32_t* targets, int N, int V,
                            float scale) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    const int64_t off = static_cast<int64_t>(n) * V;
    float* d = dlogits + off;
    const float* x = logits + off;  // may alias d: each element is read before it is written
    const int t = targets[n];
    if (t < 0) {
#pragma omp simd
      for (int j = 0; j < V; ++j) d[j] = 0.0f;
      continue;
    }
    float mx, sum;
    row_max_sum(x, V, mx, sum);
    const float k = scale / sum;
    write_probs(d, x, V, mx, k);
    d[t] -= scale;
  }
}

}  // namespace onestep::cpu
