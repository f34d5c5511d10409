#include "gpu/gpu_info.h"

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "core/buffer.h"
#include "core/error.h"
#include "core/rng.h"
#include "core/timer.h"

namespace onestep {

namespace {
// Dense (no sparsity) bf16 tensor-core peaks of NVIDIA's data sheets, matched on the product name.
double bf16_peak_tflops(const std::string& name) {
  auto has = [&](const char* s) { return name.find(s) != std::string::npos; };
  if (has("H200")) return 989.4;
  if (has("H100") && has("PCIe")) return 756.5;
  if (has("H100") && has("NVL")) return 835.0;
  if (has("H100")) return 989.4;  // SXM5 (reported as "H100 80GB HBM3")
  if (has("A100")) return 312.0;
  if (has("L40S")) return 362.1;
  return 0.0;
}
void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) internal_error(std::string(what) + ": " + cudaGetErrorString(e));
}
}  // namespace

GpuInfo gpu_info() {
  int dev = 0;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  cudaDeviceProp p{};
  check(cudaGetDeviceProperties(&p, dev), "cudaGetDeviceProperties");
  GpuInfo g;
  g.name = p.name;
  g.sm_count = p.multiProcessorCount;
  g.cc_major = p.major, g.cc_minor = p.minor;
  g.memory_mib = static_cast<double>(p.totalGlobalMem) / 1048576.0;
  g.bf16_dense_tflops = bf16_peak_tflops(g.name);
  return g;
}

double gpu_memory_used_mib() {
  size_t free_b = 0, total_b = 0;
  check(cudaMemGetInfo(&free_b, &total_b), "cudaMemGetInfo");
  return static_cast<double>(total_b - free_b) / 1048576.0;
}

double gpu_scratch_peak_mib(bool reset) {
  int dev = 0;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  cudaMemPool_t pool = nullptr;
  check(cudaDeviceGetDefaultMemPool(&pool, dev), "cudaDeviceGetDefaultMemPool");
  std::uint64_t high = 0;  // cuuint64_t
  check(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemHigh, &high), "cudaMemPoolGetAttribute");
  if (reset) {
    std::uint64_t zero = 0;
    check(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrUsedMemHigh, &zero), "cudaMemPoolSetAttribute");
  }
  return static_cast<double>(high) / 1048576.0;
}

double cublas_sgemm_tflops(int n, int reps) {
  // Random operands: products of zeros run faster than real data (device/METHOD.md).
  const size_t nn = static_cast<size_t>(n) * n;
  std::vector<float> host(nn);
  CounterRng rng(1, RngStream::test, 0);
  for (auto& v : host) v = rng.normal();
  Buffer<float> a(Device::cuda), b(Device::cuda), c(Device::cuda);
  a = host, b = host, c.zeros(nn);
  cublasHandle_t h = nullptr;
  if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) internal_error("cublasCreate failed");
  cublasSetMathMode(h, CUBLAS_DEFAULT_MATH);  // as kernels/cuda/matmul.cu: fp32, no TF32
  const float one = 1.f, zero = 0.f;
  std::vector<double> rates;
  for (int r = 0; r <= reps; ++r) {
    check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
    Stopwatch sw;
    cublasSgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, n, n, n, &one, a.data(), n, b.data(), n, &zero, c.data(), n);
    check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
    if (r > 0) rates.push_back(2.0 * n * n * static_cast<double>(n) / sw.seconds() / 1e12);  // r = 0 warms up
  }
  cublasDestroy(h);
  return *std::max_element(rates.begin(), rates.end());
}

}  // namespace onestep
