// SwiGLU gate: out = silu(gate) * up, silu(g) = g * sigmoid(g).
#include <algorithm>

#include "kernels/cpu/fast_math.h"
#include "kernels/cpu/ops.h"

namespace onestep::cpu {

using namespace detail;

namespace {
constexpr int64_t kChunk = 8192;  // elements per parallel work item

inline float sigmoid(float g) { return 1.0f / (1.0f + fast_exp(-g)); }

void fwd_span(float* out, const float* gate, const float* up, int64_t n) {
  int64_t i = 0;
#ifdef ONESTEP_CPU_AVX2
  const __m256 one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f);
  for (; i + 8 <= n; i += 8) {
    const __m256 g = _mm256_loadu_ps(gate + i);
    const __m256 s = _mm256_div_ps(one, _mm256_add_ps(one, exp8(_mm256_xor_ps(g, sign))));
    _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(g, s), _mm256_loadu_ps(up + i)));
  }
#endif
  for (; i < n; ++i) out[i] = gate[i] * sigmoid(gate[i]) * up[i];
}

// silu'(g) = s * (1 + g * (1 - s)), s = sigmoid(g).  dgate += dout * up * silu'(g) ; dup += dout * silu(g).
void bwd_span(float* dgate, float* dup, const float* dout, const float* gate, const float* up, int64_t n) {
  int64_t i = 0;
#ifdef ONESTEP_CPU_AVX2
  const __m256 one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f);
  for (; i + 8 <= n; i += 8) {
    const __m256 g = _mm256_loadu_ps(gate + i);
    const __m256 s = _mm256_div_ps(one, _mm256_add_ps(one, exp8(_mm256_xor_ps(g, sign))));
    const __m256 d = _mm256_loadu_ps(dout + i);
    if (dgate) {
      const __m256 ds = _mm256_mul_ps(s, _mm256_fmadd_ps(g, _mm256_sub_ps(one, s), one));
      const __m256 gr = _mm256_mul_ps(_mm256_mul_ps(d, _mm256_loadu_ps(up + i)), ds);
      _mm256_storeu_ps(dgate + i, _mm256_add_ps(_mm256_loadu_ps(dgate + i), gr));
    }
    if (dup)
      _mm256_storeu_ps(dup + i,
                       _mm256_add_ps(_mm256_loadu_ps(dup + i), _mm256_mul_ps(d, _mm256_mul_ps(g, s))));
  }
#endif
  for (; i < n; ++i) {
    const float g = gate[i], s = sigmoid(g), d = dout[i];
    if (dgate) dgate[i] += d * up[i] * (s * fmadd(g, 1.0f - s, 1.0f));
    if (dup) dup[i] += d * (g * s);
  }
}
}  // namespace

void swiglu_forward(float* out, const float* gate, const float* up, int N, int F) {
  const int64_t total = static_cast<int64_t>(N) * F;
  const int64_t nchunks = (total + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < nchunks; ++c) {
    const int64_t lo = c * kChunk, n = std::min(kChunk, total - lo);
    fwd_span(out + lo, gate + lo, up + lo, n);
  }
}

void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up, int N,
                     int F) {
  const int64_t total = static_cast<int64_t>(N) * F;
  const int64_t nchunks = (total + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < nchunks; ++c) {
    const int64_t lo = c * kChunk, n = std::min(kChunk, total - lo);
    bwd_span(dgate ? dgate + lo : nullptr, dup ? dup + lo : nullptr, dout + lo, gate + lo, up + lo, n);
  }
}

}  // namespace onestep::cpu
