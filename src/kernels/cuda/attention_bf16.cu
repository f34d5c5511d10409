// Causal grouped-query attention with its products on the bf16 tensor cores (WMMA 16x16x16, fp32 accumulation),
// used when train.precision = bf16 and the head dim is a multiple of 16. Same tiling, tasks and order as the fp32
// kernels of attention.cu (see there): Q, K, V and dO are rounded to bf16 as their tiles are loaded, the scores and
// dP come out in fp32, the softmax, lse, delta and the accumulators stay fp32, and P and dS are rounded to bf16
// before they multiply. Deterministic (no atomics; every output element is summed in a fixed order).
//
// Each product is split into 16x16 output fragments, one warp each (warp_product below):
//   S  = Q K^T   and dP = dO V^T   [kTile x kTile]   A row-major, B = K or V read column-major (its transpose)
//   O += P V     and dQ += dS K    [kTile x D]       A and B row-major
//   dV += P^T dO and dK += dS^T Q  [kTile x D]       A = P or dS read column-major (its transpose), B row-major
// Shared-memory tiles: bf16 [kTile, D + 8] and [kTile, kTile + 8], fp32 [kTile, kTile + 4] and [kTile, D + 4]:
// WMMA needs leading dimensions that are multiples of 16 bytes and fragment pointers on 32-byte boundaries.
#include <cuda_bf16.h>
#include <mma.h>

#include <type_traits>

#include "kernels/cuda/attention_tiles.cuh"
#include "kernels/cuda/common.cuh"

namespace onestep::cuda::detail {

namespace {

using bf16 = __nv_bfloat16;
namespace wmma = nvcuda::wmma;

constexpr int kFrag = 16;            // WMMA fragment edge
constexpr int kLdP = kTile + 8;      // bf16 [kTile, kTile] tiles: P, dS
constexpr int kLdSf = kTile + 4;     // fp32 [kTile, kTile] tiles: S, dP
constexpr int kKeySteps = kTile / kFrag;

struct Strides {
  int ldh, ldf;  // bf16 [kTile, D] tiles: D + 8; fp32 [kTile, D] accumulators: D + 4
  __host__ __device__ explicit Strides(int D) : ldh(D + 8), ldf(D + 4) {}
};

static_assert(kTile == 2 * 16, "scores() gives each of 4 warps one 16x16 fragment of a [kTile, kTile] tile");

// dst = the [kTile, D] tile at src in bf16, rows from `valid` on zero.
template <class Src>
__device__ inline void load_tile_bf16(bf16* dst, int ldh, const Src* src, int64_t lds, int valid, int D) {
  load_rows_bf16(dst, ldh, src, lds, valid, kTile, D);
}

__device__ inline void zero_floats(float* x, int n) {
  for (int i = threadIdx.x; i < n; i += blockDim.x) x[i] = 0.0f;
}

// One warp: the 16x16 fp32 block C (row-major, ldc) = [C +] sum over `steps` of A_s B_s, where A_s and B_s are the
// 16x16 bf16 blocks at A + s * a_step and B + s * b_step in the given layouts.
template <class LayoutA, class LayoutB>
__device__ inline void warp_product(float* C, int ldc, bool accumulate, const bf16* A, int lda, int a_step,
                                    const bf16* B, int ldb, int b_step, int steps) {
#if __CUDA_ARCH__ >= 800
  wmma::fragment<wmma::accumulator, kFrag, kFrag, kFrag, float> acc;
  if (accumulate) wmma::load_matrix_sync(acc, C, ldc, wmma::mem_row_major);
  else wmma::fill_fragment(acc, 0.0f);
  wmma::fragment<wmma::matrix_a, kFrag, kFrag, kFrag, bf16, LayoutA> a;
  wmma::fragment<wmma::matrix_b, kFrag, kFrag, kFrag, bf16, LayoutB> b;
  for (int s = 0; s < steps; ++s) {
    wmma::load_matrix_sync(a, A + s * a_step, lda);
    wmma::load_matrix_sync(b, B + s * b_step, ldb);
    wmma::mma_sync(acc, a, b, acc);
  }
  wmma::store_matrix_sync(C, acc, ldc, wmma::mem_row_major);
#else
  __trap();  // bf16 tensor cores need sm_80 or newer (the host side never launches these kernels there)
#endif
}

// S = Q K^T [kTile x kTile] into sS; with dO and V also dP = dO V^T into sdP. 4 fragments each, warps 0-3 and 4-7.
__device__ inline void scores(float* sS, float* sdP, const bf16* sQ, const bf16* sK, const bf16* sdO,
                              const bf16* sV, int ldh, int D) {
  const int warp = threadIdx.x >> 5;
  const int f = warp & 3, mi = f >> 1, nj = f & 1;
  const bool second = warp >= 4;
  if (second && !sdP) return;
  float* C = (second ? sdP : sS) + mi * kFrag * kLdSf + nj * kFrag;
  const bf16* A = (second ? sdO : sQ) + mi * kFrag * ldh;
  const bf16* B = (second ? sV : sK) + nj * kFrag * ldh;
  warp_product<wmma::row_major, wmma::col_major>(C, kLdSf, false, A, ldh, kFrag, B, ldh, kFrag, D / kFrag);
}

// The element-wise backward step of one (query tile, key tile) pair: P = exp(S * scale - lse) and
// dS = P (dP - delta) scale into bf16 sP (when given) and sdS; 0 where masked or outside the sequence.
__device__ inline void probs_bwd(bf16* sP, bf16* sdS, const float* sS, const float* sdP, const float* sLse,
                                 const float* sDelta, int i0, int m, int j0, int kn, float scale) {
  for (int idx = threadIdx.x; idx < kTile * kTile; idx += blockDim.x) {
    const int i = idx / kTile, j = idx % kTile;
    float p = 0.0f, ds = 0.0f;
    if (i < m && j < kn && j0 + j <= i0 + i) {
      p = expf(sS[i * kLdSf + j] * scale - sLse[i]);
      ds = p * (sdP[i * kLdSf + j] - sDelta[i]) * scale;
    }
    if (sP) sP[i * kLdP + j] = __float2bfloat16_rn(p);
    sdS[i * kLdP + j] = __float2bfloat16_rn(ds);
  }
}

// C[kTile, D] (fp32, ldf) += A B over the block's warps (2 x D/16 output fragments, one warp each): A is a
// [kTile, kTile] bf16 tile (row stride kLdP) read row-major, or column-major for its transpose (LayoutA =
// col_major); B is a [kTile, D] bf16 tile (row stride ldh), row-major.
template <class LayoutA>
__device__ inline void tile_product(float* C, int ldf, const bf16* A, const bf16* B, int ldh, int D) {
  constexpr bool transposed = std::is_same_v<LayoutA, wmma::col_major>;
  const int dfrags = D / kFrag, nwarps = blockDim.x >> 5;
  for (int f = threadIdx.x >> 5; f < 2 * dfrags; f += nwarps) {
    const int mi = f / dfrags, nj = f % dfrags;
    warp_product<LayoutA, wmma::row_major>(C + mi * kFrag * ldf + nj * kFrag, ldf, true,
                                           A + (transposed ? mi * kFrag : mi * kFrag * kLdP), kLdP,
                                           transposed ? kFrag * kLdP : kFrag, B + nj * kFrag, ldh, kFrag * ldh,
                                           kKeySteps);
  }
}

// Each kernel's shared memory, one function for the kernel (on its dynamic shared memory) and the host (a null
// base: the launch size).
struct FwdTiles {
  bf16 *Q, *K, *V, *P;
  float *S, *O, *M, *L, *A;  // M, L, A: the rows' running max, sum and rescale factor
};
__host__ __device__ inline FwdTiles fwd_tiles(Carve& c, int D) {
  const Strides st(D);
  FwdTiles t;
  t.Q = c.take<bf16>(kTile * st.ldh), t.K = c.take<bf16>(kTile * st.ldh), t.V = c.take<bf16>(kTile * st.ldh);
  t.S = c.take<float>(kTile * kLdSf), t.P = c.take<bf16>(kTile * kLdP), t.O = c.take<float>(kTile * st.ldf);
  t.M = c.take<float>(kTile), t.L = c.take<float>(kTile), t.A = c.take<float>(kTile);
  return t;
}

struct BwdTiles {  // dq: dK and dV unused; dkv: dQ unused
  bf16 *Q, *dO, *K, *V, *P, *dS;
  float *S, *dP, *dQ, *dK, *dV, *lse, *delta;
};
__host__ __device__ inline BwdTiles bwd_tiles(Carve& c, int D, bool dkv) {
  const Strides st(D);
  BwdTiles t{};
  t.Q = c.take<bf16>(kTile * st.ldh), t.dO = c.take<bf16>(kTile * st.ldh);
  t.K = c.take<bf16>(kTile * st.ldh), t.V = c.take<bf16>(kTile * st.ldh);
  t.S = c.take<float>(kTile * kLdSf), t.dP = c.take<float>(kTile * kLdSf), t.dS = c.take<bf16>(kTile * kLdP);
  if (dkv) {
    t.P = c.take<bf16>(kTile * kLdP), t.dK = c.take<float>(kTile * st.ldf), t.dV = c.take<float>(kTile * st.ldf);
  } else {
    t.dQ = c.take<float>(kTile * st.ldf);
  }
  t.lse = c.take<float>(kTile), t.delta = c.take<float>(kTile);
  return t;
}

template <class Act>  // the storage of q, k, v and out: float, or bf16 (bf16 operand storage)
__global__ void __launch_bounds__(kAttnThreads)
    attn_fwd_bf16_kernel(Act* out, float* lse, const Act* q, const Act* k, const Act* v, Dims d) {
  extern __shared__ __align__(128) unsigned char smem[];
  const int D = d.D;
  const Strides st(D);
  Carve c{smem};
  const FwdTiles t = fwd_tiles(c, D);
  const QueryBlock blk = query_block(d, d.ntiles);
  const int b = blk.b, h = blk.h, kvh = blk.kvh, qt = blk.tile;
  const int i0 = qt * kTile, m = d.rows(qt);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nwarps = blockDim.x >> 5;

  load_tile_bf16(t.Q, st.ldh, q + d.qoff(b, i0, h), d.ldq, m, D);
  zero_floats(t.O, kTile * st.ldf);
  for (int i = threadIdx.x; i < kTile; i += blockDim.x) {
    t.M[i] = -INFINITY;
    t.L[i] = 0.0f;
  }
  for (int kt = 0; kt <= qt; ++kt) {
    const int j0 = kt * kTile, kn = d.rows(kt);
    __syncthreads();  // the previous tile's readers of K, V, P are done
    load_tile_bf16(t.K, st.ldh, k + d.koff(b, j0, kvh), d.ldk, kn, D);
    load_tile_bf16(t.V, st.ldh, v + d.koff(b, j0, kvh), d.ldk, kn, D);
    __syncthreads();
    scores(t.S, nullptr, t.Q, t.K, nullptr, nullptr, st.ldh, D);
    __syncthreads();
    // Online softmax, as in the fp32 kernel: warp w takes rows w, w + nwarps, ...; lane j is key j.
    for (int i = warp; i < kTile; i += nwarps) {
      const bool valid = lane < kn && j0 + lane <= i0 + i;
      const float x = valid ? t.S[i * kLdSf + lane] * d.scale : -INFINITY;
      const float mx = warp_max(x);
      const float mold = t.M[i], mnew = fmaxf(mold, mx);
      const bool none = mnew == -INFINITY;
      const float p = none ? 0.0f : expf(x - mnew);
      const float alpha = none ? 1.0f : expf(mold - mnew);
      const float sum = warp_sum(p);
      t.P[i * kLdP + lane] = __float2bfloat16_rn(p);
      if (lane == 0) {
        t.M[i] = mnew;
        t.L[i] = t.L[i] * alpha + sum;
        t.A[i] = alpha;
      }
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < kTile * D; idx += blockDim.x) {  // O *= alpha, row by row
      const int i = idx / D;
      t.O[i * st.ldf + (idx - i * D)] *= t.A[i];
    }
    __syncthreads();
    tile_product<wmma::row_major>(t.O, st.ldf, t.P, t.V, st.ldh, D);  // O += P V
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < m * D; idx += blockDim.x) {
    const int i = idx / D, col = idx - i * D;
    store_value(out + d.qoff(b, i0 + i, h) + col, t.O[i * st.ldf + col] * (1.0f / t.L[i]));
  }
  for (int i = threadIdx.x; i < m; i += blockDim.x) lse[d.loff(b, h, i0 + i)] = t.M[i] + logf(t.L[i]);
}

template <class Act>
__global__ void __launch_bounds__(kAttnThreads)
    attn_bwd_dq_bf16_kernel(float* dq, const float* dout, const Act* q, const Act* k, const Act* v,
                            const float* lse, const float* delta, Dims d) {
  extern __shared__ __align__(128) unsigned char smem[];
  const int D = d.D;
  const Strides st(D);
  Carve c{smem};
  const BwdTiles t = bwd_tiles(c, D, false);
  const QueryBlock blk = query_block(d, d.ntiles);
  const int b = blk.b, h = blk.h, kvh = blk.kvh, qt = blk.tile;
  const int i0 = qt * kTile, m = d.rows(qt);

  load_tile_bf16(t.Q, st.ldh, q + d.qoff(b, i0, h), d.ldq, m, D);
  load_tile_bf16(t.dO, st.ldh, dout + d.qoff(b, i0, h), d.ldq, m, D);
  zero_floats(t.dQ, kTile * st.ldf);
  load_row_stats(t.lse, t.delta, lse, delta, d, b, h, i0, m, kTile);
  for (int kt = 0; kt <= qt; ++kt) {
    const int j0 = kt * kTile, kn = d.rows(kt);
    __syncthreads();
    load_tile_bf16(t.K, st.ldh, k + d.koff(b, j0, kvh), d.ldk, kn, D);
    load_tile_bf16(t.V, st.ldh, v + d.koff(b, j0, kvh), d.ldk, kn, D);
    __syncthreads();
    scores(t.S, t.dP, t.Q, t.K, t.dO, t.V, st.ldh, D);
    __syncthreads();
    probs_bwd(nullptr, t.dS, t.S, t.dP, t.lse, t.delta, i0, m, j0, kn, d.scale);
    __syncthreads();
    tile_product<wmma::row_major>(t.dQ, st.ldf, t.dS, t.K, st.ldh, D);  // dQ += dS K
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < m * D; idx += blockDim.x) {
    const int i = idx / D, col = idx - i * D;
    dq[d.qoff(b, i0 + i, h) + col] += t.dQ[i * st.ldf + col];
  }
}

template <class Act>
__global__ void __launch_bounds__(kAttnThreads)
    attn_bwd_dkv_bf16_kernel(float* dk, float* dv, const float* dout, const Act* q, const Act* k,
                             const Act* v, const float* lse, const float* delta, Dims d) {
  extern __shared__ __align__(128) unsigned char smem[];
  const int D = d.D;
  const Strides st(D);
  Carve c{smem};
  const BwdTiles t = bwd_tiles(c, D, true);
  const KeyBlock blk = key_block(d, d.ntiles);
  const int b = blk.b, kvh = blk.kvh, kt = blk.tile;
  const int j0 = kt * kTile, kn = d.rows(kt);

  load_tile_bf16(t.K, st.ldh, k + d.koff(b, j0, kvh), d.ldk, kn, D);
  load_tile_bf16(t.V, st.ldh, v + d.koff(b, j0, kvh), d.ldk, kn, D);
  zero_floats(t.dK, kTile * st.ldf);
  zero_floats(t.dV, kTile * st.ldf);
  for (int g = 0; g < d.G; ++g) {
    const int h = kvh * d.G + g;
    for (int qt = kt; qt < d.ntiles; ++qt) {
      const int i0 = qt * kTile, m = d.rows(qt);
      __syncthreads();  // the previous step's readers of Q, dO, P, dS, lse, delta are done
      load_tile_bf16(t.Q, st.ldh, q + d.qoff(b, i0, h), d.ldq, m, D);
      load_tile_bf16(t.dO, st.ldh, dout + d.qoff(b, i0, h), d.ldq, m, D);
      load_row_stats(t.lse, t.delta, lse, delta, d, b, h, i0, m, kTile);
      __syncthreads();
      scores(t.S, t.dP, t.Q, t.K, t.dO, t.V, st.ldh, D);
      __syncthreads();
      probs_bwd(t.P, t.dS, t.S, t.dP, t.lse, t.delta, i0, m, j0, kn, d.scale);
      __syncthreads();
      // Rows are keys: P and dS ([query, key]) read column-major are P^T and dS^T.
      tile_product<wmma::col_major>(t.dV, st.ldf, t.P, t.dO, st.ldh, D);  // dV += P^T dO
      tile_product<wmma::col_major>(t.dK, st.ldf, t.dS, t.Q, st.ldh, D);  // dK += dS^T Q
    }
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < kn * D; idx += blockDim.x) {
    const int j = idx / D, col = idx - j * D;
    const int64_t o = d.koff(b, j0 + j, kvh) + col;
    dk[o] += t.dK[j * st.ldf + col];
    dv[o] += t.dV[j * st.ldf + col];
  }
}

}  // namespace

void require_tensor_cores(const char* name) {
  int dev = 0, major = 0;
  ONESTEP_CUDA_CHECK(cudaGetDevice(&dev));
  ONESTEP_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  if (major < 8) throw std::runtime_error(std::string(name) + ": bf16 tensor cores need compute capability 8.0+");
}

template <class Act>
void attention_forward_bf16(Act* out, float* lse, const Act* q, const Act* k, const Act* v, const Dims& d,
                            cudaStream_t stream) {
  require_tensor_cores("attention_forward (bf16)");
  Carve layout{nullptr};
  fwd_tiles(layout, d.D);
  launch_tasks(attn_fwd_bf16_kernel<Act>, d.query_tasks(d.ntiles), kAttnThreads, layout.used, stream,
               "attention_forward (bf16)", d.D, out, lse, q, k, v, d);
}

template <class Act>
void attention_backward_bf16(float* dq, float* dk, float* dv, const float* dout, const Act* q, const Act* k,
                             const Act* v, const float* lse, const float* delta, const Dims& d, cudaStream_t stream) {
  require_tensor_cores("attention_backward (bf16)");
  Carve dq_layout{nullptr}, dkv_layout{nullptr};
  bwd_tiles(dq_layout, d.D, false), bwd_tiles(dkv_layout, d.D, true);
  launch_tasks(attn_bwd_dq_bf16_kernel<Act>, d.query_tasks(d.ntiles), kAttnThreads, dq_layout.used, stream,
               "attention_backward (bf16, dq)", d.D, dq, dout, q, k, v, lse, delta, d);
  launch_tasks(attn_bwd_dkv_bf16_kernel<Act>, d.key_tasks(d.ntiles), kAttnThreads, dkv_layout.used, stream,
               "attention_backward (bf16, dkv)", d.D, dk, dv, dout, q, k, v, lse, delta, d);
}

#define ONESTEP_ATTENTION_BF16(Act)                                                                                \
  template void attention_forward_bf16(Act*, float*, const Act*, const Act*, const Act*, const Dims&, cudaStream_t); \
  template void attention_backward_bf16(float*, float*, float*, const float*, const Act*, const Act*, const Act*,    \
                                        const float*, const float*, const Dims&, cudaStream_t);
ONESTEP_ATTENTION_BF16(float)
ONESTEP_ATTENTION_BF16(__nv_bfloat16)
#undef ONESTEP_ATTENTION_BF16

}  // namespace onestep::cuda::detail
