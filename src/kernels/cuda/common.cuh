// Private to src/kernels/cuda: error checks, launch sizes, deterministic reductions, stream-ordered scratch.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>

#include "core/bf16.h"

namespace onestep::cuda::detail {

[[noreturn]] inline void fail(cudaError_t e, const char* what, const char* file, int line) {
  throw std::runtime_error(std::string("CUDA error in ") + what + " (" + file + ":" + std::to_string(line) +
                           "): " + cudaGetErrorName(e) + ": " + cudaGetErrorString(e));
}
inline void check(cudaError_t e, const char* what, const char* file, int line) {
  if (e != cudaSuccess) fail(e, what, file, line);
}
#define ONESTEP_CUDA_CHECK(expr) ::onestep::cuda::detail::check((expr), #expr, __FILE__, __LINE__)
// After a <<<...>>> launch: reports launch-configuration errors (asynchronous faults surface later).
#define ONESTEP_CUDA_LAUNCHED(name) ::onestep::cuda::detail::check(cudaGetLastError(), name, __FILE__, __LINE__)

inline constexpr int kThreads = 256;

// Activations in either storage (model/stage.h: OperandStorage): the host's bf16 is CUDA's __nv_bfloat16 (same
// bits). Kernels templated on the element type read and write through these; arithmetic stays fp32.
inline __nv_bfloat16* device_type(onestep::bf16* p) { return reinterpret_cast<__nv_bfloat16*>(p); }
inline const __nv_bfloat16* device_type(const onestep::bf16* p) { return reinterpret_cast<const __nv_bfloat16*>(p); }
inline float* device_type(float* p) { return p; }
inline const float* device_type(const float* p) { return p; }
__device__ inline void store_value(float* p, float x) { *p = x; }
__device__ inline void store_value(__nv_bfloat16* p, float x) { *p = __float2bfloat16_rn(x); }
__device__ inline float load_value(const float* p) { return *p; }
__device__ inline float load_value(const __nv_bfloat16* p) { return __bfloat162float(*p); }
__device__ inline __nv_bfloat16 to_bf16_value(float x) { return __float2bfloat16_rn(x); }
__device__ inline __nv_bfloat16 to_bf16_value(__nv_bfloat16 x) { return x; }

// Whether every pointer is 16-byte aligned: the condition of the kernels' 16-byte loads and stores.
inline bool aligned16(std::initializer_list<const void*> ptrs) {
  for (const void* p : ptrs)
    if (reinterpret_cast<uintptr_t>(p) % 16) return false;
  return true;
}
// 8 consecutive elements at p (16-byte aligned) widened to float, in 16-byte loads (one of bf16, two of fp32);
// store8 writes them back (rounded to nearest even where T is bf16), in 16-byte stores.
template <class T>
struct alignas(16) Piece16 {
  T v[16 / sizeof(T)];
};
template <class T>
__device__ inline void load8(float (&x)[8], const T* p) {
  constexpr int kPer = 16 / sizeof(T);
#pragma unroll
  for (int h = 0; h < 8 / kPer; ++h) {
    const Piece16<T> w = reinterpret_cast<const Piece16<T>*>(p)[h];
#pragma unroll
    for (int e = 0; e < kPer; ++e) x[h * kPer + e] = load_value(&w.v[e]);
  }
}
template <class T>
__device__ inline void store8(T* p, const float (&x)[8]) {
  constexpr int kPer = 16 / sizeof(T);
#pragma unroll
  for (int h = 0; h < 8 / kPer; ++h) {
    Piece16<T> w;
#pragma unroll
    for (int e = 0; e < kPer; ++e) store_value(&w.v[e], x[h * kPer + e]);
    reinterpret_cast<Piece16<T>*>(p)[h] = w;
  }
}

// Blocks for a grid-stride loop over n elements: a function of n only (never of the device), capped.
inline unsigned grid_for(int64_t n, int threads = kThreads, int64_t max_blocks = 4096) {
  int64_t b = (n + threads - 1) / threads;
  if (b < 1) b = 1;
  if (b > max_blocks) b = max_blocks;
  return static_cast<unsigned>(b);
}

// The launch pattern of the element-wise kernels (add / scale, the optimizer updates, the delay
// corrections): f(i) for i in [0, n) over a grid-stride loop, the grid fixed by n alone (grid_for). f is a __device__ lambda (nvcc --extended-lambda) capturing by value; each
// element is computed by one thread with exactly f's expression, so the result does not depend on the grid.
template <class F>
__global__ void for_each_element_kernel(int64_t n, F f) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    f(i);
}
template <class F>
void for_each_element(int64_t n, cudaStream_t stream, const char* name, F f) {
  if (n <= 0) return;
  for_each_element_kernel<<<grid_for(n), kThreads, 0, stream>>>(n, f);
  check(cudaGetLastError(), name, __FILE__, __LINE__);
}

// f() once, on one device thread: scalars derived on the device (e.g. from a device-side norm) without a
// round trip to the host.
template <class F>
__global__ void single_thread_kernel(F f) {
  f();
}
template <class F>
void run_single(cudaStream_t stream, const char* name, F f) {
  single_thread_kernel<<<1, 1, 0, stream>>>(f);
  check(cudaGetLastError(), name, __FILE__, __LINE__);
}

// Fixed-order reductions: a butterfly within each warp, then warp 0 combines the warp results in order.
// The result (returned to every thread) depends only on blockDim, never on timing.
template <class T>
__device__ inline T warp_sum(T x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}
__device__ inline float warp_max(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}
// blockDim.x must be a multiple of 32 and at most 1024. All threads must call it.
template <class T>
__device__ inline T block_sum(T x) {
  __shared__ T part[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  x = warp_sum(x);
  __syncthreads();  // part[] may still be read by a previous call
  if (lane == 0) part[warp] = x;
  __syncthreads();
  T y = lane < nwarps ? part[lane] : T(0);
  if (warp == 0) y = warp_sum(y);
  if (threadIdx.x == 0) part[0] = y;
  __syncthreads();
  return part[0];
}

// Online softmax state (max m, sum s of exp(x - m)); combine is exact up to rounding and safe for -inf.
struct MaxSum {
  float m, s;
};
__device__ inline MaxSum ms_combine(MaxSum a, MaxSum b) {
  const float mn = fmaxf(a.m, b.m);
  if (mn == -INFINITY) return {mn, 0.0f};
  return {mn, a.s * expf(a.m - mn) + b.s * expf(b.m - mn)};
}
__device__ inline MaxSum warp_maxsum(MaxSum v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    MaxSum w{__shfl_xor_sync(0xffffffffu, v.m, o), __shfl_xor_sync(0xffffffffu, v.s, o)};
    v = ms_combine(v, w);
  }
  return v;
}
__device__ inline MaxSum block_maxsum(MaxSum v) {
  __shared__ float pm[32], ps[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  v = warp_maxsum(v);
  __syncthreads();
  if (lane == 0) {
    pm[warp] = v.m;
    ps[warp] = v.s;
  }
  __syncthreads();
  MaxSum w = lane < nwarps ? MaxSum{pm[lane], ps[lane]} : MaxSum{-INFINITY, 0.0f};
  if (warp == 0) w = warp_maxsum(w);
  if (threadIdx.x == 0) {
    pm[0] = w.m;
    ps[0] = w.s;
  }
  __syncthreads();
  return {pm[0], ps[0]};
}

// Stream-ordered scratch memory (cudaMallocAsync / cudaFreeAsync on the same stream).
class Scratch {
 public:
  Scratch(size_t bytes, cudaStream_t s) : stream_(s) {
    if (bytes > 0) ONESTEP_CUDA_CHECK(cudaMallocAsync(&p_, bytes, s));
  }
  ~Scratch() {
    if (p_) cudaFreeAsync(p_, stream_);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  template <class T>
  T* as() const {
    return static_cast<T*>(p_);
  }

 private:
  void* p_ = nullptr;
  cudaStream_t stream_;
};

}  // namespace onestep::cuda::detail
