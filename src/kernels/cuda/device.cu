// Device detection.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops_cuda.h"

namespace onestep::cuda {

bool cuda_device_available() {
  static const bool available = [] {
    int n = 0;
    const cudaError_t e = cudaGetDeviceCount(&n);  // fails cleanly without a driver or a device
    if (e != cudaSuccess) {
      cudaGetLastError();  // clear it, so that no later call reports it
      return false;
    }
    return n > 0;
  }();
  return available;
}

}  // namespace onestep::cuda
