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
// The products' B operands come from row-major shared tiles (K for Q K^T, V for P V) on a row stride padded by 8
// bf16, on which a warp's fragment loads fall on different banks.
#include <cuda_bf16.h>

#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "kernels/cuda/attention_tiles.cuh"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/mma_bf16.cuh"

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
  bool vec;    // every global tensor 16-byte aligned: the tiles load in 16-byte pieces (D % 8 = 0 aligns the rows)
  FlashDims(const Dims& dims, bool aligned)
      : d(dims), ntiles((dims.T + kRows - 1) / kRows), ld(dims.D + 8), vec(aligned) {}
  __device__ int rows(int tile) const { return min(kRows, d.T - tile * kRows); }
};

// 8 neighbouring bf16, one 16-byte load or store.
struct alignas(16) Bf16x8 {
  uint32_t pairs[4];
};
// Elements p[0..8) as bf16 (fp32 ones rounded to nearest even): with `vec`, p is 16-byte aligned and read in 16-byte
// loads, else element by element.
__device__ inline Bf16x8 load8(const bf16* p, bool vec) {
  if (vec) return *reinterpret_cast<const Bf16x8*>(p);
  Bf16x8 x;
#pragma unroll
  for (int i = 0; i < 4; ++i) x.pairs[i] = pack_pair(p[2 * i], p[2 * i + 1]);
  return x;
}
__device__ inline Bf16x8 load8(const float* p, bool vec) {
  struct alignas(16) F4 {
    float v[4];
  };
  Bf16x8 x;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    F4 f;
    if (vec) {
      f = reinterpret_cast<const F4*>(p)[h];
    } else {
#pragma unroll
      for (int i = 0; i < 4; ++i) f.v[i] = p[4 * h + i];
    }
    x.pairs[2 * h] = pack_bf16(f.v[0], f.v[1]), x.pairs[2 * h + 1] = pack_bf16(f.v[2], f.v[3]);
  }
  return x;
}

// A shared [kRows, 16 DF] tile (row stride ld) filled by the whole block from global rows src[r * lds + c],
// r < valid (rows past it are zeros), in pieces of 8 elements: DF per thread, all loaded before any is stored, so
// that a tile costs one memory latency rather than one per element. The rows must be 16-byte aligned for `vec`.
template <int DF, class Src>
__device__ inline void load_tile(bf16* dst, int ld, const Src* src, int64_t lds, int valid, bool vec) {
  constexpr int kPerRow = 2 * DF;  // pieces of 8 per row
  static_assert(kRows * kPerRow == DF * kFlashThreads, "one piece per thread and step");
  Bf16x8 x[DF];
#pragma unroll
  for (int i = 0; i < DF; ++i) {
    const int idx = threadIdx.x + i * kFlashThreads, r = idx / kPerRow, c = 8 * (idx % kPerRow);
    x[i] = r < valid ? load8(src + r * lds + c, vec) : Bf16x8{};
  }
#pragma unroll
  for (int i = 0; i < DF; ++i) {
    const int idx = threadIdx.x + i * kFlashThreads, r = idx / kPerRow, c = 8 * (idx % kPerRow);
    *reinterpret_cast<Bf16x8*>(dst + r * ld + c) = x[i];
  }
}

// The A fragments (DF of them, 16 columns each) of rows [r0, r0 + 16) of a [*, 16 DF] shared tile.
template <int DF>
__device__ inline void load_a(uint32_t (&a)[DF][4], const bf16* tile, int ld, int r0) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int s = 0; s < DF; ++s) {
    const bf16* p = tile + (r0 + g) * ld + 16 * s + 2 * t;
    a[s][0] = load_pair(p), a[s][1] = load_pair(p + 8 * ld);
    a[s][2] = load_pair(p + 8), a[s][3] = load_pair(p + 8 * ld + 8);
  }
}

// acc[n] (n < N) = A Y^T for the warp's 16 rows, where A's KF fragments are in registers and Y is a shared tile of
// 8 N rows (row stride ld, 16 KF columns): the columns of the product are Y's rows.
template <int N, int KF>
__device__ inline void product_abt(float (&acc)[N][4], const uint32_t (&a)[KF][4], const bf16* Y, int ld) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int n = 0; n < N; ++n) {
    acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
#pragma unroll
    for (int s = 0; s < KF; ++s) {
      const bf16* p = Y + (8 * n + g) * ld + 16 * s + 2 * t;
      const uint32_t b[2] = {load_pair(p), load_pair(p + 8)};
      mma_bf16(acc[n], a[s], b);
    }
  }
}

// acc[n] += P Y for the warp's D output columns (2 DF tiles of 8), where P is the warp's [16, kRows] probabilities
// (or dS) as fp32 C fragments in registers (kN tiles of 8 columns), rounded to bf16 pairwise into A fragments, and
// Y a shared [kRows, 16 DF] tile (row stride ld). B's pairs run down Y's columns: two 16-bit loads each, whose
// 8 columns x 4 row pairs fall on 16 different words in 16 banks.
template <int DF>
__device__ inline void accumulate_py(float (&acc)[2 * DF][4], const float (&p)[kN][4], const bf16* Y, int ld) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int s = 0; s < kRows / 16; ++s) {
    const uint32_t a[4] = {pack_bf16(p[2 * s][0], p[2 * s][1]), pack_bf16(p[2 * s][2], p[2 * s][3]),
                           pack_bf16(p[2 * s + 1][0], p[2 * s + 1][1]), pack_bf16(p[2 * s + 1][2], p[2 * s + 1][3])};
    const bf16* rows = Y + (16 * s + 2 * t) * ld + g;
#pragma unroll
    for (int n = 0; n < 2 * DF; ++n) {
      const bf16* q = rows + 8 * n;
      const uint32_t b[2] = {pack_pair(q[0], q[ld]), pack_pair(q[8 * ld], q[9 * ld])};
      mma_bf16(acc[n], a, b);
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

// Shared memory: two bf16 [kRows, D + 8] tiles, then (dk, dv) the streamed query tile's lse and delta.
size_t flash_smem(const FlashDims& f, bool row_stats) {
  return 2 * sizeof(bf16) * kRows * f.ld + (row_stats ? 2 * kRows * sizeof(float) : 0);
}
__device__ inline bf16* tile_at(unsigned char* smem, const FlashDims& f, int i) {
  return reinterpret_cast<bf16*>(smem) + i * kRows * f.ld;
}

template <int DF, class Act>  // Act: the storage of q, k, v and out (float, or bf16: bf16 operand storage)
__global__ void __launch_bounds__(kFlashThreads) flash_fwd_kernel(Act* out, float* lse, const Act* q, const Act* k,
                                                                  const Act* v, FlashDims f) {
  extern __shared__ __align__(128) unsigned char smem[];
  const Dims& d = f.d;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  bf16 *sK = tile_at(smem, f, 0), *sV = tile_at(smem, f, 1);
  const QueryBlock blk = query_block(d, f.ntiles);
  const int b = blk.b, h = blk.h, kvh = blk.kvh, qt = blk.tile;
  const int i0 = qt * kRows, r0 = warp * 16;  // r0: the warp's first row in the tile

  uint32_t qa[DF][4];  // Q, staged through the K tile
  load_tile<DF>(sK, f.ld, q + d.qoff(b, i0, h), d.ldq, f.rows(qt), f.vec);
  __syncthreads();
  load_a<DF>(qa, sK, f.ld, r0);
  float o[2 * DF][4] = {};
  // Rows g and g + 8 of the warp (qi[0], qi[1]): running max (in log2 units of the scaled scores) and sum.
  const int qi[2] = {i0 + r0 + g, i0 + r0 + g + 8};
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.0f, 0.0f};
  const float scale2 = d.scale * kLog2e;

  for (int kt = 0; kt <= qt; ++kt) {
    const int j0 = kt * kRows;
    __syncthreads();  // every warp is done with the previous K, V (and the Q staging)
    load_tile<DF>(sK, f.ld, k + d.koff(b, j0, kvh), d.ldk, f.rows(kt), f.vec);
    load_tile<DF>(sV, f.ld, v + d.koff(b, j0, kvh), d.ldk, f.rows(kt), f.vec);
    __syncthreads();
    float s[kN][4];
    product_abt<kN, DF>(s, qa, sK, f.ld);  // S = Q K^T
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      // Masked scaled scores of row qi[half]; the row's 4 lanes (t = 0..3) hold 16 keys each.
      float mx = -INFINITY;
#pragma unroll
      for (int n = 0; n < kN; ++n)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int kj = j0 + 8 * n + 2 * t + e;
          float& x = s[n][2 * half + e];
          x = kj <= qi[half] && qi[half] < d.T ? x * scale2 : -INFINITY;
          mx = fmaxf(mx, x);
        }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(m_run[half], mx);
      const bool none = m_new == -INFINITY;  // no valid key: only rows past T (tiles above the diagonal are skipped)
      float sum = 0.0f;
#pragma unroll
      for (int n = 0; n < kN; ++n)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& x = s[n][2 * half + e];
          x = none ? 0.0f : exp2f(x - m_new);
          sum += x;
        }
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      const float alpha = none ? 1.0f : exp2f(m_run[half] - m_new);  // 0 on the first valid tile
      m_run[half] = m_new;
      l_run[half] = l_run[half] * alpha + sum;
#pragma unroll
      for (int n = 0; n < 2 * DF; ++n) o[n][2 * half] *= alpha, o[n][2 * half + 1] *= alpha;
    }
    accumulate_py<DF>(o, s, sV, f.ld);  // O += P V
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

// The backward's element-wise step on the warp's [16, kRows] scores in registers: s becomes P = exp(S scale - lse)
// and dp becomes dS = P (dP - delta) scale, both zero where (query, key) is masked. The rows are queries (dq) or
// keys (transposed: dk, dv); query(half, n, e) and key(...) name the element's query and key; lse_of / delta_of
// give a query's statistics.
template <class Query, class Key, class Lse, class Delta>
__device__ inline void probs_and_grads(float (&s)[kN][4], float (&dp)[kN][4], int T, float scale, Query query,
                                       Key key, Lse lse_of, Delta delta_of) {
#pragma unroll
  for (int n = 0; n < kN; ++n)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int half = i / 2, e = i & 1, qi = query(half, n, e);
      float p = 0.0f, ds = 0.0f;
      if (qi < T && key(half, n, e) <= qi) {
        p = expf(s[n][i] * scale - lse_of(half, n, e));
        ds = p * (dp[n][i] - delta_of(half, n, e)) * scale;
      }
      s[n][i] = p, dp[n][i] = ds;
    }
}

template <int DF, class Act>
__global__ void __launch_bounds__(kFlashThreads)
    flash_bwd_dq_kernel(float* dq, const float* dout, const Act* q, const Act* k, const Act* v, const float* lse,
                        const float* delta, FlashDims f) {
  extern __shared__ __align__(128) unsigned char smem[];
  const Dims& d = f.d;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  bf16 *sK = tile_at(smem, f, 0), *sV = tile_at(smem, f, 1);
  const QueryBlock blk = query_block(d, f.ntiles);
  const int b = blk.b, h = blk.h, kvh = blk.kvh, qt = blk.tile;
  const int i0 = qt * kRows, r0 = warp * 16;

  uint32_t qa[DF][4], doa[DF][4];  // Q and dO, staged through the K and V tiles
  load_tile<DF>(sK, f.ld, q + d.qoff(b, i0, h), d.ldq, f.rows(qt), f.vec);
  load_tile<DF>(sV, f.ld, dout + d.qoff(b, i0, h), d.ldq, f.rows(qt), f.vec);
  __syncthreads();
  load_a<DF>(qa, sK, f.ld, r0);
  load_a<DF>(doa, sV, f.ld, r0);
  const int qi[2] = {i0 + r0 + g, i0 + r0 + g + 8};
  float row_lse[2], row_delta[2];
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    row_lse[half] = qi[half] < d.T ? lse[d.loff(b, h, qi[half])] : 0.0f;
    row_delta[half] = qi[half] < d.T ? delta[d.loff(b, h, qi[half])] : 0.0f;
  }
  float acc[2 * DF][4] = {};

  for (int kt = 0; kt <= qt; ++kt) {
    const int j0 = kt * kRows;
    __syncthreads();
    load_tile<DF>(sK, f.ld, k + d.koff(b, j0, kvh), d.ldk, f.rows(kt), f.vec);
    load_tile<DF>(sV, f.ld, v + d.koff(b, j0, kvh), d.ldk, f.rows(kt), f.vec);
    __syncthreads();
    float s[kN][4], dp[kN][4];
    product_abt<kN, DF>(s, qa, sK, f.ld);   // S = Q K^T
    product_abt<kN, DF>(dp, doa, sV, f.ld);  // dP = dO V^T
    probs_and_grads(
        s, dp, d.T, d.scale, [&](int half, int, int) { return qi[half]; },
        [&](int, int n, int e) { return j0 + 8 * n + 2 * t + e; }, [&](int half, int, int) { return row_lse[half]; },
        [&](int half, int, int) { return row_delta[half]; });
    accumulate_py<DF>(acc, dp, sK, f.ld);  // dQ += dS K
  }
  add_rows<DF>(dq + d.qoff(b, i0 + r0, h), d.ldq, i0 + r0, d.T, acc);
}

template <int DF, class Act>
__global__ void __launch_bounds__(kFlashThreads)
    flash_bwd_dkv_kernel(float* dk, float* dv, const float* dout, const Act* q, const Act* k, const Act* v,
                         const float* lse, const float* delta, FlashDims f) {
  extern __shared__ __align__(128) unsigned char smem[];
  const Dims& d = f.d;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  bf16 *sQ = tile_at(smem, f, 0), *sdO = tile_at(smem, f, 1);
  float* sLse = reinterpret_cast<float*>(tile_at(smem, f, 2));
  float* sDelta = sLse + kRows;
  const KeyBlock blk = key_block(d, f.ntiles);
  const int b = blk.b, kvh = blk.kvh, kt = blk.tile;
  const int j0 = kt * kRows, r0 = warp * 16;

  uint32_t ka[DF][4], va[DF][4];  // K and V of the warp's 16 keys, staged through the Q and dO tiles
  load_tile<DF>(sQ, f.ld, k + d.koff(b, j0, kvh), d.ldk, f.rows(kt), f.vec);
  load_tile<DF>(sdO, f.ld, v + d.koff(b, j0, kvh), d.ldk, f.rows(kt), f.vec);
  __syncthreads();
  load_a<DF>(ka, sQ, f.ld, r0);
  load_a<DF>(va, sdO, f.ld, r0);
  const int kj[2] = {j0 + r0 + g, j0 + r0 + g + 8};
  float dk_acc[2 * DF][4] = {}, dv_acc[2 * DF][4] = {};

  for (int gi = 0; gi < d.G; ++gi) {
    const int h = kvh * d.G + gi;
    for (int qt = kt; qt < f.ntiles; ++qt) {
      const int i0 = qt * kRows, m = f.rows(qt);
      __syncthreads();  // every warp is done with the previous Q, dO, lse, delta (and the K, V staging)
      load_tile<DF>(sQ, f.ld, q + d.qoff(b, i0, h), d.ldq, m, f.vec);
      load_tile<DF>(sdO, f.ld, dout + d.qoff(b, i0, h), d.ldq, m, f.vec);
      load_row_stats(sLse, sDelta, lse, delta, d, b, h, i0, m, kRows);
      __syncthreads();
      float s[kN][4], dp[kN][4];
      product_abt<kN, DF>(s, ka, sQ, f.ld);    // S^T = K Q^T
      product_abt<kN, DF>(dp, va, sdO, f.ld);  // dP^T = V dO^T
      auto col = [&](int, int n, int e) { return 8 * n + 2 * t + e; };  // the query's row in the tile
      probs_and_grads(
          s, dp, d.T, d.scale, [&](int half, int n, int e) { return i0 + col(half, n, e); },
          [&](int half, int, int) { return kj[half]; }, [&](int half, int n, int e) { return sLse[col(half, n, e)]; },
          [&](int half, int n, int e) { return sDelta[col(half, n, e)]; });
      accumulate_py<DF>(dv_acc, s, sdO, f.ld);  // dV += P^T dO
      accumulate_py<DF>(dk_acc, dp, sQ, f.ld);  // dK += dS^T Q
    }
  }
  add_rows<DF>(dk + d.koff(b, j0 + r0, kvh), d.ldk, j0 + r0, d.T, dk_acc);
  add_rows<DF>(dv + d.koff(b, j0 + r0, kvh), d.ldk, j0 + r0, d.T, dv_acc);
}

bool aligned16(std::initializer_list<const void*> ptrs) {
  for (const void* p : ptrs)
    if (reinterpret_cast<uintptr_t>(p) % 16) return false;
  return true;
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
void attention_backward_flash(float* dq, float* dk, float* dv, const float* dout, const Act* q, const Act* k,
                              const Act* v, const float* lse, const float* delta, const Dims& d,
                              cudaStream_t stream) {
  require_tensor_cores("attention_backward (flash)");
  const FlashDims f(d, aligned16({q, k, v, dout}));
  with_head_frags(d.D, [&](auto df) {
    constexpr int DF = decltype(df)::value;
    launch_tasks(flash_bwd_dq_kernel<DF, Act>, d.query_tasks(f.ntiles), kFlashThreads, flash_smem(f, false),
                 stream, "attention_backward (flash, dq)", d.D, dq, dout, q, k, v, lse, delta, f);
    launch_tasks(flash_bwd_dkv_kernel<DF, Act>, d.key_tasks(f.ntiles), kFlashThreads, flash_smem(f, true), stream,
                 "attention_backward (flash, dkv)", d.D, dk, dv, dout, q, k, v, lse, delta, f);
  });
}

#define ONESTEP_ATTENTION_FLASH(Act)                                                                                 \
  template void attention_forward_flash(Act*, float*, const Act*, const Act*, const Act*, const Dims&, cudaStream_t); \
  template void attention_backward_flash(float*, float*, float*, const float*, const Act*, const Act*, const Act*,    \
                                         const float*, const float*, const Dims&, cudaStream_t);
ONESTEP_ATTENTION_FLASH(float)
ONESTEP_ATTENTION_FLASH(__nv_bfloat16)
#undef ONESTEP_ATTENTION_FLASH

}  // namespace onestep::cuda::detail
