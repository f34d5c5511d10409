// bfloat16 on the host: the storage type of the matmul-operand activations in bf16 precision (model/stage.h:
// OperandBuffer). The same 16 bits as CUDA's __nv_bfloat16 (the top half of an IEEE float), so device kernels
// reinterpret it; the host converts with the rounding the GPU uses (__float2bfloat16_rn: nearest, ties to even).
#pragma once
#include <cstdint>
#include <cstring>

namespace onestep {

struct bf16 {
  uint16_t bits;
};
static_assert(sizeof(bf16) == 2);

inline bf16 to_bf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{static_cast<uint16_t>((u >> 16) | 0x40u)};  // NaN stays NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16{static_cast<uint16_t>(u >> 16)};
}
inline float to_float(bf16 x) {
  const uint32_t u = static_cast<uint32_t>(x.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline float round_to_bf16(float x) { return to_float(to_bf16(x)); }

}  // namespace onestep
