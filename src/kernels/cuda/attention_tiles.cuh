// Private to src/kernels/cuda: what the two attention implementations share (attention.cu: fp32 on the CUDA
// cores, the reference; attention_bf16.cu: bf16 operands on the tensor cores, used when train.precision = bf16).
// Both tile the sequence in kTile rows and keys, one block per (batch, head, query tile) forward and the same
// two backward kernels (dq per query tile; dk, dv per kv head and key tile), with no T x T matrix in memory.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <climits>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "kernels/cuda/common.cuh"

namespace onestep::cuda::detail {

constexpr int kTile = 32;          // query rows and keys per tile (= warp size: in the softmax, lane j is key j)
constexpr int kAttnThreads = 256;  // 8 warps

struct Dims {
  int B, T, H, KV, D, G, ntiles, ld;  // ld = D + 1: padded row stride of the fp32 kernels' [kTile, D] tiles
  int64_t ldq, ldk;                   // global row strides: H*D and KV*D
  float scale;
  __device__ int64_t qoff(int b, int t, int h) const {
    return (static_cast<int64_t>(b) * T + t) * ldq + static_cast<int64_t>(h) * D;
  }
  __device__ int64_t koff(int b, int t, int kvh) const {
    return (static_cast<int64_t>(b) * T + t) * ldk + static_cast<int64_t>(kvh) * D;
  }
  __device__ int64_t loff(int b, int h, int t) const { return (static_cast<int64_t>(b) * H + h) * T + t; }
  __device__ int rows(int tile) const { return min(kTile, T - tile * kTile); }
  // Blocks of a launch with `ntiles` tiles per sequence: one per (batch, head) or (batch, kv head) and tile.
  int64_t query_tasks(int ntiles) const { return static_cast<int64_t>(B) * H * ntiles; }
  int64_t key_tasks(int ntiles) const { return static_cast<int64_t>(B) * KV * ntiles; }
};

inline Dims make_dims(int B, int T, int H, int KV, int D) {
  Dims d;
  d.B = B;
  d.T = T;
  d.H = H;
  d.KV = KV;
  d.D = D;
  d.G = H / KV;
  d.ntiles = (T + kTile - 1) / kTile;
  d.ld = D + 1;
  d.ldq = static_cast<int64_t>(H) * D;
  d.ldk = static_cast<int64_t>(KV) * D;
  d.scale = 1.0f / std::sqrt(static_cast<float>(D));
  return d;
}

// Every attention kernel's launch: `blocks` tasks of `threads` threads with `smem` bytes of dynamic shared memory,
// checked. The kernel is opted in to that much shared memory first; a device with less, or more blocks than the
// grid's x dimension holds (2^31 - 1), is refused with an error naming the kernel.
template <class... Params, class... Args>
inline void launch_tasks(void (*kernel)(Params...), int64_t blocks, int threads, size_t smem, cudaStream_t stream,
                         const char* name, int D, const Args&... args) {
  int dev = 0, optin = 0;
  ONESTEP_CUDA_CHECK(cudaGetDevice(&dev));
  ONESTEP_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  if (smem > static_cast<size_t>(optin))
    throw std::runtime_error(std::string(name) + ": head dim " + std::to_string(D) + " needs " + std::to_string(smem) +
                             " bytes of shared memory per block, the device offers " + std::to_string(optin));
  if (blocks > INT32_MAX)
    throw std::runtime_error(std::string(name) + ": " + std::to_string(blocks) + " blocks, more than a grid holds");
  ONESTEP_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  kernel<<<static_cast<unsigned>(blocks), threads, smem, stream>>>(args...);
  ONESTEP_CUDA_LAUNCHED(name);
}

inline void check_dims(int H, int KV, const char* name) {
  if (KV <= 0 || H % KV != 0)
    throw std::runtime_error(std::string(name) + ": H must be a positive multiple of KV");
}

// The block's task. Forward and dq: (batch, head, query tile), the last query tiles (the longest rows) first.
// dk/dv: (batch, kv head, key tile), the first key tiles (which the most query tiles see) first.
struct QueryBlock {
  int b, h, kvh, tile;
};
__device__ inline QueryBlock query_block(const Dims& d, int ntiles) {
  const int task = blockIdx.x, bh = task / ntiles, h = bh % d.H;
  return {bh / d.H, h, h / d.G, ntiles - 1 - task % ntiles};
}
struct KeyBlock {
  int b, kvh, tile;
};
__device__ inline KeyBlock key_block(const Dims& d, int ntiles) {
  const int task = blockIdx.x, bk = task / ntiles;
  return {bk / d.KV, bk % d.KV, task % ntiles};
}

// s_lse[i], s_delta[i] = lse, delta of query row i0 + i for i < valid, 0 up to `rows`; by the whole block.
__device__ inline void load_row_stats(float* s_lse, float* s_delta, const float* lse, const float* delta,
                                      const Dims& d, int b, int h, int i0, int valid, int rows) {
  for (int i = threadIdx.x; i < rows; i += blockDim.x) {
    s_lse[i] = i < valid ? lse[d.loff(b, h, i0 + i)] : 0.0f;
    s_delta[i] = i < valid ? delta[d.loff(b, h, i0 + i)] : 0.0f;
  }
}

// Bump allocation of dynamic shared memory for the bf16 kernels; every array starts on a 128-byte boundary (WMMA
// wants 32). With a null base it only counts: each kernel's layout is one __host__ __device__ function, which the
// kernel calls on its shared memory and the host on a null base for the launch size.
struct Carve {
  unsigned char* p;
  size_t used = 0;
  template <class T>
  __host__ __device__ T* take(size_t n) {
    T* out = p ? reinterpret_cast<T*>(p + used) : nullptr;
    used += (n * sizeof(T) + 127) / 128 * 128;
    return out;
  }
};

// dst[r, c] (row stride ldh) = bf16(src[r * lds + c]) for r < valid, 0 for valid <= r < rows; by the whole block.
// src is fp32 (rounded here) or bf16 (copied).
template <class Src>
__device__ inline void load_rows_bf16(__nv_bfloat16* dst, int ldh, const Src* src, int64_t lds, int valid, int rows,
                                      int D) {
  for (int idx = threadIdx.x; idx < rows * D; idx += blockDim.x) {
    const int r = idx / D, c = idx - r * D;
    dst[r * ldh + c] = r < valid ? to_bf16_value(src[r * lds + c]) : __float2bfloat16_rn(0.0f);
  }
}

// The bf16 tensor-core kernels, for head dims that are multiples of 16: the FlashAttention-2-style kernels
// (attention_flash.cu, head dims up to 128; the default) and the tile kernels (attention_bf16.cu, up to 256; chosen
// beyond 128 and with ONESTEP_ATTENTION=tiles). On an H100 the flash kernels gave 1.55x the tiles' tokens/s on
// smollm2-360m (bench/gpu/h100_2026-11-28_run2.md).
inline bool bf16_attention_fits(int D) { return D % 16 == 0 && D <= 256; }
bool use_flash_attention(int D);  // D fits and ONESTEP_ATTENTION is not "tiles"
void require_tensor_cores(const char* name);  // throws on a GPU older than sm_80
// Act, the storage of q, k, v and out, is float or __nv_bfloat16 (bf16 operand storage); both are instantiated.
template <class Act>
void attention_forward_bf16(Act* out, float* lse, const Act* q, const Act* k, const Act* v, const Dims& d,
                            cudaStream_t stream);
template <class Act>
void attention_backward_bf16(float* dq, float* dk, float* dv, const float* dout, const Act* q, const Act* k,
                             const Act* v, const float* lse, const float* delta, const Dims& d, cudaStream_t stream);
template <class Act>
void attention_forward_flash(Act* out, float* lse, const Act* q, const Act* k, const Act* v, const Dims& d,
                             cudaStream_t stream);
// dout rounded to bf16 (attn_delta_kernel writes it beside delta): the flash kernels stream it as they stream q.
template <class Act>
void attention_backward_flash(float* dq, float* dk, float* dv, const __nv_bfloat16* dout, const Act* q,
                              const Act* k, const Act* v, const float* lse, const float* delta, const Dims& d,
                              cudaStream_t stream);

}  // namespace onestep::cuda::detail
