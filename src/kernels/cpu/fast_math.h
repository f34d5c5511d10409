// Private to src/kernels/cpu: a fast float exp. GCC does not vectorise std::exp (nor, reliably, a
// branch-free scalar polynomial: -ftrapping-math blocks if-conversion), so the hot loops call exp8 on
// AVX2 vectors explicitly and fast_exp for tails and non-AVX2 builds. Both compute the same
// Cephes-style approximation (range reduction + degree-6 polynomial, ~1-2 ulp): exactly 0 below
// -87.33 (so exp(-inf) = 0), saturating at exp(88) ~ 1.65e38 above 88.
#pragma once
#include <bit>
#include <cmath>
#include <cstdint>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define ONESTEP_CPU_AVX2 1
#endif

namespace onestep::cpu::detail {

inline constexpr float kExpLo = -87.3365447f, kExpHi = 88.0f;

// Fused multiply-add where the hardware has it (std::fma is a slow library call otherwise).
inline float fmadd(float a, float b, float c) {
#ifdef __FMA__
  return std::fma(a, b, c);
#else
  return a * b + c;
#endif
}

inline float fast_exp(float x) {
  const float xc = x < kExpLo ? kExpLo : (x > kExpHi ? kExpHi : x);
  const float n = std::floor(fmadd(xc, 1.44269504088896341f, 0.5f));
  float r = fmadd(n, -0.693359375f, xc);
  r = fmadd(n, 2.12194440e-4f, r);
  float p = 1.9875691500e-4f;
  p = fmadd(p, r, 1.3981999507e-3f);
  p = fmadd(p, r, 8.3334519073e-3f);
  p = fmadd(p, r, 4.1665795894e-2f);
  p = fmadd(p, r, 1.6666665459e-1f);
  p = fmadd(p, r, 5.0000001201e-1f);
  const float y = fmadd(p, r * r, r) + 1.0f;
  const float v = y * std::bit_cast<float>((static_cast<int32_t>(n) + 127) << 23);
  return x < kExpLo ? 0.0f : v;
}

#ifdef ONESTEP_CPU_AVX2
inline __m256 exp8(__m256 x) {
  const __m256 lo = _mm256_set1_ps(kExpLo);
  const __m256 xc = _mm256_min_ps(_mm256_max_ps(x, lo), _mm256_set1_ps(kExpHi));
  const __m256 n =
      _mm256_floor_ps(_mm256_fmadd_ps(xc, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
  __m256 r = _mm256_fmadd_ps(n, _mm256_set1_ps(-0.693359375f), xc);
  r = _mm256_fmadd_ps(n, _mm256_set1_ps(2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  const __m256 y = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  const __m256 v = _mm256_mul_ps(y, _mm256_castsi256_ps(e));
  return _mm256_andnot_ps(_mm256_cmp_ps(x, lo, _CMP_LT_OQ), v);  // x < lo (incl. -inf) -> 0
}

// Horizontal sum / max in a fixed order.
inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline float hmax8(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
// Lanes i with i < n (n may be <= 0 or >= 8).
inline __m256 lane_mask(int n) {
  return _mm256_castsi256_ps(
      _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
}
#endif

}  // namespace onestep::cpu::detail
