// Causal grouped-query attention on the bf16 tensor cores, FlashAttention-2 style (Dao 2023): the scores, the
// softmax and the probabilities stay in registers (mma.sync fragments, mma_bf16.cuh), never in shared or global
// memory. The default bf16 attention for head dims up to 128 (ONESTEP_ATTENTION=tiles selects the tile kernels of
// attention_bf16.cu; on an H100 these kernels gave 1.55x the tiles' tokens/s on smollm2-360m). The same arithmetic
// contract: bf16 Q, K, V, dO, P and dS, fp32 softmax, statistics and accumulation, deterministic (no atomics, a
// fixed summation order).
//
// Blocks of kRows = 64 query rows (forward, dq) or 64 keys (dk, dv), one warp per 16 of them: each warp owns its
// rows from start to end, so the block synchronises only around the 64-row tiles it streams through shared memory.
//   forward: per key tile: S = Q K^T (16 x 64 per warp), online softmax, O = O alpha + P V (O in registers);
//   dq:      per key tile: S, dP = dO V^T, dS = P (dP - delta) scale, dQ += dS K;
//   dk, dv:  per head of the kv head's group and query tile from the diagonal on: S^T = K Q^T, dP^T = V dO^T,
//            P^T and dS^T, dV += P^T dO, dK += dS^T Q.
// The streamed tiles are double-buffered: while a block computes on one pair of tiles, the next pair arrives by
// cp.async (cp_async.cuh), so a tile costs one barrier and, once the pipeline runs, no wait on memory. The
// products' operands come from the row-major shared tiles by ldmatrix (mma_bf16.cuh; the transposing form for the
// B operand of P V); the tiles' row stride is padded by 8 bf16, so that the 8 rows one ldmatrix phase reads fall
// on all 32 banks. Only the diagonal tile is masked; rows past T are fetched as zeros.
#include <cuda_bf16.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "kernels/cuda/attention_tiles.cuh"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cp_async.cuh"
#include "kernels/cuda/mma_bf16.cuh"
#include "kernels/op_profile.h"

namespace onestep::cuda::detail {

namespace {

using bf16 = __nv_bfloat16;

constexpr int kRows = 64;           // query rows (or keys) per block, and keys (or queries) per streamed tile
constexpr int kWarps = kRows / 16;  // one warp per 16 rows
constexpr int kFlashThreads = 32 * kWarps;
constexpr int kN = kRows / 8;       // 8-column score tiles per warp and streamed tile
constexpr float kLog2e = 1.4426950408889634f;

struct FlashDims {
  Dims d;
  int ntiles;  // 64-row tiles
  int ld;      // row stride of [kRows, D] tiles: D + 8
  bool vec;    // every global tensor 16-byte aligned: the tiles move in 16-byte pieces (D % 8 = 0 aligns the rows)
  FlashDims(const Dims& dims, bool aligned)
      : d(dims), ntiles((dims.T + kRows - 1) / kRows), ld(dims.D + 8), vec(aligned) {}
  __device__ int rows(int tile) const { return min(kRows, d.T - tile * kRows); }
};

// 8 neighbouring bf16, one 16-byte load or store.
struct alignas(16) Bf16x8 {
  uint32_t pairs[4];
};
// Elements p[0..8) as bf16 pairs (fp32 ones rounded to nearest even), for the tiles that cannot go by cp.async:
// in 16-byte loads where `vec` (p 16-byte aligned), else element by element.
template <class Src>
__device__ inline Bf16x8 piece_as_bf16(const Src* p, bool vec) {
  float f[8];
  if (vec) {
    load8(f, p);
  } else {
#pragma unroll
    for (int i = 0; i < 8; ++i) f[i] = load_value(p + i);
  }
  Bf16x8 x;
#pragma unroll
  for (int i = 0; i < 4; ++i) x.pairs[i] = pack_bf16(f[2 * i], f[2 * i + 1]);
  return x;
}

// Starts filling a shared [kRows, 16 DF] tile (row stride ld) from global rows src[r * lds + c], r < valid (zeros
// past it), by the whole block in pieces of 8 elements, DF per thread. A 16-byte aligned bf16 source goes by
// cp.async: the tile is complete after the block's cp_async_wait and the __syncthreads that follows it. Otherwise
// (fp32 elements to round, or rows off 16-byte alignment) each thread loads its pieces now, all of them before it
// stores any, so that a tile costs one memory latency rather than one per piece.
template <int DF, class Src>
__device__ inline void fetch_tile(bf16* dst, int ld, const Src* src, int64_t lds, int valid, bool vec) {
  constexpr int kPerRow = 2 * DF;  // pieces of 8 per row
  static_assert(kRows * kPerRow == DF * kFlashThreads, "one piece per thread and step");
  auto row_of = [](int i) { return (static_cast<int>(threadIdx.x) + i * kFlashThreads) / kPerRow; };
  auto col_of = [](int i) { return 8 * ((static_cast<int>(threadIdx.x) + i * kFlashThreads) % kPerRow); };
  if constexpr (std::is_same_v<Src, bf16>) {
    if (vec) {
#pragma unroll
      for (int i = 0; i < DF; ++i) {
        const int r = row_of(i), c = col_of(i);
        cp_async<16>(dst + r * ld + c, src + (r < valid ? r : 0) * lds + c, r < valid);
      }
      return;
    }
  }
  Bf16x8 x[DF];
#pragma unroll
  for (int i = 0; i < DF; ++i)
    x[i] = row_of(i) < valid ? piece_as_bf16(src + row_of(i) * lds + col_of(i), vec) : Bf16x8{};
#pragma unroll
  for (int i = 0; i < DF; ++i) *reinterpret_cast<Bf16x8*>(dst + row_of(i) * ld + col_of(i)) = x[i];
}

// Starts filling s_lse[i] and s_delta[i] (i < kRows) with lse[i] and delta[i] for i < valid, zeros past it: one
// float per thread, by cp.async.
__device__ inline void fetch_row_stats(float* s_lse, float* s_delta, const float* lse, const float* delta,
                                       int valid) {
  static_assert(2 * kRows == kFlashThreads, "one statistic per thread");
  const bool first = threadIdx.x < kRows;
  const int i = threadIdx.x % kRows;
  cp_async<4>((first ? s_lse : s_delta) + i, (first ? lse : delta) + (i < valid ? i : 0), i < valid);
}

// The kernels' prologue, once the block's own rows (Q, or Q and dO, or K and V) are being fetched into buffer 1:
// commits them as one group, fetches the first streamed tiles into buffer 0 behind them (first_fetch, which
// commits its own group), and waits until the own rows have landed for the whole block. Each kernel's main loop
// then does, at step i: cp_async_wait<0> and __syncthreads (step i's tiles have landed, and every warp is done
// with step i - 1, whose buffer is free), fetch step i + 1 into buffer (i + 1) & 1, compute on buffer i & 1. (The
// loop is written out in each kernel: as a helper taking the body as a lambda, ptxas allocated registers
// differently, with spills in dq at head dim 64.)
template <class FirstFetch>
__device__ inline void land_own_rows_while(FirstFetch first_fetch) {
  cp_async_commit();
  first_fetch();
  cp_async_wait<1>();
  __syncthreads();
}

// The A fragments (DF of them, 16 columns each) of rows [r0, r0 + 16) of a [*, 16 DF] shared tile. Fragment s is
// the 8 x 8 matrices (rows +0, columns +0), (+8, +0), (+0, +8), (+8, +8) from column 16 s: lane 8 i + j gives the
// address of row j of matrix i.
template <int DF>
__device__ inline void load_a(uint32_t (&a)[DF][4], const bf16* tile, int ld, int r0) {
  const int lane = threadIdx.x & 31;
  const bf16* row = tile + (r0 + (lane & 15)) * ld + 8 * (lane >> 4);
#pragma unroll
  for (int s = 0; s < DF; ++s) ldmatrix_x4(a[s], row + 16 * s);
}

// acc[n] (n < N) = A Y^T for the warp's 16 rows, where A's KF fragments are in registers and Y is a shared tile of
// 8 N rows (row stride ld, 16 KF columns): the columns of the product are Y's rows. One ldmatrix gives the B
// fragments of the 8-column tiles n and n + 1: the matrices (Y's rows of tile n, columns +0), (tile n, +8),
// (tile n + 1, +0), (tile n + 1, +8) from column 16 s.
template <int N, int KF>
__device__ inline void product_abt(float (&acc)[N][4], const uint32_t (&a)[KF][4], const bf16* Y, int ld) {
  static_assert(N % 2 == 0, "B fragments in pairs of tiles");
  const int lane = threadIdx.x & 31;
  const bf16* row = Y + ((lane & 7) + 8 * (lane >> 4)) * ld + 8 * ((lane >> 3) & 1);
#pragma unroll
  for (int n = 0; n < N; n += 2) {
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[n][i] = acc[n + 1][i] = 0.0f;
#pragma unroll
    for (int s = 0; s < KF; ++s) {
      uint32_t b[4];
      ldmatrix_x4(b, row + 8 * n * ld + 16 * s);
      const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
      mma_bf16(acc[n], a[s], b0);
      mma_bf16(acc[n + 1], a[s], b1);
    }
  }
}

// acc[n] += P Y for the warp's D output columns (2 DF tiles of 8), where P is the warp's [16, kRows] probabilities
// (or dS) as fp32 C fragments in registers (kN tiles of 8 columns), rounded to bf16 pairwise into A fragments, and
// Y a shared [kRows, 16 DF] tile (row stride ld). B's pairs run down Y's columns: the transposing ldmatrix gives
// those of the output tiles n and n + 1 from the matrices (Y's rows 16 s + 0, columns of tile n), (16 s + 8,
// tile n), (16 s + 0, tile n + 1), (16 s + 8, tile n + 1).
template <int DF>
__device__ inline void accumulate_py(float (&acc)[2 * DF][4], const float (&p)[kN][4], const bf16* Y, int ld) {
  const int lane = threadIdx.x & 31;
  const bf16* row = Y + ((lane & 7) + 8 * ((lane >> 3) & 1)) * ld + 8 * (lane >> 4);
#pragma unroll
  for (int s = 0; s < kRows / 16; ++s) {
    const uint32_t a[4] = {pack_bf16(p[2 * s][0], p[2 * s][1]), pack_bf16(p[2 * s][2], p[2 * s][3]),
                           pack_bf16(p[2 * s + 1][0], p[2 * s + 1][1]), pack_bf16(p[2 * s + 1][2], p[2 * s + 1][3])};
#pragma unroll
    for (int n = 0; n < 2 * DF; n += 2) {
      uint32_t b[4];
      ldmatrix_x4_trans(b, row + 16 * s * ld + 8 * n);
      const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
      mma_bf16(acc[n], a, b0);
      mma_bf16(acc[n + 1], a, b1);
    }
  }
}

// dst[r * ld + c] += acc for the warp's rows r0 + g and r0 + g + 8 (those below `T`), columns 8 n + 2t + {0, 1}.
template <int DF>
__device__ inline void add_rows(float* dst, int64_t ld, int r0, int T, const float (&acc)[2 * DF][4]) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int r = g + 8 * half;
    if (r0 + r >= T) continue;
#pragma unroll
    for (int n = 0; n < 2 * DF; ++n) {
      float* p = dst + r * ld + 8 * n + 2 * t;
      p[0] += acc[n][2 * half], p[1] += acc[n][2 * half + 1];
    }
  }
}

// Shared memory: two buffers of two bf16 [kRows, D + 8] tiles (tiles 0, 1 and 2, 3), then (dk, dv) each buffer's
// streamed lse and delta.
size_t flash_smem(const FlashDims& f, bool row_stats) {
  return 4 * sizeof(bf16) * kRows * f.ld + (row_stats ? 4 * kRows * sizeof(float) : 0);
}
__device__ inline bf16* tile_at(unsigned char* smem, const FlashDims& f, int i) {
  return reinterpret_cast<bf16*>(smem) + i * kRows * f.ld;
}

// Buffer buf of the forward and dq kernels: K in tile 2 buf, V in tile 2 buf + 1.
__device__ inline bf16* k_tile(unsigned char* smem, const FlashDims& f, int buf) { return tile_at(smem, f, 2 * buf); }
__device__ inline bf16* v_tile(unsigned char* smem, const FlashDims& f, int buf) {
  return tile_at(smem, f, 2 * buf + 1);
}
// Starts fetching key tile kt of K and V (batch b, kv head kvh) into buffer buf, as one group.
template <int DF, class Act>
__device__ inline void fetch_kv(unsigned char* smem, const FlashDims& f, const Act* k, const Act* v, int b, int kvh,
                                int kt, int buf) {
  const Dims& d = f.d;
  fetch_tile<DF>(k_tile(smem, f, buf), f.ld, k + d.koff(b, kt * kRows, kvh), d.ldk, f.rows(kt), f.vec);
  fetch_tile<DF>(v_tile(smem, f, buf), f.ld, v + d.koff(b, kt * kRows, kvh), d.ldk, f.rows(kt), f.vec);
  cp_async_commit();
}

template <int DF, class Act>  // Act: the storage of q, k, v and out (float, or bf16: bf16 operand storage)
__global__ void __launch_bounds__(kFlashThreads) flash_fwd_kernel(Act* out, float* lse, const Act* q, const Act* k,
                                                                  const Act* v, FlashDims f) {
  extern __shared__ __align__(128) unsigned char smem[];
  const Dims& d = f.d;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const QueryBlock blk = query_block(d, f.ntiles);
  const int b = blk.b, h = blk.h, kvh = blk.kvh, qt = blk.tile;
  const int i0 = qt * kRows, r0 = warp * 16;  // r0: the warp's first row in the tile
  auto fetch = [&](int kt, int buf) { fetch_kv<DF>(smem, f, k, v, b, kvh, kt, buf); };

  fetch_tile<DF>(k_tile(smem, f, 1), f.ld, q + d.qoff(b, i0, h), d.ldq, f.rows(qt), f.vec);  // Q, in buffer 1
  land_own_rows_while([&] { fetch(0, 0); });
  uint32_t qa[DF][4];
  load_a<DF>(qa, k_tile(smem, f, 1), f.ld, r0);
  float o[2 * DF][4] = {};
  // Rows g and g + 8 of the warp (qi[0], qi[1]): running max (in log2 units of the scaled scores) and sum. Every
  // row, also one past T (zero Q, its output not stored), has a valid key in its first tile (key 0), so the running
  // max is finite from then on and the first tile's alpha is exp2(-inf) = 0.
  const int qi[2] = {i0 + r0 + g, i0 + r0 + g + 8};
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.0f, 0.0f};
  const float scale2 = d.scale * kLog2e;

  for (int kt = 0; kt <= qt; ++kt) {
    cp_async_wait<0>();
    __syncthreads();
    if (kt < qt) fetch(kt + 1, (kt + 1) & 1);
    const int buf = kt & 1, j0 = kt * kRows;
    const bool diagonal = kt == qt;  // the only tile with keys after some query
    float s[kN][4];
    product_abt<kN, DF>(s, qa, k_tile(smem, f, buf), f.ld);  // S = Q K^T
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      // Masked scaled scores of row qi[half]; the row's 4 lanes (t = 0..3) hold 16 keys each.
      float mx = -INFINITY;
#pragma unroll
      for (int n = 0; n < kN; ++n)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& x = s[n][2 * half + e];
          x = diagonal && j0 + 8 * n + 2 * t + e > qi[half] ? -INFINITY : x * scale2;
          mx = fmaxf(mx, x);
        }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(m_run[half], mx);
      float sum = 0.0f;
#pragma unroll
      for (int n = 0; n < kN; ++n)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& x = s[n][2 * half + e];
          x = exp2f(x - m_new);
          sum += x;
        }
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      const float alpha = exp2f(m_run[half] - m_new);
      m_run[half] = m_new;
      l_run[half] = l_run[half] * alpha + sum;
#pragma unroll
      for (int n = 0; n < 2 * DF; ++n) o[n][2 * half] *= alpha, o[n][2 * half + 1] *= alpha;
    }
    accumulate_py<DF>(o, s, v_tile(smem, f, buf), f.ld);  // O += P V
  }
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    if (qi[half] >= d.T) continue;
    const float inv = 1.0f / l_run[half];
    Act* row = out + d.qoff(b, qi[half], h);
#pragma unroll
    for (int n = 0; n < 2 * DF; ++n) {
      store_value(row + 8 * n + 2 * t, o[n][2 * half] * inv);
      store_value(row + 8 * n + 2 * t + 1, o[n][2 * half + 1] * inv);
    }
    if (t == 0) lse[d.loff(b, h, qi[half])] = m_run[half] / kLog2e + logf(l_run[half]);
  }
}

// The backward's element-wise step on the warp's [16, kRows] scores in registers: s becomes
// P = exp2(S scale log2(e) - lse log2(e)) and dp becomes dS = P (dP - delta) scale, both zero where masked(half, n, e)
// (asked only when `edge`: elsewhere every (query, key) pair is valid). The rows are queries (dq) or keys
// (transposed: dk, dv); lse2_of and delta_of give the element's query's lse log2(e) and delta.
template <class Masked, class Lse2, class Delta>
__device__ inline void probs_and_grads(float (&s)[kN][4], float (&dp)[kN][4], float scale, bool edge, Masked masked,
                                       Lse2 lse2_of, Delta delta_of) {
  const float scale2 = scale * kLog2e;
#pragma unroll
  for (int n = 0; n < kN; ++n)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int half = i / 2, e = i & 1;
      const bool off = edge && masked(half, n, e);
      const float p = exp2f(fmaf(s[n][i], scale2, -lse2_of(half, n, e)));
      const float ds = p * (dp[n][i] - delta_of(half, n, e)) * scale;
      s[n][i] = off ? 0.0f : p, dp[n][i] = off ? 0.0f : ds;
    }
}

template <int DF, class Act>
__global__ void __launch_bounds__(kFlashThreads)
    flash_bwd_dq_kernel(float* dq, const bf16* dout, const Act* q, const Act* k, const Act* v, const float* lse,
                        const float* delta, FlashDims f) {
  extern __shared__ __align__(128) unsigned char smem[];
  const Dims& d = f.d;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const QueryBlock blk = query_block(d, f.ntiles);
  const int b = blk.b, h = blk.h, kvh = blk.kvh, qt = blk.tile;
  const int i0 = qt * kRows, r0 = warp * 16;
  auto fetch = [&](int kt, int buf) { fetch_kv<DF>(smem, f, k, v, b, kvh, kt, buf); };

  // Q and dO, staged in buffer 1
  fetch_tile<DF>(k_tile(smem, f, 1), f.ld, q + d.qoff(b, i0, h), d.ldq, f.rows(qt), f.vec);
  fetch_tile<DF>(v_tile(smem, f, 1), f.ld, dout + d.qoff(b, i0, h), d.ldq, f.rows(qt), f.vec);
  land_own_rows_while([&] { fetch(0, 0); });
  uint32_t qa[DF][4], doa[DF][4];
  load_a<DF>(qa, k_tile(smem, f, 1), f.ld, r0);
  load_a<DF>(doa, v_tile(smem, f, 1), f.ld, r0);
  // Rows past T have zero Q and dO, lse and delta 0: finite P and dS = 0, and their dQ is not stored.
  const int qi[2] = {i0 + r0 + g, i0 + r0 + g + 8};
  float row_lse2[2], row_delta[2];
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    row_lse2[half] = qi[half] < d.T ? lse[d.loff(b, h, qi[half])] * kLog2e : 0.0f;
    row_delta[half] = qi[half] < d.T ? delta[d.loff(b, h, qi[half])] : 0.0f;
  }
  float acc[2 * DF][4] = {};

  for (int kt = 0; kt <= qt; ++kt) {
    cp_async_wait<0>();
    __syncthreads();
    if (kt < qt) fetch(kt + 1, (kt + 1) & 1);
    const int buf = kt & 1, j0 = kt * kRows;
    const bf16 *sK = k_tile(smem, f, buf), *sV = v_tile(smem, f, buf);
    float s[kN][4], dp[kN][4];
    product_abt<kN, DF>(s, qa, sK, f.ld);   // S = Q K^T
    product_abt<kN, DF>(dp, doa, sV, f.ld);  // dP = dO V^T
    probs_and_grads(
        s, dp, d.scale, kt == qt, [&](int half, int n, int e) { return j0 + 8 * n + 2 * t + e > qi[half]; },
        [&](int half, int, int) { return row_lse2[half]; }, [&](int half, int, int) { return row_delta[half]; });
    accumulate_py<DF>(acc, dp, sK, f.ld);  // dQ += dS K
  }
  add_rows<DF>(dq + d.qoff(b, i0 + r0, h), d.ldq, i0 + r0, d.T, acc);
}

template <int DF, class Act>
__global__ void __launch_bounds__(kFlashThreads)
    flash_bwd_dkv_kernel(float* dk, float* dv, const bf16* dout, const Act* q, const Act* k, const Act* v,
                         const float* lse, const float* delta, FlashDims f) {
  extern __shared__ __align__(128) unsigned char smem[];
  const Dims& d = f.d;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  auto sQ = [&](int buf) { return tile_at(smem, f, 2 * buf); };  // buffer buf: Q in tile 2 buf, dO in 2 buf + 1
  auto sdO = [&](int buf) { return tile_at(smem, f, 2 * buf + 1); };
  auto sLse = [&](int buf) { return reinterpret_cast<float*>(tile_at(smem, f, 4)) + 2 * kRows * buf; };
  auto sDelta = [&](int buf) { return sLse(buf) + kRows; };
  const KeyBlock blk = key_block(d, f.ntiles);
  const int b = blk.b, kvh = blk.kvh, kt = blk.tile;
  const int j0 = kt * kRows, r0 = warp * 16;
  // The block's steps: the query tiles from the diagonal on (per_head of them) of each head of the group.
  const int per_head = f.ntiles - kt, steps = d.G * per_head;
  auto head_of = [&](int step) { return kvh * d.G + step / per_head; };
  auto query_tile_of = [&](int step) { return kt + step % per_head; };
  auto fetch_step = [&](int step, int buf) {
    const int h = head_of(step), i0 = query_tile_of(step) * kRows, m = f.rows(query_tile_of(step));
    fetch_tile<DF>(sQ(buf), f.ld, q + d.qoff(b, i0, h), d.ldq, m, f.vec);
    fetch_tile<DF>(sdO(buf), f.ld, dout + d.qoff(b, i0, h), d.ldq, m, f.vec);
    fetch_row_stats(sLse(buf), sDelta(buf), lse + d.loff(b, h, i0), delta + d.loff(b, h, i0), m);
    cp_async_commit();
  };

  fetch_tile<DF>(sQ(1), f.ld, k + d.koff(b, j0, kvh), d.ldk, f.rows(kt), f.vec);  // K and V, staged in buffer 1
  fetch_tile<DF>(sdO(1), f.ld, v + d.koff(b, j0, kvh), d.ldk, f.rows(kt), f.vec);
  land_own_rows_while([&] { fetch_step(0, 0); });
  uint32_t ka[DF][4], va[DF][4];  // K and V of the warp's 16 keys
  load_a<DF>(ka, sQ(1), f.ld, r0);
  load_a<DF>(va, sdO(1), f.ld, r0);
  const int kj[2] = {j0 + r0 + g, j0 + r0 + g + 8};
  float dk_acc[2 * DF][4] = {}, dv_acc[2 * DF][4] = {};

  for (int step = 0; step < steps; ++step) {
    cp_async_wait<0>();
    __syncthreads();
    if (step + 1 < steps) fetch_step(step + 1, (step + 1) & 1);
    const int buf = step & 1, qt = query_tile_of(step), i0 = qt * kRows;
    float s[kN][4], dp[kN][4];
    product_abt<kN, DF>(s, ka, sQ(buf), f.ld);    // S^T = K Q^T
    product_abt<kN, DF>(dp, va, sdO(buf), f.ld);  // dP^T = V dO^T
    auto col = [&](int n, int e) { return 8 * n + 2 * t + e; };  // the query's row in the tile
    // Masked: keys after the query (the diagonal tile). Queries past T (a last partial tile) add exactly zero to
    // the keys' dK and dV: their Q, dO, lse and delta were fetched as zeros, so P = 1, dP = 0 and dS = 0.
    probs_and_grads(
        s, dp, d.scale, qt == kt, [&](int half, int n, int e) { return kj[half] > i0 + col(n, e); },
        [&](int, int n, int e) { return sLse(buf)[col(n, e)] * kLog2e; },
        [&](int, int n, int e) { return sDelta(buf)[col(n, e)]; });
    accumulate_py<DF>(dv_acc, s, sdO(buf), f.ld);  // dV += P^T dO
    accumulate_py<DF>(dk_acc, dp, sQ(buf), f.ld);  // dK += dS^T Q
  }
  add_rows<DF>(dk + d.koff(b, j0 + r0, kvh), d.ldk, j0 + r0, d.T, dk_acc);
  add_rows<DF>(dv + d.koff(b, j0 + r0, kvh), d.ldk, j0 + r0, d.T, dv_acc);
}

// f(std::integral_constant<int, D / 16>) for head dims 16, 32, ..., 128: the kernels are compiled per head dim.
template <class F>
void with_head_frags(int D, F f) {
  switch (D % 16 == 0 ? D / 16 : 0) {
    case 1: return f(std::integral_constant<int, 1>{});
    case 2: return f(std::integral_constant<int, 2>{});
    case 3: return f(std::integral_constant<int, 3>{});
    case 4: return f(std::integral_constant<int, 4>{});
    case 5: return f(std::integral_constant<int, 5>{});
    case 6: return f(std::integral_constant<int, 6>{});
    case 7: return f(std::integral_constant<int, 7>{});
    case 8: return f(std::integral_constant<int, 8>{});
  }
  throw std::runtime_error("attention (flash): head dim " + std::to_string(D) + " is not one of 16, 32, ..., 128");
}

}  // namespace

template <class Act>
void attention_forward_flash(Act* out, float* lse, const Act* q, const Act* k, const Act* v, const Dims& d,
                             cudaStream_t stream) {
  require_tensor_cores("attention_forward (flash)");
  const FlashDims f(d, aligned16({q, k, v}));
  with_head_frags(d.D, [&](auto df) {
    constexpr int DF = decltype(df)::value;
    launch_tasks(flash_fwd_kernel<DF, Act>, d.query_tasks(f.ntiles), kFlashThreads, flash_smem(f, false), stream,
                 "attention_forward (flash)", d.D, out, lse, q, k, v, f);
  });
}

template <class Act>
void attention_backward_flash(float* dq, float* dk, float* dv, const __nv_bfloat16* dout, const Act* q,
                              const Act* k, const Act* v, const float* lse, const float* delta, const Dims& d,
                              cudaStream_t stream) {
  require_tensor_cores("attention_backward (flash)");
  const FlashDims f(d, aligned16({q, k, v, dout}));
  with_head_frags(d.D, [&](auto df) {
    constexpr int DF = decltype(df)::value;
    profiled("attention_backward: dq", [&] {
      launch_tasks(flash_bwd_dq_kernel<DF, Act>, d.query_tasks(f.ntiles), kFlashThreads, flash_smem(f, false),
                   stream, "attention_backward (flash, dq)", d.D, dq, dout, q, k, v, lse, delta, f);
    });
    profiled("attention_backward: dk, dv", [&] {
      launch_tasks(flash_bwd_dkv_kernel<DF, Act>, d.key_tasks(f.ntiles), kFlashThreads, flash_smem(f, true),
                   stream, "attention_backward (flash, dkv)", d.D, dk, dv, dout, q, k, v, lse, delta, f);
    });
  });
}

#define ONESTEP_ATTENTION_FLASH(Act)                                                                                 \
  template void attention_forward_flash(Act*, float*, const Act*, const Act*, const Act*, const Dims&, cudaStream_t); \
  template void attention_backward_flash(float*, float*, float*, const __nv_bfloat16*, const Act*, const Act*,       \
                                         const Act*, const float*, const float*, const Dims&, cudaStream_t);
ONESTEP_ATTENTION_FLASH(float)
ONESTEP_ATTENTION_FLASH(__nv_bfloat16)
#undef ONESTEP_ATTENTION_FLASH

}  // namespace onestep::cuda::detail
