// What `onestep bench` reports about the GPU: its name and memory, the dense bf16 tensor-core peak that MFU is
// measured against (issue #5), the fp32 sgemm rate cuBLAS reaches on it in the same run, and memory in use.
#pragma once
#include <string>

namespace onestep {

struct GpuInfo {
  std::string name;
  int sm_count = 0, cc_major = 0, cc_minor = 0;
  double memory_mib = 0;
  double bf16_dense_tflops = 0;  // from NVIDIA's data sheets by product name; 0 when the product is not known
};
GpuInfo gpu_info();                                // the current device
double gpu_memory_used_mib();                      // total - free, as the driver reports it
// The high-water mark of the current GPU's stream-ordered scratch (its default cudaMallocAsync pool) since the last
// call with reset = true; Buffers are counted by device_memory::memory_stats().
double gpu_scratch_peak_mib(bool reset = false);
double cublas_sgemm_tflops(int n, int reps);       // best of reps square fp32 sgemm (no TF32), after a warm-up

}  // namespace onestep
