// CPU emulation (tests/cuda_emu): the WMMA subset the tensor-core attention kernels use (16x16x16 tiles, bf16 in,
// fp32 accumulate). Each lane's fragment holds the whole tile (the hardware spreads it over the warp; how is
// unspecified, and the kernels only use fragments through these calls). Loads and stores check the alignment
// and leading dimensions the hardware requires; a store writes only the lane's share of the tile, so a lane that
// reads what others stored without a __syncwarp in between reads stale data and the test fails.
#pragma once
#include <cmath>
#include <cstring>
#include <cstdint>
#include <string>
#include <type_traits>

#include "cuda_bf16.h"
#include "cuda_runtime_api.h"

namespace nvcuda::wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  static_assert(M == 16 && N == 16 && K == 16, "only 16x16x16 tiles are emulated");
  float v[16][16];
};

namespace detail {
inline float value(const float* p) { return *p; }
inline float value(const __nv_bfloat16* p) { return __bfloat162float(*p); }
inline void check(const void* p, unsigned ldm, unsigned elem_bytes, const char* call) {
  if (reinterpret_cast<uintptr_t>(p) % 32) ::emu::fail((std::string(call) + ": tile pointer not 32-byte aligned").c_str());
  if ((ldm * elem_bytes) % 16) ::emu::fail((std::string(call) + ": leading dimension not a multiple of 16 bytes").c_str());
}
}  // namespace detail

template <class Use, class T, class L>
void load_matrix_sync(fragment<Use, 16, 16, 16, T, L>& f, const T* p, unsigned ldm) {
  static_assert(!std::is_same_v<Use, accumulator>, "accumulators load with a layout argument");
  detail::check(p, ldm, sizeof(T), "wmma::load_matrix_sync");
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c)
      f.v[r][c] = detail::value(std::is_same_v<L, row_major> ? p + r * ldm + c : p + c * ldm + r);
}
inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float>& f, const float* p, unsigned ldm, layout_t l) {
  detail::check(p, ldm, 4, "wmma::load_matrix_sync(accumulator)");
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c) f.v[r][c] = l == mem_row_major ? p[r * ldm + c] : p[c * ldm + r];
}
inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ldm, layout_t l) {
  detail::check(p, ldm, 4, "wmma::store_matrix_sync");
  // This lane's share as sm_80+ holds it (the mma.m16n8k16 accumulator layout, twice): rows lane/4 and lane/4 + 8,
  // columns 2 (lane % 4) + {0, 1, 8, 9}. Not the lane-strided e = lane + 32 j, which is how kernels usually read
  // a stored tile back: with that share a missing __syncwarp would read only the lane's own elements and pass.
  const unsigned lane = ::emu::current.lin & 31u;
  for (unsigned i = 0; i < 8; ++i) {
    const unsigned r = lane / 4 + 8 * (i / 4), c = 2 * (lane % 4) + (i & 1u) + 8 * ((i / 2) & 1u);
    (l == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.v[r][c];
  }
}
inline void fill_fragment(fragment<accumulator, 16, 16, 16, float>& f, float x) {
  for (auto& row : f.v)
    for (float& y : row) y = x;
}
template <class LA, class LB>
void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const fragment<matrix_a, 16, 16, 16, __nv_bfloat16, LA>& a,
              const fragment<matrix_b, 16, 16, 16, __nv_bfloat16, LB>& b,
              const fragment<accumulator, 16, 16, 16, float>& c) {
  float out[16][16];
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) {
      float s = c.v[i][j];
      for (int k = 0; k < 16; ++k) s = std::fma(a.v[i][k], b.v[k][j], s);  // bf16 products are exact in fp32
      out[i][j] = s;
    }
  std::memcpy(d.v, out, sizeof out);
}
}  // namespace nvcuda::wmma

namespace emu {
// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 (src/kernels/cuda/mma_bf16.cuh has the fragment layout): the
// warp's lanes post their registers through the block's exchange slots, three rounds of two registers, and each
// lane then computes its four results. Every lane of a full warp must call it, as on the GPU.
inline void mma_m16n8k16_bf16(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  uint64_t* slots = warp_exchange();
  const unsigned me = current.lin, first = me & ~31u, lane = me & 31u;
  auto bf = [](uint32_t bits, int half) {
    return __bfloat162float(__nv_bfloat16{static_cast<unsigned short>(bits >> (16 * half))});
  };
  float A[16][16], B[16][8];
  const uint32_t pairs[3][2] = {{a[0], a[1]}, {a[2], a[3]}, {b[0], b[1]}};
  for (int round = 0; round < 3; ++round) {
    sync_warp(0xffffffffu);  // every lane has read the previous round
    slots[me] = pairs[round][0] | static_cast<uint64_t>(pairs[round][1]) << 32;
    sync_warp(0xffffffffu);
    for (unsigned s = 0; s < 32; ++s) {
      const unsigned g = s / 4, t = s % 4;
      const uint32_t r0 = static_cast<uint32_t>(slots[first + s]), r1 = static_cast<uint32_t>(slots[first + s] >> 32);
      for (int e = 0; e < 2; ++e) {
        if (round < 2) {  // a[0], a[1] (columns 2t..) or a[2], a[3] (columns 2t + 8..)
          A[g][2 * t + 8 * round + e] = bf(r0, e);
          A[g + 8][2 * t + 8 * round + e] = bf(r1, e);
        } else {
          B[2 * t + e][g] = bf(r0, e);
          B[2 * t + 8 + e][g] = bf(r1, e);
        }
      }
    }
  }
  const unsigned g = lane / 4, t = lane % 4;
  for (int i = 0; i < 4; ++i) {
    const unsigned row = g + 8 * (i / 2), col = 2 * t + (i & 1);
    float s = c[i];
    for (int k = 0; k < 16; ++k) s = std::fma(A[row][k], B[k][col], s);  // bf16 products are exact in fp32
    c[i] = s;
  }
}

// ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16: four 8 x 8 matrices of 16-bit elements from shared memory, lane
// 8 i + j giving the address of row j of matrix i (16-byte aligned). Lane l (g = l / 4, t = l % 4) receives in
// r[i] matrix i's row g, columns 2t and 2t + 1 (PTX ISA, "Warp-level matrix load instruction: ldmatrix"); with
// .trans those of the transposed matrix: rows 2t and 2t + 1 of column g. The lower half is the first element.
// Every lane of a full warp must call it.
inline void ldmatrix_x4(uint32_t (&r)[4], const void* row, bool trans) {
  if (reinterpret_cast<uintptr_t>(row) % 16) fail("ldmatrix: a row address not 16-byte aligned");
  if (!is_shared_address(row, 16)) fail("ldmatrix: a row outside the block's shared memory");
  uint64_t* slots = warp_exchange();
  const unsigned me = current.lin, first = me & ~31u, lane = me & 31u, g = lane / 4, t = lane % 4;
  sync_warp(0xffffffffu);  // every lane has read the previous exchange
  slots[me] = reinterpret_cast<uintptr_t>(row);
  sync_warp(0xffffffffu);
  auto element = [&](unsigned matrix, unsigned i, unsigned j) {  // row i, column j of the matrix as stored
    uint16_t x;
    std::memcpy(&x, reinterpret_cast<const unsigned char*>(slots[first + 8 * matrix + i]) + 2 * j, 2);
    return uint32_t{x};
  };
  for (unsigned m = 0; m < 4; ++m)
    r[m] = trans ? element(m, 2 * t, g) | element(m, 2 * t + 1, g) << 16
                 : element(m, g, 2 * t) | element(m, g, 2 * t + 1) << 16;
}
}  // namespace emu
