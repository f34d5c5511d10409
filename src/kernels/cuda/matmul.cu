// Matrix multiply through cuBLAS sgemm: fp32 (default math mode, no TF32), or TF32 tensor cores after
// set_tf32_matmuls(true). Row-major A[r,c] is the
// column-major matrix A^T, so each row-major product C = A B is issued as the column-major C^T = B^T A^T.
#include <atomic>
#include <unordered_map>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cublas_util.cuh"
#include "kernels/cuda/ops_cuda.h"

namespace onestep::cuda {

namespace detail {

namespace {
std::atomic<bool> tf32_matmuls{false};
}  // namespace

// A handle must not be shared by threads that set its stream. Handles live until the process exits
// (destroying them during static destruction can race the runtime's own teardown).
cublasHandle_t cublas_handle(cudaStream_t stream, bool allow_tf32) {
  thread_local std::unordered_map<int, cublasHandle_t> handles;
  int dev = 0;
  ONESTEP_CUDA_CHECK(cudaGetDevice(&dev));
  auto it = handles.find(dev);
  if (it == handles.end()) {
    cublasHandle_t h = nullptr;
    check_cublas(cublasCreate(&h), "cublasCreate");
    check_cublas(cublasSetMathMode(h, CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
    it = handles.emplace(dev, h).first;
  }
  check_cublas(cublasSetStream(it->second, stream), "cublasSetStream");
  const bool tf32 = allow_tf32 && tf32_matmuls.load(std::memory_order_relaxed);
  check_cublas(cublasSetMathMode(it->second, tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH),
               "cublasSetMathMode");
  return it->second;
}

}  // namespace detail

void set_tf32_matmuls(bool on) { detail::tf32_matmuls.store(on); }

using detail::check_cublas;
using detail::cublas_handle;

// out[N,OC] = inp[N,C] @ w[OC,C]^T.  Column-major: out^T[OC,N] = op_T(w: C x OC) * inp^T (C x N).
void matmul_forward(float* out, const float* inp, const float* w, int N, int C, int OC, cudaStream_t stream) {
  if (N <= 0 || OC <= 0) return;
  if (C <= 0) {
    ONESTEP_CUDA_CHECK(cudaMemsetAsync(out, 0, sizeof(float) * static_cast<size_t>(N) * OC, stream));
    return;
  }
  const float one = 1.0f, zero = 0.0f;
  check_cublas(cublasSgemm(cublas_handle(stream, true), CUBLAS_OP_T, CUBLAS_OP_N, OC, N, C, &one, w, C, inp, C, &zero, out,
                           OC),
               "matmul_forward");
}

// dinp[N,C] += dout[N,OC] @ w[OC,C]:  dinp^T[C,N] += w^T(C x OC, as stored) * dout^T(OC x N, as stored).
// dw[OC,C] += dout^T @ inp:           dw^T[C,OC] += inp^T(C x N, as stored) * op_T(dout^T: OC x N).
void matmul_backward(float* dinp, float* dw, const float* dout, const float* inp, const float* w, int N, int C,
                     int OC, cudaStream_t stream) {
  if (N <= 0 || C <= 0 || OC <= 0) return;
  const float one = 1.0f;
  if (dinp)
    check_cublas(cublasSgemm(cublas_handle(stream, true), CUBLAS_OP_N, CUBLAS_OP_N, C, N, OC, &one, w, C, dout, OC, &one,
                             dinp, C),
                 "matmul_backward(dinp)");
  if (dw)
    check_cublas(cublasSgemm(cublas_handle(stream, true), CUBLAS_OP_N, CUBLAS_OP_T, C, OC, N, &one, inp, C, dout, OC, &one,
                             dw, C),
                 "matmul_backward(dw)");
}

}  // namespace onestep::cuda
