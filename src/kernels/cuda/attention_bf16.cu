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
__device__ inline void load_tile_bf16(bf16* dst, int ldh, const float* src, int64_t lds, int valid, int D) {
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

size_t fwd_smem(int D) {
  const Strides st(D);
  Carve c{nullptr};
  c.take<bf16>(3 * kTile * st.ldh);  // Q, K, V
  c.take<float>(kTile * kLdSf);      // S
  c.take<bf16>(kTile * kLdP);        // P
  c.take<float>(kTile * st.ldf);     // O
  c.take<float>(3 * kTile);          // m, l, alpha
  return c.used;
}

__global__ void __launch_bounds__(kAttnThreads)
    attn_fwd_bf16_kernel(float* out, float* lse, const float* q, const float* k, const float* v, Dims d) {
  extern __shared__ __align__(128) unsigned char smem[];
  const int D = d.D;
  const Strides st(D);
  Carve c{smem};
  bf16* sQ = c.take<bf16>(3 * kTile * st.ldh);
  bf16* sK = sQ + kTile * st.ldh;
  bf16* sV = sK + kTile * st.ldh;
  float* sS = c.take<float>(kTile * kLdSf);
  bf16* sP = c.take<bf16>(kTile * kLdP);
  float* sO = c.take<float>(kTile * st.ldf);
  float* sM = c.take<float>(3 * kTile);
  float* sL = sM + kTile;
  float* sA = sL + kTile;

  const int task = blockIdx.x;  // the longest rows (last query tiles) first
  const int qt = d.ntiles - 1 - task % d.ntiles, bh = task / d.ntiles, h = bh % d.H, b = bh / d.H;
  const int kvh = h / d.G;
  const int i0 = qt * kTile, m = d.rows(qt);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nwarps = blockDim.x >> 5;
  const int dfrags = D / kFrag;

  load_tile_bf16(sQ, st.ldh, q + d.qoff(b, i0, h), d.ldq, m, D);
  zero_floats(sO, kTile * st.ldf);
  for (int i = threadIdx.x; i < kTile; i += blockDim.x) {
    sM[i] = -INFINITY;
    sL[i] = 0.0f;
  }
  for (int kt = 0; kt <= qt; ++kt) {
    const int j0 = kt * kTile, kn = d.rows(kt);
    __syncthreads();  // the previous tile's readers of sK, sV, sP are done
    load_tile_bf16(sK, st.ldh, k + d.koff(b, j0, kvh), d.ldk, kn, D);
    load_tile_bf16(sV, st.ldh, v + d.koff(b, j0, kvh), d.ldk, kn, D);
    __syncthreads();
    scores(sS, nullptr, sQ, sK, nullptr, nullptr, st.ldh, D);
    __syncthreads();
    // Online softmax, as in the fp32 kernel: warp w takes rows w, w + nwarps, ...; lane j is key j.
    for (int i = warp; i < kTile; i += nwarps) {
      const bool valid = lane < kn && j0 + lane <= i0 + i;
      const float x = valid ? sS[i * kLdSf + lane] * d.scale : -INFINITY;
      const float mx = warp_max(x);
      const float mold = sM[i], mnew = fmaxf(mold, mx);
      const bool none = mnew == -INFINITY;
      const float p = none ? 0.0f : expf(x - mnew);
      const float alpha = none ? 1.0f : expf(mold - mnew);
      const float sum = warp_sum(p);
      sP[i * kLdP + lane] = __float2bfloat16_rn(p);
      if (lane == 0) {
        sM[i] = mnew;
        sL[i] = sL[i] * alpha + sum;
        sA[i] = alpha;
      }
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < kTile * D; idx += blockDim.x) {  // O *= alpha, row by row
      const int i = idx / D;
      sO[i * st.ldf + (idx - i * D)] *= sA[i];
    }
    __syncthreads();
    for (int f = warp; f < 2 * dfrags; f += nwarps) {  // O += P V
      const int mi = f / dfrags, nj = f % dfrags;
      warp_product<wmma::row_major, wmma::row_major>(sO + mi * kFrag * st.ldf + nj * kFrag, st.ldf, true,
                                                     sP + mi * kFrag * kLdP, kLdP, kFrag, sV + nj * kFrag, st.ldh,
                                                     kFrag * st.ldh, kKeySteps);
    }
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < m * D; idx += blockDim.x) {
    const int i = idx / D, col = idx - i * D;
    out[d.qoff(b, i0 + i, h) + col] = sO[i * st.ldf + col] * (1.0f / sL[i]);
  }
  for (int i = threadIdx.x; i < m; i += blockDim.x) lse[d.loff(b, h, i0 + i)] = sM[i] + logf(sL[i]);
}

size_t dq_smem(int D) {
  const Strides st(D);
  Carve c{nullptr};
  c.take<bf16>(4 * kTile * st.ldh);  // Q, dO, K, V
  c.take<float>(2 * kTile * kLdSf);  // S, dP
  c.take<bf16>(kTile * kLdP);        // dS
  c.take<float>(kTile * st.ldf);     // dQ
  c.take<float>(2 * kTile);          // lse, delta
  return c.used;
}

__global__ void __launch_bounds__(kAttnThreads)
    attn_bwd_dq_bf16_kernel(float* dq, const float* dout, const float* q, const float* k, const float* v,
                            const float* lse, const float* delta, Dims d) {
  extern __shared__ __align__(128) unsigned char smem[];
  const int D = d.D;
  const Strides st(D);
  Carve c{smem};
  bf16* sQ = c.take<bf16>(4 * kTile * st.ldh);
  bf16* sdO = sQ + kTile * st.ldh;
  bf16* sK = sdO + kTile * st.ldh;
  bf16* sV = sK + kTile * st.ldh;
  float* sS = c.take<float>(2 * kTile * kLdSf);
  float* sdP = sS + kTile * kLdSf;
  bf16* sdS = c.take<bf16>(kTile * kLdP);
  float* sdQ = c.take<float>(kTile * st.ldf);
  float* sLse = c.take<float>(2 * kTile);
  float* sDelta = sLse + kTile;

  const int task = blockIdx.x;
  const int qt = d.ntiles - 1 - task % d.ntiles, bh = task / d.ntiles, h = bh % d.H, b = bh / d.H;
  const int kvh = h / d.G;
  const int i0 = qt * kTile, m = d.rows(qt);
  const int warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  const int dfrags = D / kFrag;

  load_tile_bf16(sQ, st.ldh, q + d.qoff(b, i0, h), d.ldq, m, D);
  load_tile_bf16(sdO, st.ldh, dout + d.qoff(b, i0, h), d.ldq, m, D);
  zero_floats(sdQ, kTile * st.ldf);
  for (int i = threadIdx.x; i < kTile; i += blockDim.x) {
    sLse[i] = i < m ? lse[d.loff(b, h, i0 + i)] : 0.0f;
    sDelta[i] = i < m ? delta[d.loff(b, h, i0 + i)] : 0.0f;
  }
  for (int kt = 0; kt <= qt; ++kt) {
    const int j0 = kt * kTile, kn = d.rows(kt);
    __syncthreads();
    load_tile_bf16(sK, st.ldh, k + d.koff(b, j0, kvh), d.ldk, kn, D);
    load_tile_bf16(sV, st.ldh, v + d.koff(b, j0, kvh), d.ldk, kn, D);
    __syncthreads();
    scores(sS, sdP, sQ, sK, sdO, sV, st.ldh, D);
    __syncthreads();
    probs_bwd(nullptr, sdS, sS, sdP, sLse, sDelta, i0, m, j0, kn, d.scale);
    __syncthreads();
    for (int f = warp; f < 2 * dfrags; f += nwarps) {  // dQ += dS K
      const int mi = f / dfrags, nj = f % dfrags;
      warp_product<wmma::row_major, wmma::row_major>(sdQ + mi * kFrag * st.ldf + nj * kFrag, st.ldf, true,
                                                     sdS + mi * kFrag * kLdP, kLdP, kFrag, sK + nj * kFrag, st.ldh,
                                                     kFrag * st.ldh, kKeySteps);
    }
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < m * D; idx += blockDim.x) {
    const int i = idx / D, col = idx - i * D;
    dq[d.qoff(b, i0 + i, h) + col] += sdQ[i * st.ldf + col];
  }
}

size_t dkv_smem(int D) {
  const Strides st(D);
  Carve c{nullptr};
  c.take<bf16>(4 * kTile * st.ldh);  // K, V, Q, dO
  c.take<float>(2 * kTile * kLdSf);  // S, dP
  c.take<bf16>(2 * kTile * kLdP);    // P, dS
  c.take<float>(2 * kTile * st.ldf); // dK, dV
  c.take<float>(2 * kTile);          // lse, delta
  return c.used;
}

__global__ void __launch_bounds__(kAttnThreads)
    attn_bwd_dkv_bf16_kernel(float* dk, float* dv, const float* dout, const float* q, const float* k,
                             const float* v, const float* lse, const float* delta, Dims d) {
  extern __shared__ __align__(128) unsigned char smem[];
  const int D = d.D;
  const Strides st(D);
  Carve c{smem};
  bf16* sK = c.take<bf16>(4 * kTile * st.ldh);
  bf16* sV = sK + kTile * st.ldh;
  bf16* sQ = sV + kTile * st.ldh;
  bf16* sdO = sQ + kTile * st.ldh;
  float* sS = c.take<float>(2 * kTile * kLdSf);
  float* sdP = sS + kTile * kLdSf;
  bf16* sP = c.take<bf16>(2 * kTile * kLdP);
  bf16* sdS = sP + kTile * kLdP;
  float* sdK = c.take<float>(2 * kTile * st.ldf);
  float* sdV = sdK + kTile * st.ldf;
  float* sLse = c.take<float>(2 * kTile);
  float* sDelta = sLse + kTile;

  const int task = blockIdx.x;  // the first key tiles see the most query tiles: they go first
  const int kt = task % d.ntiles, bk = task / d.ntiles, kvh = bk % d.KV, b = bk / d.KV;
  const int j0 = kt * kTile, kn = d.rows(kt);
  const int warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  const int dfrags = D / kFrag;

  load_tile_bf16(sK, st.ldh, k + d.koff(b, j0, kvh), d.ldk, kn, D);
  load_tile_bf16(sV, st.ldh, v + d.koff(b, j0, kvh), d.ldk, kn, D);
  zero_floats(sdK, 2 * kTile * st.ldf);
  for (int g = 0; g < d.G; ++g) {
    const int h = kvh * d.G + g;
    for (int qt = kt; qt < d.ntiles; ++qt) {
      const int i0 = qt * kTile, m = d.rows(qt);
      __syncthreads();  // the previous step's readers of sQ, sdO, sP, sdS, sLse, sDelta are done
      load_tile_bf16(sQ, st.ldh, q + d.qoff(b, i0, h), d.ldq, m, D);
      load_tile_bf16(sdO, st.ldh, dout + d.qoff(b, i0, h), d.ldq, m, D);
      for (int i = threadIdx.x; i < kTile; i += blockDim.x) {
        sLse[i] = i < m ? lse[d.loff(b, h, i0 + i)] : 0.0f;
        sDelta[i] = i < m ? delta[d.loff(b, h, i0 + i)] : 0.0f;
      }
      __syncthreads();
      scores(sS, sdP, sQ, sK, sdO, sV, st.ldh, D);
      __syncthreads();
      probs_bwd(sP, sdS, sS, sdP, sLse, sDelta, i0, m, j0, kn, d.scale);
      __syncthreads();
      // dV += P^T dO and dK += dS^T Q: rows are keys; P and dS ([query, key]) read column-major are P^T and dS^T.
      for (int f = warp; f < 4 * dfrags; f += nwarps) {
        const bool for_k = f >= 2 * dfrags;
        const int r = f % (2 * dfrags), mi = r / dfrags, nj = r % dfrags;
        warp_product<wmma::col_major, wmma::row_major>(
            (for_k ? sdK : sdV) + mi * kFrag * st.ldf + nj * kFrag, st.ldf, true, (for_k ? sdS : sP) + mi * kFrag,
            kLdP, kFrag * kLdP, (for_k ? sQ : sdO) + nj * kFrag, st.ldh, kFrag * st.ldh, kKeySteps);
      }
    }
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < kn * D; idx += blockDim.x) {
    const int j = idx / D, col = idx - j * D;
    const int64_t o = d.koff(b, j0 + j, kvh) + col;
    dk[o] += sdK[j * st.ldf + col];
    dv[o] += sdV[j * st.ldf + col];
  }
}

void require_tensor_cores(const char* name) {
  int dev = 0, major = 0;
  ONESTEP_CUDA_CHECK(cudaGetDevice(&dev));
  ONESTEP_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  if (major < 8) throw std::runtime_error(std::string(name) + ": bf16 tensor cores need compute capability 8.0+");
}

}  // namespace

void attention_forward_bf16(float* out, float* lse, const float* q, const float* k, const float* v, const Dims& d,
                            cudaStream_t stream) {
  require_tensor_cores("attention_forward (bf16)");
  const size_t smem = fwd_smem(d.D);
  prepare_smem(attn_fwd_bf16_kernel, smem, "attention_forward (bf16)", d.D);
  const int64_t blocks = static_cast<int64_t>(d.B) * d.H * d.ntiles;
  attn_fwd_bf16_kernel<<<static_cast<unsigned>(blocks), kAttnThreads, smem, stream>>>(out, lse, q, k, v, d);
  ONESTEP_CUDA_LAUNCHED("attention_forward (bf16)");
}

void attention_backward_bf16(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                             const float* v, const float* lse, const float* delta, const Dims& d, cudaStream_t stream) {
  require_tensor_cores("attention_backward (bf16)");
  const size_t smem_dq = dq_smem(d.D), smem_dkv = dkv_smem(d.D);
  prepare_smem(attn_bwd_dq_bf16_kernel, smem_dq, "attention_backward (bf16)", d.D);
  prepare_smem(attn_bwd_dkv_bf16_kernel, smem_dkv, "attention_backward (bf16)", d.D);
  const int64_t nq = static_cast<int64_t>(d.B) * d.H * d.ntiles, nk = static_cast<int64_t>(d.B) * d.KV * d.ntiles;
  attn_bwd_dq_bf16_kernel<<<static_cast<unsigned>(nq), kAttnThreads, smem_dq, stream>>>(dq, dout, q, k, v, lse,
                                                                                        delta, d);
  ONESTEP_CUDA_LAUNCHED("attention_backward (bf16, dq)");
  attn_bwd_dkv_bf16_kernel<<<static_cast<unsigned>(nk), kAttnThreads, smem_dkv, stream>>>(dk, dv, dout, q, k, v,
                                                                                          lse, delta, d);
  ONESTEP_CUDA_LAUNCHED("attention_backward (bf16, dkv)");
}

}  // namespace onestep::cuda::detail
