// Shared by the tests of tests/cuda: the skip without a device, device buffers, random inputs and the
// element-wise comparison.
#pragma once
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "../kernels/kernel_test_util.h"
#include "kernels/cuda/ops_cuda.h"

// Every test starts with this: without a device it skips with the message ctest looks for.
#define REQUIRE_GPU()                                       \
  if (!onestep::cuda::cuda_device_available()) GTEST_SKIP() \
      << "no CUDA device: test skipped (needs an NVIDIA GPU)"

namespace cuda_test {

inline void cuda_ok(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

// A device copy of a host vector; host() synchronises and copies back.
template <class T>
class Dev {
 public:
  explicit Dev(size_t n) : n_(n) {
    cuda_ok(cudaMalloc(reinterpret_cast<void**>(&p_), sizeof(T) * std::max<size_t>(n, 1)), "cudaMalloc");
    cuda_ok(cudaMemset(p_, 0, sizeof(T) * std::max<size_t>(n, 1)), "cudaMemset");
  }
  explicit Dev(const std::vector<T>& h) : Dev(h.size()) { upload(h); }
  ~Dev() { cudaFree(p_); }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  void upload(const std::vector<T>& h) { upload(h.data(), h.size()); }
  void upload(const T* h, size_t n) {
    cuda_ok(cudaMemcpy(p_, h, sizeof(T) * n, cudaMemcpyHostToDevice), "upload");
  }
  std::vector<T> host() const {
    cuda_ok(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
    std::vector<T> h(n_);
    cuda_ok(cudaMemcpy(h.data(), p_, sizeof(T) * n_, cudaMemcpyDeviceToHost), "download");
    return h;
  }
  T* get() const { return p_; }

 private:
  T* p_ = nullptr;
  size_t n_;
};

// Random data and the tolerance check are the CPU kernel tests' (got = GPU, want = CPU reference).
using kt::expect_close;
using kt::randn;

inline void expect_bitwise_equal(const std::vector<float>& a, const std::vector<float>& b,
                                 const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  EXPECT_EQ(std::memcmp(a.data(), b.data(), sizeof(float) * a.size()), 0) << what << ": not bit-identical";
}

}  // namespace cuda_test
