// Private to src/kernels/cuda: the cuBLAS handle and error check shared by the files that call cuBLAS
// (matmul.cu, newton_schulz.cu).
#pragma once
#include <cublas_v2.h>

#include <stdexcept>
#include <string>

namespace onestep::cuda::detail {

inline void check_cublas(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS)
    throw std::runtime_error(std::string("cuBLAS error in ") + what + ": " + cublasGetStatusName(s) + ": " +
                             cublasGetStatusString(s));
}

// One handle per (host thread, device), default math mode (fp32 sgemm, no TF32), set to `stream`
// (defined in matmul.cu).
cublasHandle_t cublas_handle(cudaStream_t stream);

}  // namespace onestep::cuda::detail
