// SOAP's per-step work on the GPU (Soap::compute_update, src/optim/soap.cpp): the rotations into and out of the
// eigenbases as cuBLAS sgemm on row-major matrices, and the per-element Adam steps with the CPU's expressions.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cublas_util.cuh"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/cuda/optim_cuda.h"

namespace onestep::cuda {

namespace {

// Row-major C[r, c] = alpha op(A) op(B) + beta C, as the CPU's cblas call with the same arguments: cuBLAS is
// column-major, so it computes C^T = op(B)^T op(A)^T with the operands swapped.
void gemm_rowmajor(bool ta, bool tb, int r, int c, int k, float alpha, const float* A, const float* B, float beta,
                   float* C, cudaStream_t stream) {
  detail::check_cublas(cublasSgemm(detail::cublas_handle(stream, false), tb ? CUBLAS_OP_T : CUBLAS_OP_N,
                                   ta ? CUBLAS_OP_T : CUBLAS_OP_N, c, r, k, &alpha, B, tb ? k : c, A, ta ? r : k,
                                   &beta, C, c),
                       "soap gemm");
}

}  // namespace

void soap_update(float* u, const float* x, const float* g, float* M, float* V, float* L, float* R, const float* QL,
                 const float* QR, float* A, float* B, int m, int n, const SoapScalars& s, float decay,
                 cudaStream_t stream) {
  const int64_t mn = static_cast<int64_t>(m) * n;
  if (s.first) {
    fill_zero(u, mn, stream);  // the first step only sets up the preconditioner
  } else {
    // V with the rotated gradient G' = Q_L^T G Q_R; M in the original basis.
    gemm_rowmajor(true, false, m, n, m, 1.0f, QL, g, 0.0f, A, stream);
    gemm_rowmajor(false, false, m, n, n, 1.0f, A, QR, 0.0f, B, stream);
    detail::for_each_element(mn, stream, "soap_moments", [=] __device__(int64_t i) {
      V[i] = s.beta2 * V[i] + s.one_minus_beta2 * (B[i] * B[i]);
      M[i] = s.beta1 * M[i] + s.one_minus_beta1 * g[i];
    });
    // N' = (Q_L^T M Q_R / bc1) / (sqrt(V / bc2) + eps)
    gemm_rowmajor(true, false, m, n, m, 1.0f, QL, M, 0.0f, A, stream);
    gemm_rowmajor(false, false, m, n, n, 1.0f, A, QR, 0.0f, B, stream);
    detail::for_each_element(mn, stream, "soap_precondition", [=] __device__(int64_t i) {
      B[i] = (B[i] * s.inv_bc1) / (sqrtf(V[i] * s.inv_bc2) + s.eps);
    });
    // u = lr Q_L N' Q_R^T + lr wd x
    gemm_rowmajor(false, false, m, n, m, 1.0f, QL, B, 0.0f, A, stream);
    gemm_rowmajor(false, true, m, n, n, 1.0f, A, QR, 0.0f, u, stream);
    detail::for_each_element(mn, stream, "soap_finish",
                             [=] __device__(int64_t i) { u[i] = s.lr * u[i] + decay * x[i]; });
  }
  // Statistics after the step: the current gradient never enters its own projection.
  gemm_rowmajor(false, true, m, m, n, s.one_minus_beta2, g, g, s.beta2, L, stream);  // L = b2 L + (1-b2) G G^T
  gemm_rowmajor(true, false, n, n, m, s.one_minus_beta2, g, g, s.beta2, R, stream);  // R = b2 R + (1-b2) G^T G
}

}  // namespace onestep::cuda
