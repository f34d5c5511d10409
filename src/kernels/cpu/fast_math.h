// Private to src/kernels/cpu: an exp that GCC vectorises inside `#pragma omp simd` loops (std::exp does
// not without -ffast-math). Cephes-style range reduction + degree-6 polynomial, ~1-2 ulp over the
// normal range; returns exactly 0 below -87.33 (so exp(-inf) = 0) and saturates at FLT_MAX-ish above 88.37.
#pragma once
#include <bit>
#include <cmath>
#include <cstdint>

namespace onestep::cpu::detail {

#pragma omp declare simd notinbranch
[[gnu::always_inline]] inline float fast_exp(float x) {
  const float lo = -87.3365447f, hi = 88.3762626f;
  const float xc = x < lo ? lo : (x > hi ? hi : x);
  const float n = std::floor(xc * 1.44269504088896341f + 0.5f);
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  const int32_t e = (static_cast<int32_t>(n) + 127) << 23;
  const float v = y * std::bit_cast<float>(e);
  return x < lo ? 0.0f : v;
}

}  // namespace onestep::cpu::detail
