// Causal grouped-query attention, fused flash-attention style, fp32 on the CUDA cores. Correctness first:
// tiles live in shared memory, every product is a plain FMA chain in a fixed order (deterministic).
//
// Layouts: q, out, dq [B,T,H,D]; k, v, dk, dv [B,T,KV,D]; lse [B,H,T]. Head h reads kv head h / (H/KV).
// Tiles are kTile = 32 rows: a warp's 32 lanes are the 32 keys of a score row in the softmax steps.
//
// Forward: one block per (b, h, query tile); key tiles 0..qt stream through shared memory; online softmax
//   (running max m and sum l per row), the unnormalised output O in shared memory, out = O / l and
//   lse = m + log(l) at the end. No T x T matrix in global memory.
// Backward (recomputes P = exp(S * scale - lse), delta = rowsum(dout * out)):
//   dq kernel:   one block per (b, h, query tile), key tiles 0..qt in order;  dq += sum dS K
//   dkv kernel:  one block per (b, kv head, key tile), heads of the group then query tiles qt >= kt in order;
//                dk += sum dS^T Q, dv += sum P^T dO, accumulated in registers.
//   Every output element is written by one block and summed in a fixed order: no atomics.
#include <algorithm>
#include <cmath>

#include "core/env.h"
#include "kernels/cuda/attention_tiles.cuh"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/op_profile.h"

namespace onestep::cuda {

namespace {

using namespace detail;

constexpr int kLdS = kTile + 1;  // padded row stride of the score tiles
constexpr int kMaxHeadDim = 256;  // the backward's dk/dv registers are sized for head dims up to this

// dst[r, c] (row stride ld) = src[r * lds + c] for r < valid, 0 for valid <= r < kTile.
// src is fp32 or bf16 (widened exactly).
template <class Src>
__device__ inline void load_tile(float* dst, int ld, const Src* src, int64_t lds, int valid, int D) {
  for (int idx = threadIdx.x; idx < kTile * D; idx += blockDim.x) {
    const int r = idx / D, c = idx - r * D;
    dst[r * ld + c] = r < valid ? load_value(src + r * lds + c) : 0.0f;
  }
}

// Raw dot product of row i of A and row j of B (both [kTile, D] with stride ld), k in order.
__device__ inline float dot_rows(const float* A, const float* B, int i, int j, int ld, int D) {
  const float* a = A + i * ld;
  const float* b = B + j * ld;
  float s = 0.0f;
  for (int c = 0; c < D; ++c) s = fmaf(a[c], b[c], s);
  return s;
}

// ---------------------------------------------------------------------------------------------------
template <class Act>  // the storage of q, k, v and out: float, or __nv_bfloat16 (bf16 operand storage)
__global__ void __launch_bounds__(kAttnThreads)
    attn_fwd_kernel(Act* out, float* lse, const Act* q, const Act* k, const Act* v, Dims d) {
  extern __shared__ float smem[];
  const int ld = d.ld, D = d.D;
  float* sQ = smem;
  float* sK = sQ + kTile * ld;
  float* sV = sK + kTile * ld;
  float* sO = sV + kTile * ld;
  float* sS = sO + kTile * ld;  // [kTile, kLdS]
  float* sM = sS + kTile * kLdS;
  float* sL = sM + kTile;
  float* sA = sL + kTile;

  const QueryBlock blk = query_block(d, d.ntiles);
  const int b = blk.b, h = blk.h, kvh = blk.kvh, qt = blk.tile;
  const int i0 = qt * kTile, m = d.rows(qt);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nwarps = blockDim.x >> 5;

  load_tile(sQ, ld, q + d.qoff(b, i0, h), d.ldq, m, D);
  for (int idx = threadIdx.x; idx < kTile * D; idx += blockDim.x) sO[(idx / D) * ld + idx % D] = 0.0f;
  for (int i = threadIdx.x; i < kTile; i += blockDim.x) {
    sM[i] = -INFINITY;
    sL[i] = 0.0f;
  }

  for (int kt = 0; kt <= qt; ++kt) {
    const int j0 = kt * kTile, kn = d.rows(kt);
    __syncthreads();  // the previous tile's readers of sK, sV, sS are done
    load_tile(sK, ld, k + d.koff(b, j0, kvh), d.ldk, kn, D);
    load_tile(sV, ld, v + d.koff(b, j0, kvh), d.ldk, kn, D);
    __syncthreads();
    // Scaled, masked scores.
    for (int idx = threadIdx.x; idx < kTile * kTile; idx += blockDim.x) {
      const int i = idx / kTile, j = idx % kTile;
      const bool valid = j < kn && j0 + j <= i0 + i;
      sS[i * kLdS + j] = valid ? dot_rows(sQ, sK, i, j, ld, D) * d.scale : -INFINITY;
    }
    __syncthreads();
    // Online softmax: warp w takes rows w, w + nwarps, ...; lane j is key j.
    for (int i = warp; i < kTile; i += nwarps) {
      const float x = sS[i * kLdS + lane];
      const float mx = detail::warp_max(x);
      const float mold = sM[i], mnew = fmaxf(mold, mx);
      const bool none = mnew == -INFINITY;  // nothing valid yet (only rows past T can get here)
      const float p = none ? 0.0f : expf(x - mnew);
      const float alpha = none ? 1.0f : expf(mold - mnew);  // 0 on the first tile (mold = -inf)
      const float sum = detail::warp_sum(p);
      sS[i * kLdS + lane] = p;
      if (lane == 0) {
        sM[i] = mnew;
        sL[i] = sL[i] * alpha + sum;
        sA[i] = alpha;
      }
    }
    __syncthreads();
    // O = O * alpha + P V
    for (int idx = threadIdx.x; idx < kTile * D; idx += blockDim.x) {
      const int i = idx / D, c = idx - i * D;
      float acc = sO[i * ld + c] * sA[i];
      for (int j = 0; j < kn; ++j) acc = fmaf(sS[i * kLdS + j], sV[j * ld + c], acc);
      sO[i * ld + c] = acc;
    }
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < m * D; idx += blockDim.x) {
    const int i = idx / D, c = idx - i * D;
    store_value(out + d.qoff(b, i0 + i, h) + c, sO[i * ld + c] * (1.0f / sL[i]));
  }
  for (int i = threadIdx.x; i < m; i += blockDim.x) lse[d.loff(b, h, i0 + i)] = sM[i] + logf(sL[i]);
}

// delta[b, h, t] = sum_c dout * out, one warp per (b, t, h) row: lane l sums columns l, l + 32, ..., and a
// butterfly adds the lanes' sums (coalesced, in a fixed order). With dout_bf16, the row of dout is also stored
// rounded to bf16: the operand the flash kernels stream.
template <class Act>
__global__ void attn_delta_kernel(float* delta, __nv_bfloat16* dout_bf16, const float* dout, const Act* out, Dims d) {
  const int64_t rows = static_cast<int64_t>(d.B) * d.T * d.H;
  const int lane = threadIdx.x & 31;
  static_assert(kThreads % 32 == 0, "whole warps: the row loop is the same for every lane of a warp");
  for (int64_t r = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32; r < rows;
       r += static_cast<int64_t>(gridDim.x) * blockDim.x / 32) {
    const int h = static_cast<int>(r % d.H);
    const int64_t bt = r / d.H;
    const int t = static_cast<int>(bt % d.T), b = static_cast<int>(bt / d.T);
    const float* g = dout + r * d.D;
    const Act* o = out + r * d.D;
    float s = 0.0f;
    for (int c = lane; c < d.D; c += 32) {
      s = fmaf(g[c], load_value(o + c), s);
      if (dout_bf16) dout_bf16[r * d.D + c] = __float2bfloat16_rn(g[c]);
    }
#pragma unroll
    for (int m = 16; m > 0; m /= 2) s += __shfl_xor_sync(0xffffffffu, s, m);
    if (lane == 0) delta[d.loff(b, h, t)] = s;
  }
}

// P and dS of one (query tile, key tile) pair into sP, sdS: rows i < m, keys j < kn, causal.
//   P = exp(S * scale - lse), dS = P * (dP - delta) * scale with dP = dO V^T; 0 where masked.
__device__ inline void attn_probs_bwd(float* sP, float* sdS, const float* sQ, const float* sdO, const float* sK,
                                      const float* sV, const float* sLse, const float* sDelta, int i0, int m, int j0,
                                      int kn, int ld, int D, float scale) {
  for (int idx = threadIdx.x; idx < kTile * kTile; idx += blockDim.x) {
    const int i = idx / kTile, j = idx % kTile;
    float p = 0.0f, ds = 0.0f;
    if (i < m && j < kn && j0 + j <= i0 + i) {
      const float s = dot_rows(sQ, sK, i, j, ld, D);
      const float dp = dot_rows(sdO, sV, i, j, ld, D);
      p = expf(s * scale - sLse[i]);
      ds = p * (dp - sDelta[i]) * scale;
    }
    sP[i * kLdS + j] = p;
    sdS[i * kLdS + j] = ds;
  }
}

template <class Act>
__global__ void __launch_bounds__(kAttnThreads)
    attn_bwd_dq_kernel(float* dq, const float* dout, const Act* q, const Act* k, const Act* v,
                       const float* lse, const float* delta, Dims d) {
  extern __shared__ float smem[];
  const int ld = d.ld, D = d.D;
  float* sQ = smem;
  float* sdO = sQ + kTile * ld;
  float* sK = sdO + kTile * ld;
  float* sV = sK + kTile * ld;
  float* sdQ = sV + kTile * ld;
  float* sP = sdQ + kTile * ld;
  float* sdS = sP + kTile * kLdS;
  float* sLse = sdS + kTile * kLdS;
  float* sDelta = sLse + kTile;

  const QueryBlock blk = query_block(d, d.ntiles);
  const int b = blk.b, h = blk.h, kvh = blk.kvh, qt = blk.tile;
  const int i0 = qt * kTile, m = d.rows(qt);

  load_tile(sQ, ld, q + d.qoff(b, i0, h), d.ldq, m, D);
  load_tile(sdO, ld, dout + d.qoff(b, i0, h), d.ldq, m, D);
  for (int idx = threadIdx.x; idx < kTile * D; idx += blockDim.x) sdQ[(idx / D) * ld + idx % D] = 0.0f;
  load_row_stats(sLse, sDelta, lse, delta, d, b, h, i0, m, kTile);
  for (int kt = 0; kt <= qt; ++kt) {
    const int j0 = kt * kTile, kn = d.rows(kt);
    __syncthreads();
    load_tile(sK, ld, k + d.koff(b, j0, kvh), d.ldk, kn, D);
    load_tile(sV, ld, v + d.koff(b, j0, kvh), d.ldk, kn, D);
    __syncthreads();
    attn_probs_bwd(sP, sdS, sQ, sdO, sK, sV, sLse, sDelta, i0, m, j0, kn, ld, D, d.scale);
    __syncthreads();
    for (int idx = threadIdx.x; idx < kTile * D; idx += blockDim.x) {  // dQ += dS K
      const int i = idx / D, c = idx - i * D;
      float acc = sdQ[i * ld + c];
      for (int j = 0; j < kn; ++j) acc = fmaf(sdS[i * kLdS + j], sK[j * ld + c], acc);
      sdQ[i * ld + c] = acc;
    }
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < m * D; idx += blockDim.x) {
    const int i = idx / D, c = idx - i * D;
    dq[d.qoff(b, i0 + i, h) + c] += sdQ[i * ld + c];
  }
}

// dK and dV accumulate in registers: element idx = threadIdx.x + r * kAttnThreads of the [kTile, D] tile is
// thread threadIdx.x's r-th (kPer >= kTile * D / kAttnThreads). In shared memory they would take two more tiles:
// 105 KiB at D = 128, more than the 99 KiB of sm_86/sm_89 GPUs; this way the kernel needs 73 KiB there.
template <class Act, int kPer>
__global__ void __launch_bounds__(kAttnThreads)
    attn_bwd_dkv_kernel(float* dk, float* dv, const float* dout, const Act* q, const Act* k, const Act* v,
                        const float* lse, const float* delta, Dims d) {
  extern __shared__ float smem[];
  const int ld = d.ld, D = d.D;
  float* sK = smem;
  float* sV = sK + kTile * ld;
  float* sQ = sV + kTile * ld;
  float* sdO = sQ + kTile * ld;
  float* sP = sdO + kTile * ld;
  float* sdS = sP + kTile * kLdS;
  float* sLse = sdS + kTile * kLdS;
  float* sDelta = sLse + kTile;

  const KeyBlock blk = key_block(d, d.ntiles);
  const int b = blk.b, kvh = blk.kvh, kt = blk.tile;
  const int j0 = kt * kTile, kn = d.rows(kt);

  load_tile(sK, ld, k + d.koff(b, j0, kvh), d.ldk, kn, D);
  load_tile(sV, ld, v + d.koff(b, j0, kvh), d.ldk, kn, D);
  float acc_k[kPer], acc_v[kPer];
#pragma unroll
  for (int r = 0; r < kPer; ++r) acc_k[r] = 0.0f, acc_v[r] = 0.0f;
  for (int g = 0; g < d.G; ++g) {
    const int h = kvh * d.G + g;
    for (int qt = kt; qt < d.ntiles; ++qt) {
      const int i0 = qt * kTile, m = d.rows(qt);
      __syncthreads();  // readers of sQ, sdO, sP, sdS, sLse, sDelta from the previous step are done
      load_tile(sQ, ld, q + d.qoff(b, i0, h), d.ldq, m, D);
      load_tile(sdO, ld, dout + d.qoff(b, i0, h), d.ldq, m, D);
      load_row_stats(sLse, sDelta, lse, delta, d, b, h, i0, m, kTile);
      __syncthreads();
      attn_probs_bwd(sP, sdS, sQ, sdO, sK, sV, sLse, sDelta, i0, m, j0, kn, ld, D, d.scale);
      __syncthreads();
#pragma unroll
      for (int r = 0; r < kPer; ++r) {  // dV += P^T dO ; dK += dS^T Q
        const int idx = threadIdx.x + r * kAttnThreads;
        if (idx >= kTile * D) break;
        const int j = idx / D, c = idx - j * D;
        float av = acc_v[r], ak = acc_k[r];
        for (int i = 0; i < m; ++i) {
          av = fmaf(sP[i * kLdS + j], sdO[i * ld + c], av);
          ak = fmaf(sdS[i * kLdS + j], sQ[i * ld + c], ak);
        }
        acc_v[r] = av;
        acc_k[r] = ak;
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kPer; ++r) {
    const int idx = threadIdx.x + r * kAttnThreads;
    if (idx >= kn * D) break;
    const int j = idx / D, c = idx - j * D;
    const int64_t o = d.koff(b, j0 + j, kvh) + c;
    dk[o] += acc_k[r];
    dv[o] += acc_v[r];
  }
}

// Dynamic shared memory: `tiles` [kTile, D+1] tiles, `scores` [kTile, kTile+1] tiles, `vecs` [kTile] vectors.
size_t smem_bytes(int D, int tiles, int scores, int vecs) {
  return sizeof(float) * (static_cast<size_t>(tiles) * kTile * (D + 1) + static_cast<size_t>(scores) * kTile * kLdS +
                          static_cast<size_t>(vecs) * kTile);
}

}  // namespace

namespace detail {
bool use_flash_attention(int D) {  // the variable is read per call: the tests switch it
  return !env_is("ONESTEP_ATTENTION", "tiles") && D % 16 == 0 && D <= 128;
}
}  // namespace detail

namespace {
template <class Act>  // the storage of q, k, v and out: float, or __nv_bfloat16 (bf16 operand storage)
void attention_forward_as(Act* out, float* lse, const Act* q, const Act* k, const Act* v, int B, int T, int H, int KV,
                          int D, cudaStream_t stream) {
  if (B <= 0 || T <= 0 || H <= 0 || D <= 0) return;
  check_dims(H, KV, "attention_forward");
  const Dims d = make_dims(B, T, H, KV, D);
  if (current_matmul_precision() == MatmulPrecision::bf16 && bf16_attention_fits(D))
    return use_flash_attention(D) ? attention_forward_flash(out, lse, q, k, v, d, stream)
                                  : attention_forward_bf16(out, lse, q, k, v, d, stream);
  launch_tasks(attn_fwd_kernel<Act>, d.query_tasks(d.ntiles), kAttnThreads, smem_bytes(D, 4, 1, 3), stream,
               "attention_forward", D, out, lse, q, k, v, d);
}

template <class Act>
void attention_backward_as(float* dq, float* dk, float* dv, const float* dout, const Act* q, const Act* k, const Act* v,
                           const Act* out, const float* lse, int B, int T, int H, int KV, int D, cudaStream_t stream) {
  if (B <= 0 || T <= 0 || H <= 0 || D <= 0) return;
  check_dims(H, KV, "attention_backward");
  const Dims d = make_dims(B, T, H, KV, D);
  const int64_t rows = static_cast<int64_t>(B) * T * H;
  const bool bf16_kernels = current_matmul_precision() == MatmulPrecision::bf16 && bf16_attention_fits(D);
  const bool flash = bf16_kernels && use_flash_attention(D);
  detail::Scratch delta(sizeof(float) * static_cast<size_t>(rows), stream);
  detail::Scratch dout_bf16(flash ? sizeof(__nv_bfloat16) * static_cast<size_t>(rows) * D : 0, stream);
  profiled("attention_backward: delta", [&] {
    attn_delta_kernel<<<detail::grid_for(rows * 32), detail::kThreads, 0, stream>>>(
        delta.as<float>(), dout_bf16.as<__nv_bfloat16>(), dout, out, d);
    ONESTEP_CUDA_LAUNCHED("attention_backward(delta)");
  });
  if (flash)
    return attention_backward_flash(dq, dk, dv, dout_bf16.as<__nv_bfloat16>(), q, k, v, lse, delta.as<float>(), d,
                                    stream);
  if (bf16_kernels) return attention_backward_bf16(dq, dk, dv, dout, q, k, v, lse, delta.as<float>(), d, stream);

  const float* dl = delta.as<float>();
  launch_tasks(attn_bwd_dq_kernel<Act>, d.query_tasks(d.ntiles), kAttnThreads, smem_bytes(D, 5, 2, 2), stream,
               "attention_backward(dq)", D, dq, dout, q, k, v, lse, dl, d);
  // The dk/dv accumulators' registers per thread: kTile * D / kAttnThreads = D / 8 each, in three sizes.
  auto dkv = [&](auto kernel) {
    launch_tasks(kernel, d.key_tasks(d.ntiles), kAttnThreads, smem_bytes(D, 4, 2, 2), stream,
                 "attention_backward(dkv)", D, dk, dv, dout, q, k, v, lse, dl, d);
  };
  static_assert(kTile * 8 == kAttnThreads, "kPer = D / 8 below");
  if (D <= 64) dkv(attn_bwd_dkv_kernel<Act, 8>);
  else if (D <= 128) dkv(attn_bwd_dkv_kernel<Act, 16>);
  else if (D <= kMaxHeadDim) dkv(attn_bwd_dkv_kernel<Act, kMaxHeadDim / 8>);
  else throw std::runtime_error("attention_backward: head dim " + std::to_string(D) + ", the fp32 kernels take up to " +
                                std::to_string(kMaxHeadDim));
}
}  // namespace

void attention_forward(float* out, float* lse, const float* q, const float* k, const float* v, int B, int T, int H,
                       int KV, int D, cudaStream_t stream) {
  attention_forward_as(out, lse, q, k, v, B, T, H, KV, D, stream);
}
void attention_forward(onestep::bf16* out, float* lse, const onestep::bf16* q, const onestep::bf16* k,
                       const onestep::bf16* v, int B, int T, int H, int KV, int D, cudaStream_t stream) {
  attention_forward_as(device_type(out), lse, device_type(q), device_type(k), device_type(v), B, T, H, KV, D, stream);
}
void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                        const float* v, const float* out, const float* lse, int B, int T, int H, int KV, int D,
                        cudaStream_t stream) {
  attention_backward_as(dq, dk, dv, dout, q, k, v, out, lse, B, T, H, KV, D, stream);
}
void attention_backward(float* dq, float* dk, float* dv, const float* dout, const onestep::bf16* q,
                        const onestep::bf16* k, const onestep::bf16* v, const onestep::bf16* out, const float* lse,
                        int B, int T, int H, int KV, int D, cudaStream_t stream) {
  attention_backward_as(dq, dk, dv, dout, device_type(q), device_type(k), device_type(v), device_type(out), lse, B, T,
                        H, KV, D, stream);
}

}  // namespace onestep::cuda
