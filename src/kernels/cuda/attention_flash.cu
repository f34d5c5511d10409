// Causal grouped-query attention on the bf16 tensor cores, FlashAttention-2 style: a candidate to replace the
// tile kernels of attention_bf16.cu, chosen with ONESTEP_ATTENTION=flash until a GPU has measured both
// (scripts/gpu-check.sh tests and times each). Same arithmetic contract: bf16 Q, K, V, dO, P and dS, fp32 softmax,
// statistics and accumulation, deterministic (no atomics, fixed summation order).
//
// Blocks of kRows = 64 query rows (forward, dq) or 64 keys (dk, dv), one warp per 16 of them: each warp owns its rows
// from start to end, so the block synchronises only around the shared tiles it streams (K and V, or Q and dO).
//   forward:  per warp, for each key tile: S = Q K^T (16 x 64), online softmax, O = O * alpha + P V; O lives in the
//             warp's shared scratch (the rescale needs rows, which WMMA fragments do not expose).
//   dq:       per warp, for each key tile: S, dP = dO V^T, dS = P (dP - delta) scale, dQ += dS K (dQ in registers).
//   dk, dv:   per warp (16 keys), for each head of the group and each query tile from the diagonal on:
//             S^T = K Q^T, dP^T = V dO^T, P^T and dS^T, dV += P^T dO, dK += dS^T Q (dK, dV in registers).
// Fragments are WMMA 16x16x16 (bf16 in, fp32 accumulate); Q, K, V or dO fragments a warp reuses stay in registers.
#include <cuda_bf16.h>
#include <mma.h>

#include <stdexcept>
#include <string>
#include <type_traits>

#include "kernels/cuda/attention_tiles.cuh"
#include "kernels/cuda/common.cuh"

namespace onestep::cuda::detail {

namespace {

using bf16 = __nv_bfloat16;
namespace wmma = nvcuda::wmma;

constexpr int kRows = 64;                  // query rows (or keys) per block, and keys (or queries) per streamed tile
constexpr int kWarps = kRows / 16;         // one warp per 16 rows
constexpr int kFlashThreads = 32 * kWarps;
constexpr int kLdTile = kRows + 8;         // bf16 [16, kRows] warp tiles: P, dS (and transposes)
constexpr int kLdScore = kRows + 4;        // fp32 [16, kRows] warp tiles: S, dP

using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major>;
using FragBRow = wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major>;
using FragBCol = wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major>;
using FragC = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

struct FlashDims {
  Dims d;
  int ntiles;    // 64-row tiles
  int ldh, ldf;  // bf16 [*, D] tiles: D + 8; fp32 [16, D] scratch: D + 4
  explicit FlashDims(const Dims& dims)
      : d(dims), ntiles((dims.T + kRows - 1) / kRows), ldh(dims.D + 8), ldf(dims.D + 4) {}
  __device__ int rows(int tile) const { return min(kRows, d.T - tile * kRows); }
};

// C[16, kRows] (fp32, row-major, ldc) = A[16, D] B^T where B is [kRows, D] row-major in shared memory (read
// column-major as B^T); A's D/16 fragments are in registers.
template <int DF>
__device__ inline void scores_16xN(float* C, int ldc, const FragA* a, const bf16* B, int ldb) {
#if __CUDA_ARCH__ >= 800
#pragma unroll
  for (int nj = 0; nj < kRows / 16; ++nj) {
    FragC acc;
    wmma::fill_fragment(acc, 0.0f);
#pragma unroll
    for (int s = 0; s < DF; ++s) {
      FragBCol b;
      wmma::load_matrix_sync(b, B + nj * 16 * ldb + s * 16, ldb);
      wmma::mma_sync(acc, a[s], b, acc);
    }
    wmma::store_matrix_sync(C + nj * 16, acc, ldc, wmma::mem_row_major);
  }
#endif
}

// acc[nj] (+)= A[16, kRows] B[kRows, D] for the D/16 output fragments; A bf16 row-major in shared (lda), B bf16
// row-major in shared (ldb).
template <int DF>
__device__ inline void product_16xD(FragC* acc, const bf16* A, int lda, const bf16* B, int ldb) {
#if __CUDA_ARCH__ >= 800
#pragma unroll
  for (int s = 0; s < kRows / 16; ++s) {
    FragA a;
    wmma::load_matrix_sync(a, A + s * 16, lda);
#pragma unroll
    for (int nj = 0; nj < DF; ++nj) {
      FragBRow b;
      wmma::load_matrix_sync(b, B + s * 16 * ldb + nj * 16, ldb);
      wmma::mma_sync(acc[nj], a, b, acc[nj]);
    }
  }
#endif
}

// The warp's D/16 A fragments of rows [16 w, 16 w + 16) of a bf16 [kRows, D] shared tile.
template <int DF>
__device__ inline void load_row_frags(FragA* a, const bf16* tile, int ldh, int warp) {
#if __CUDA_ARCH__ >= 800
#pragma unroll
  for (int s = 0; s < DF; ++s) wmma::load_matrix_sync(a[s], tile + warp * 16 * ldh + s * 16, ldh);
#endif
}

// dst[r * ld + c] += the warp's [16, 16 DF] accumulator block, for rows r < valid, through its fp32 scratch
// (16 x kLdScore floats).
template <int DF>
__device__ inline void add_rows(float* dst, int64_t ld, int valid, const FragC* acc, float* scratch) {
#if __CUDA_ARCH__ >= 800
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int nj = 0; nj < DF; ++nj) {
    wmma::store_matrix_sync(scratch, acc[nj], kLdScore, wmma::mem_row_major);
    __syncwarp();
    for (int idx = lane; idx < 256; idx += 32) {
      const int r = idx / 16, col = idx % 16;
      if (r < valid) dst[r * ld + nj * 16 + col] += scratch[r * kLdScore + col];
    }
    __syncwarp();
  }
#endif
}

// ---------------------------------------------------------------------------------------------------
// A kernel's shared memory, one function for the kernel (on its dynamic shared memory) and the host (a null base:
// the launch size). The block streams two bf16 [kRows, D] tiles (K and V; for dk/dv Q and dO, with the query
// tile's lse and delta); each warp has fp32 [16, kRows] scores (S; dP in the backward), bf16 [16, kRows] tiles
// (P in the forward and dk/dv; dS in the backward), the forward's O [16, D], and 2 x 16 row values (forward:
// alpha, then l; dq: lse and delta).
enum class FlashKernel { fwd, dq, dkv };
struct FlashTiles {
  bf16 *tile0 = nullptr, *tile1 = nullptr;   // the block's streamed tiles
  float *lse = nullptr, *delta = nullptr;    // dk/dv: the streamed query tile's
  float *S = nullptr, *dP = nullptr;         // this warp's
  bf16 *P = nullptr, *dS = nullptr;
  float *O = nullptr, *rows = nullptr;
};
__host__ __device__ inline void warp_tiles(Carve& c, const FlashDims& f, FlashKernel kind, FlashTiles& t) {
  t.S = c.take<float>(16 * kLdScore);
  if (kind != FlashKernel::fwd) t.dP = c.take<float>(16 * kLdScore), t.dS = c.take<bf16>(16 * kLdTile);
  if (kind != FlashKernel::dq) t.P = c.take<bf16>(16 * kLdTile);
  if (kind == FlashKernel::fwd) t.O = c.take<float>(16 * f.ldf);
  if (kind != FlashKernel::dkv) t.rows = c.take<float>(2 * 16);
}
__host__ __device__ inline FlashTiles flash_tiles(Carve& c, const FlashDims& f, FlashKernel kind, int warp) {
  FlashTiles t;
  t.tile0 = c.take<bf16>(kRows * f.ldh), t.tile1 = c.take<bf16>(kRows * f.ldh);
  if (kind == FlashKernel::dkv) t.lse = c.take<float>(kRows), t.delta = c.take<float>(kRows);
  Carve one{nullptr};  // one warp's share (a multiple of 128 bytes): the warps' pieces follow in warp order
  FlashTiles sizes;
  warp_tiles(one, f, kind, sizes);
  c.used += warp * one.used;
  warp_tiles(c, f, kind, t);
  c.used += (kWarps - 1 - warp) * one.used;
  return t;
}
size_t flash_smem(const FlashDims& f, FlashKernel kind) {
  Carve c{nullptr};
  flash_tiles(c, f, kind, 0);
  return c.used;
}

template <int DF, class Act>  // Act: the storage of q, k, v and out (float, or bf16: bf16 operand storage)
__global__ void __launch_bounds__(kFlashThreads) flash_fwd_kernel(Act* out, float* lse, const Act* q, const Act* k,
                                                             const Act* v, FlashDims f) {
#if __CUDA_ARCH__ >= 800
  extern __shared__ __align__(128) unsigned char smem[];
  const Dims& d = f.d;
  const int D = DF * 16;  // = d.D (a template parameter: the fragment arrays then live in registers)
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  Carve c{smem};
  const FlashTiles t = flash_tiles(c, f, FlashKernel::fwd, warp);
  bf16 *sK = t.tile0, *sV = t.tile1, *sP = t.P;
  float *sS = t.S, *sO = t.O, *sA = t.rows;
  const QueryBlock blk = query_block(d, f.ntiles);
  const int b = blk.b, h = blk.h, kvh = blk.kvh, qt = blk.tile;
  const int i0 = qt * kRows, m = f.rows(qt);
  const int r0 = i0 + warp * 16;  // this warp's first query row

  // Q: staged through the K slot into this warp's fragments.
  FragA qf[DF];
  load_rows_bf16(sK, f.ldh, q + d.qoff(b, i0, h), d.ldq, m, kRows, D);
  __syncthreads();
  load_row_frags<DF>(qf, sK, f.ldh, warp);
  for (int i = lane; i < 16 * f.ldf; i += 32) sO[i] = 0.0f;
  // Row statistics: lanes l and l + 16 both hold row l % 16's running max and sum; each covers half its keys.
  const int row = lane & 15, half = lane >> 4;
  float m_run = -INFINITY, l_run = 0.0f;

  const int last_kt = min(f.ntiles - 1, (i0 + kRows - 1) / kRows);
  for (int kt = 0; kt <= last_kt; ++kt) {
    const int j0 = kt * kRows, kn = f.rows(kt);
    __syncthreads();  // every warp is done with the previous K, V (and the Q staging)
    load_rows_bf16(sK, f.ldh, k + d.koff(b, j0, kvh), d.ldk, kn, kRows, D);
    load_rows_bf16(sV, f.ldh, v + d.koff(b, j0, kvh), d.ldk, kn, kRows, D);
    __syncthreads();
    scores_16xN<DF>(sS, kLdScore, qf, sK, f.ldh);
    __syncwarp();
    // Online softmax over this tile: each lane 32 keys of its row.
    const int i = r0 + row;
    float mx = -INFINITY;
    for (int jj = 0; jj < 32; ++jj) {
      const int j = half * 32 + jj;
      if (j < kn && j0 + j <= i) mx = fmaxf(mx, sS[row * kLdScore + j] * d.scale);
    }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 16));
    const float m_new = fmaxf(m_run, mx);
    const bool none = m_new == -INFINITY;  // nothing valid yet (rows past T)
    float sum = 0.0f;
    for (int jj = 0; jj < 32; ++jj) {
      const int j = half * 32 + jj;
      const bool valid = j < kn && j0 + j <= i;
      const float p = valid && !none ? expf(sS[row * kLdScore + j] * d.scale - m_new) : 0.0f;
      sum += p;
      sP[row * kLdTile + j] = __float2bfloat16_rn(p);
    }
    sum += __shfl_xor_sync(0xffffffffu, sum, 16);
    const float alpha = none ? 1.0f : expf(m_run - m_new);  // 0 on the first valid tile (m_run = -inf)
    m_run = m_new;
    l_run = l_run * alpha + sum;
    if (half == 0) sA[row] = alpha;
    __syncwarp();
    for (int idx = lane; idx < 16 * D; idx += 32) {  // O *= alpha, row by row
      const int r = idx / D;
      sO[r * f.ldf + (idx - r * D)] *= sA[r];
    }
    __syncwarp();
    FragC acc[DF];
#pragma unroll
    for (int nj = 0; nj < DF; ++nj) wmma::load_matrix_sync(acc[nj], sO + nj * 16, f.ldf, wmma::mem_row_major);
    product_16xD<DF>(acc, sP, kLdTile, sV, f.ldh);  // O += P V
#pragma unroll
    for (int nj = 0; nj < DF; ++nj) wmma::store_matrix_sync(sO + nj * 16, acc[nj], f.ldf, wmma::mem_row_major);
    __syncwarp();
  }
  // Lanes 0..15 hold the statistics of rows 0..15.
  if (half == 0) sA[row] = l_run;
  __syncwarp();
  for (int idx = lane; idx < 16 * D; idx += 32) {
    const int r = idx / D, col = idx - r * D;
    if (r0 + r < d.T) store_value(out + d.qoff(b, r0 + r, h) + col, sO[r * f.ldf + col] * (1.0f / sA[r]));
  }
  if (half == 0 && r0 + row < d.T) lse[d.loff(b, h, r0 + row)] = m_run + logf(l_run);
#else
  __trap();  // compiled without sm_80+ code (bf16 WMMA): fail loudly rather than leave the outputs unwritten
#endif
}

// ---------------------------------------------------------------------------------------------------
// The element-wise backward step of one warp's 16 rows against a 64-wide tile, in fp32 scratch sS / sdP laid out
// [16, kRows]: P = exp(S scale - lse), dS = P (dP - delta) scale, rounded to bf16 into sP (if given) and sdS.
// transposed = false: rows are queries r0.., columns keys j0..; true: rows are keys r0.., columns queries j0...
__device__ inline void probs_warp(bf16* sP, bf16* sdS, const float* sS, const float* sdP, const float* lse_of,
                                  const float* delta_of, int r0, int j0, int T, float scale, bool transposed) {
  const int lane = threadIdx.x & 31;
  for (int idx = lane; idx < 16 * kRows; idx += 32) {
    const int r = idx / kRows, j = idx - r * kRows;
    const int qi = transposed ? j0 + j : r0 + r, kj = transposed ? r0 + r : j0 + j;
    const int stat = transposed ? j : r;  // index of the query's lse and delta
    float p = 0.0f, ds = 0.0f;
    if (qi < T && kj <= qi) {
      p = expf(sS[r * kLdScore + j] * scale - lse_of[stat]);
      ds = p * (sdP[r * kLdScore + j] - delta_of[stat]) * scale;
    }
    if (sP) sP[r * kLdTile + j] = __float2bfloat16_rn(p);
    sdS[r * kLdTile + j] = __float2bfloat16_rn(ds);
  }
}

template <int DF, class Act>
__global__ void __launch_bounds__(kFlashThreads)
    flash_bwd_dq_kernel(float* dq, const float* dout, const Act* q, const Act* k, const Act* v,
                        const float* lse, const float* delta, FlashDims f) {
#if __CUDA_ARCH__ >= 800
  extern __shared__ __align__(128) unsigned char smem[];
  const Dims& d = f.d;
  const int D = DF * 16;  // = d.D (a template parameter: the fragment arrays then live in registers)
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  Carve c{smem};
  const FlashTiles t = flash_tiles(c, f, FlashKernel::dq, warp);
  bf16 *sK = t.tile0, *sV = t.tile1, *sdS = t.dS;
  float *sS = t.S, *sdP = t.dP, *sStat = t.rows;
  const QueryBlock blk = query_block(d, f.ntiles);
  const int b = blk.b, h = blk.h, kvh = blk.kvh, qt = blk.tile;
  const int i0 = qt * kRows, m = f.rows(qt);
  const int r0 = i0 + warp * 16;

  FragA qf[DF], dof[DF];
  load_rows_bf16(sK, f.ldh, q + d.qoff(b, i0, h), d.ldq, m, kRows, D);
  load_rows_bf16(sV, f.ldh, dout + d.qoff(b, i0, h), d.ldq, m, kRows, D);
  __syncthreads();
  load_row_frags<DF>(qf, sK, f.ldh, warp);
  load_row_frags<DF>(dof, sV, f.ldh, warp);
  if (lane < 16) {
    sStat[lane] = r0 + lane < d.T ? lse[d.loff(b, h, r0 + lane)] : 0.0f;
    sStat[16 + lane] = r0 + lane < d.T ? delta[d.loff(b, h, r0 + lane)] : 0.0f;
  }
  FragC acc[DF];
#pragma unroll
  for (int nj = 0; nj < DF; ++nj) wmma::fill_fragment(acc[nj], 0.0f);

  const int last_kt = min(f.ntiles - 1, (i0 + kRows - 1) / kRows);
  for (int kt = 0; kt <= last_kt; ++kt) {
    const int j0 = kt * kRows, kn = f.rows(kt);
    __syncthreads();
    load_rows_bf16(sK, f.ldh, k + d.koff(b, j0, kvh), d.ldk, kn, kRows, D);
    load_rows_bf16(sV, f.ldh, v + d.koff(b, j0, kvh), d.ldk, kn, kRows, D);
    __syncthreads();
    scores_16xN<DF>(sS, kLdScore, qf, sK, f.ldh);    // S = Q K^T
    scores_16xN<DF>(sdP, kLdScore, dof, sV, f.ldh);  // dP = dO V^T
    __syncwarp();
    probs_warp(nullptr, sdS, sS, sdP, sStat, sStat + 16, r0, j0, d.T, d.scale, false);
    __syncwarp();
    product_16xD<DF>(acc, sdS, kLdTile, sK, f.ldh);  // dQ += dS K
  }
  __syncwarp();
  add_rows<DF>(dq + d.qoff(b, r0, h), d.ldq, d.T - r0, acc, sS);
#else
  __trap();  // compiled without sm_80+ code (bf16 WMMA): fail loudly rather than leave the outputs unwritten
#endif
}

template <int DF, class Act>
__global__ void __launch_bounds__(kFlashThreads)
    flash_bwd_dkv_kernel(float* dk, float* dv, const float* dout, const Act* q, const Act* k, const Act* v,
                         const float* lse, const float* delta, FlashDims f) {
#if __CUDA_ARCH__ >= 800
  extern __shared__ __align__(128) unsigned char smem[];
  const Dims& d = f.d;
  const int D = DF * 16;  // = d.D (a template parameter: the fragment arrays then live in registers)
  const int warp = threadIdx.x >> 5;
  Carve c{smem};
  const FlashTiles t = flash_tiles(c, f, FlashKernel::dkv, warp);
  bf16 *sQ = t.tile0, *sdO = t.tile1, *sP = t.P, *sdS = t.dS;
  float *sLse = t.lse, *sDelta = t.delta, *sS = t.S, *sdP = t.dP;
  const KeyBlock blk = key_block(d, f.ntiles);
  const int b = blk.b, kvh = blk.kvh, kt = blk.tile;
  const int j0 = kt * kRows, kn = f.rows(kt);
  const int r0 = j0 + warp * 16;  // this warp's first key

  FragA kf[DF], vf[DF];
  load_rows_bf16(sQ, f.ldh, k + d.koff(b, j0, kvh), d.ldk, kn, kRows, D);
  load_rows_bf16(sdO, f.ldh, v + d.koff(b, j0, kvh), d.ldk, kn, kRows, D);
  __syncthreads();
  load_row_frags<DF>(kf, sQ, f.ldh, warp);
  load_row_frags<DF>(vf, sdO, f.ldh, warp);
  FragC dk_acc[DF], dv_acc[DF];
#pragma unroll
  for (int nj = 0; nj < DF; ++nj) wmma::fill_fragment(dk_acc[nj], 0.0f), wmma::fill_fragment(dv_acc[nj], 0.0f);

  for (int g = 0; g < d.G; ++g) {
    const int h = kvh * d.G + g;
    for (int qt = kt; qt < f.ntiles; ++qt) {
      const int i0 = qt * kRows, m = f.rows(qt);
      __syncthreads();  // every warp is done with the previous Q, dO, lse, delta (and the K, V staging)
      load_rows_bf16(sQ, f.ldh, q + d.qoff(b, i0, h), d.ldq, m, kRows, D);
      load_rows_bf16(sdO, f.ldh, dout + d.qoff(b, i0, h), d.ldq, m, kRows, D);
      load_row_stats(sLse, sDelta, lse, delta, d, b, h, i0, m, kRows);
      __syncthreads();
      scores_16xN<DF>(sS, kLdScore, kf, sQ, f.ldh);    // S^T = K Q^T
      scores_16xN<DF>(sdP, kLdScore, vf, sdO, f.ldh);  // dP^T = V dO^T
      __syncwarp();
      probs_warp(sP, sdS, sS, sdP, sLse, sDelta, r0, i0, d.T, d.scale, true);
      __syncwarp();
      product_16xD<DF>(dv_acc, sP, kLdTile, sdO, f.ldh);  // dV += P^T dO
      product_16xD<DF>(dk_acc, sdS, kLdTile, sQ, f.ldh);  // dK += dS^T Q
    }
  }
  __syncwarp();
  add_rows<DF>(dk + d.koff(b, r0, kvh), d.ldk, d.T - r0, dk_acc, sS);
  add_rows<DF>(dv + d.koff(b, r0, kvh), d.ldk, d.T - r0, dv_acc, sS);
#else
  __trap();  // compiled without sm_80+ code (bf16 WMMA): fail loudly rather than leave the outputs unwritten
#endif
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
  const FlashDims f(d);
  with_head_frags(d.D, [&](auto df) {
    constexpr int DF = decltype(df)::value;
    launch_tasks(flash_fwd_kernel<DF, Act>, d.query_tasks(f.ntiles), kFlashThreads, flash_smem(f, FlashKernel::fwd),
                 stream, "attention_forward (flash)", d.D, out, lse, q, k, v, f);
  });
}

template <class Act>
void attention_backward_flash(float* dq, float* dk, float* dv, const float* dout, const Act* q, const Act* k,
                              const Act* v, const float* lse, const float* delta, const Dims& d,
                              cudaStream_t stream) {
  require_tensor_cores("attention_backward (flash)");
  const FlashDims f(d);
  with_head_frags(d.D, [&](auto df) {
    constexpr int DF = decltype(df)::value;
    launch_tasks(flash_bwd_dq_kernel<DF, Act>, d.query_tasks(f.ntiles), kFlashThreads, flash_smem(f, FlashKernel::dq),
                 stream, "attention_backward (flash, dq)", d.D, dq, dout, q, k, v, lse, delta, f);
    launch_tasks(flash_bwd_dkv_kernel<DF, Act>, d.key_tasks(f.ntiles), kFlashThreads, flash_smem(f, FlashKernel::dkv),
                 stream, "attention_backward (flash, dkv)", d.D, dk, dv, dout, q, k, v, lse, delta, f);
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
