// CPU emulation (tests/cuda_emu): __nv_bfloat16 and the device's conversions, written from the PTX definition
// (cvt.rn.bf16.f32: round to nearest, ties to even; NaN becomes the canonical 0x7FFF), independently of the
// project's core/bf16.h so that the two check each other.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

struct __nv_bfloat16 {
  unsigned short __x;
};
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  if (std::isnan(f)) return {0x7FFF};
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint32_t kept = u >> 16, dropped = u & 0xFFFFu;  // compare the dropped half with one half-ulp
  const uint32_t r = dropped > 0x8000u || (dropped == 0x8000u && (kept & 1u)) ? kept + 1 : kept;
  return {static_cast<unsigned short>(r)};  // a carry into the exponent rounds up to the next binade or to inf
}
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.__x; }
inline float __bfloat162float(__nv_bfloat16 h) {
  const uint32_t u = static_cast<uint32_t>(h.__x) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
