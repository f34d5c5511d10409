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

// One handle per (host thread, device), set to `stream`, in fp32 math (no TF32), or in TF32 tensor-core math when
// allow_tf32 and the matmul precision is tf32 (defined in matmul.cu).
cublasHandle_t cublas_handle(cudaStream_t stream, bool allow_tf32);

}  // namespace onestep::cuda::detail
