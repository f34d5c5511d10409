// Rotary position embedding, Hugging Face rotate_half convention (see kernels/cpu/rope.cpp):
//   out[i]       = x[i] * cos(a_i) - x[i + D/2] * sin(a_i)
//   out[i + D/2] = x[i + D/2] * cos(a_i) + x[i] * sin(a_i),    a_i = t * theta^(-2i/D), 0 <= i < D/2.
// The cos/sin table [T, D/2] is computed on the host in double, exactly as the CPU kernel computes it,
// uploaded once and cached per (device, T, D, theta); tables are never freed (like the CPU cache).
#include <cmath>
#include <map>
#include <mutex>
#include <tuple>
#include <vector>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops_cuda.h"

namespace onestep::cuda {

namespace {
struct DeviceRopeTable {
  float* cos = nullptr;  // [T, D/2], device
  float* sin = nullptr;
};

DeviceRopeTable rope_table(int T, int D, float theta) {
  static std::mutex mu;
  static std::map<std::tuple<int, int, int, float>, DeviceRopeTable> cache;
  int dev = 0;
  ONESTEP_CUDA_CHECK(cudaGetDevice(&dev));
  std::lock_guard<std::mutex> lock(mu);
  const auto key = std::make_tuple(dev, T, D, theta);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  const int half = D / 2;
  const size_t n = static_cast<size_t>(T) * half;
  std::vector<float> c(n), s(n);
  for (int i = 0; i < half; ++i) {
    const double inv_freq = std::pow(static_cast<double>(theta), -2.0 * i / static_cast<double>(D));
    for (int t = 0; t < T; ++t) {
      const double a = static_cast<double>(t) * inv_freq;
      c[static_cast<size_t>(t) * half + i] = static_cast<float>(std::cos(a));
      s[static_cast<size_t>(t) * half + i] = static_cast<float>(std::sin(a));
    }
  }
  DeviceRopeTable tab;
  ONESTEP_CUDA_CHECK(cudaMalloc(&tab.cos, sizeof(float) * (n > 0 ? n : 1)));
  ONESTEP_CUDA_CHECK(cudaMalloc(&tab.sin, sizeof(float) * (n > 0 ? n : 1)));
  if (n > 0) {
    ONESTEP_CUDA_CHECK(cudaMemcpy(tab.cos, c.data(), sizeof(float) * n, cudaMemcpyHostToDevice));
    ONESTEP_CUDA_CHECK(cudaMemcpy(tab.sin, s.data(), sizeof(float) * n, cudaMemcpyHostToDevice));
  }
  // A pageable cudaMemcpy may return before the DMA lands; kernels on other streams must see the table.
  ONESTEP_CUDA_CHECK(cudaDeviceSynchronize());
  cache.emplace(key, tab);
  return tab;
}

// One thread per (row, head, i < D/2) pair; x and out may be equal (each pair is read, then written, by
// the same thread). Act: float, or __nv_bfloat16 (bf16 operand storage: the pair is rotated in fp32, then rounded).
template <class Act>
__global__ void rope_fwd_kernel(Act* out, const Act* x, const float* cs, const float* sn, int64_t total, int T,
                                int H, int D, int half) {
  for (int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; p < total;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int i = static_cast<int>(p % half);
    const int64_t rh = p / half;  // (row, head)
    const int t = static_cast<int>((rh / H) % T);
    const int64_t off = rh * D;
    const float c = cs[static_cast<int64_t>(t) * half + i], s = sn[static_cast<int64_t>(t) * half + i];
    const float x1 = detail::load_value(x + off + i), x2 = detail::load_value(x + off + i + half);
    detail::store_value(out + off + i, x1 * c - x2 * s);
    detail::store_value(out + off + i + half, x2 * c + x1 * s);
  }
}

template <class Grad>  // dx: float, or __nv_bfloat16 (accumulated in fp32, rounded once per call)
__global__ void rope_bwd_kernel(Grad* dx, const float* dout, const float* cs, const float* sn, int64_t total, int T,
                                int H, int D, int half) {
  for (int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; p < total;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int i = static_cast<int>(p % half);
    const int64_t rh = p / half;
    const int t = static_cast<int>((rh / H) % T);
    const int64_t off = rh * D;
    const float c = cs[static_cast<int64_t>(t) * half + i], s = sn[static_cast<int64_t>(t) * half + i];
    const float g1 = dout[off + i], g2 = dout[off + i + half];
    detail::store_value(dx + off + i, detail::load_value(dx + off + i) + (g1 * c + g2 * s));
    detail::store_value(dx + off + i + half, detail::load_value(dx + off + i + half) + (g2 * c - g1 * s));
  }
}

template <class Act>
void rope_forward_as(Act* out, const Act* x, int B, int T, int H, int D, float theta, cudaStream_t stream) {
  const int half = D / 2;
  const int64_t total = static_cast<int64_t>(B) * T * H * half;
  if (total <= 0) return;
  const DeviceRopeTable tab = rope_table(T, D, theta);
  rope_fwd_kernel<<<detail::grid_for(total), detail::kThreads, 0, stream>>>(out, x, tab.cos, tab.sin, total, T, H,
                                                                            D, half);
  ONESTEP_CUDA_LAUNCHED("rope_forward");
}
}  // namespace

void rope_forward(float* out, const float* x, int B, int T, int H, int D, float theta, cudaStream_t stream) {
  rope_forward_as(out, x, B, T, H, D, theta, stream);
}
void rope_forward(onestep::bf16* out, const onestep::bf16* x, int B, int T, int H, int D, float theta,
                  cudaStream_t stream) {
  rope_forward_as(detail::device_type(out), detail::device_type(x), B, T, H, D, theta, stream);
}

namespace {
template <class Grad>
void rope_backward_as(Grad* dx, const float* dout, int B, int T, int H, int D, float theta, cudaStream_t stream) {
  const int half = D / 2;
  const int64_t total = static_cast<int64_t>(B) * T * H * half;
  if (total <= 0) return;
  const DeviceRopeTable tab = rope_table(T, D, theta);
  rope_bwd_kernel<<<detail::grid_for(total), detail::kThreads, 0, stream>>>(dx, dout, tab.cos, tab.sin, total, T, H,
                                                                            D, half);
  ONESTEP_CUDA_LAUNCHED("rope_backward");
}
}  // namespace

void rope_backward(float* dx, const float* dout, int B, int T, int H, int D, float theta, cudaStream_t stream) {
  rope_backward_as(dx, dout, B, T, H, D, theta, stream);
}
void rope_backward(onestep::bf16* dx, const float* dout, int B, int T, int H, int D, float theta, cudaStream_t stream) {
  rope_backward_as(detail::device_type(dx), dout, B, T, H, D, theta, stream);
}

}  // namespace onestep::cuda
