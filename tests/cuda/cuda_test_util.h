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
#include <string>
#include <vector>

#include "../kernels/kernel_test_util.h"
#include "../model/cpu_bf16_ops.h"
#include "core/buffer.h"
#include "kernels/cuda/ops_cuda.h"

// Every test starts with this: without a device it skips with the message ctest looks for.
#define REQUIRE_GPU()                                            \
  if (onestep::device_memory::gpu_count() == 0) GTEST_SKIP() \
      << "no CUDA device: test skipped (needs an NVIDIA GPU)"

namespace cuda_test {

// Device memory for a test: core/buffer.h's Buffer on the GPU, zero-filled or copied from a host vector;
// host() copies back (after the queued kernels, all on the default stream).
template <class T>
class Dev : public onestep::Buffer<T> {
 public:
  explicit Dev(size_t n) : onestep::Buffer<T>(onestep::Device::cuda) { this->zeros(n); }
  explicit Dev(const std::vector<T>& h) : onestep::Buffer<T>(onestep::Device::cuda) { upload(h); }
  using onestep::Buffer<T>::upload;
  void upload(const std::vector<T>& h) { upload(h.data(), h.size()); }
  std::vector<T> host() const { return this->to_host(); }
  T* get() { return this->data(); }
};

// Random data and the tolerance check are the CPU kernel tests' (got = GPU, want = CPU reference).
using kt::expect_close;
using kt::randn;

// bfloat16 rounding on the host (core/bf16.h: round to nearest, ties to even), returned as floats: the reference
// for the GPU's bf16 matmul operands.
inline std::vector<float> round_to_bf16(const std::vector<float>& x) {
  return onestep::test::rounded(x.data(), static_cast<int64_t>(x.size()));
}

inline void expect_bitwise_equal(const std::vector<float>& a, const std::vector<float>& b,
                                 const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  EXPECT_EQ(std::memcmp(a.data(), b.data(), sizeof(float) * a.size()), 0) << what << ": not bit-identical";
}

}  // namespace cuda_test
