// core/bf16.h: the host's bfloat16 conversion must round exactly as the GPU's __float2bfloat16_rn (nearest, ties
// to even, overflow to infinity, NaN kept NaN), since the CPU references of the bf16 kernels and the bf16 operand
// storage rely on it.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "core/bf16.h"

using namespace onestep;

namespace {
uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float from(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
}  // namespace

TEST(Bf16, RoundsToNearestEven) {
  EXPECT_EQ(to_bf16(1.0f).bits, 0x3f80);               // exact
  EXPECT_EQ(to_bf16(from(0x3f808000u)).bits, 0x3f80);  // halfway, the even neighbour below
  EXPECT_EQ(to_bf16(from(0x3f818000u)).bits, 0x3f82);  // halfway, the even neighbour above
  EXPECT_EQ(to_bf16(from(0x3f808001u)).bits, 0x3f81);  // just above halfway
  EXPECT_EQ(to_bf16(from(0x3f807fffu)).bits, 0x3f80);  // just below halfway
  EXPECT_EQ(to_bf16(-2.5f).bits, 0xc020);
  EXPECT_EQ(to_bf16(0.0f).bits, 0x0000);
  EXPECT_EQ(to_bf16(-0.0f).bits, 0x8000);
  EXPECT_EQ(to_bf16(from(0x00000001u)).bits, 0x0000);  // the smallest subnormal rounds to zero
  EXPECT_EQ(to_bf16(from(0x00018000u)).bits, 0x0002);  // subnormals round like normals
}

TEST(Bf16, OverflowsToInfinityAndKeepsNan) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(to_bf16(inf).bits, 0x7f80);
  EXPECT_EQ(to_bf16(-inf).bits, 0xff80);
  EXPECT_EQ(to_bf16(std::numeric_limits<float>::max()).bits, 0x7f80);  // past bf16's largest finite value
  EXPECT_EQ(to_bf16(from(0x7f7f0000u)).bits, 0x7f7f);                  // bf16's largest finite value, exact
  EXPECT_TRUE(std::isnan(to_float(to_bf16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_TRUE(std::isnan(to_float(to_bf16(from(0x7fffffffu)))));  // would carry into the exponent if added blindly
  EXPECT_TRUE(std::isnan(to_float(to_bf16(from(0x7f800001u)))));  // a signalling NaN with only a low payload bit
}

TEST(Bf16, WideningIsExactAndRoundTrips) {
  for (uint32_t b = 0; b < 0x10000u; ++b) {
    const bf16 x{static_cast<uint16_t>(b)};
    const float f = to_float(x);
    EXPECT_EQ(bits(f), b << 16);
    if (!std::isnan(f)) {
      ASSERT_EQ(to_bf16(f).bits, b) << b;  // narrowing a widened value gives it back
    }
  }
  EXPECT_EQ(round_to_bf16(1.00390625f), 1.0f);  // 1 + 2^-8: halfway between 1 and 1 + 2^-7, even is 1
}
