// Matrix multiply through OpenBLAS sgemm. Weights use the Hugging Face layout w[OC, C].
#include <cblas.h>

#include "kernels/cpu/ops.h"

namespace onestep::cpu {

// out[N,OC] = inp[N,C] @ w[OC,C]^T
void matmul_forward(float* out, const float* inp, const float* w, int N, int C, int OC) {
  if (N <= 0 || OC <= 0) return;
  if (C <= 0) {  // empty reduction: sgemm with k = 0 is not portable across BLAS builds
    for (long i = 0; i < static_cast<long>(N) * OC; ++i) out[i] = 0.0f;
    return;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, OC, C, 1.0f, inp, C, w, C, 0.0f, out, OC);
}

// dinp[N,C] += dout[N,OC] @ w[OC,C] ; dw[OC,C] += dout^T @ inp.  beta = 1 accumulates.
void matmul_backward(float* dinp, float* dw, const float* dout, const float* inp, const float* w, int N,
                     int C, int OC) {
  if (N <= 0 || C <= 0 || OC <= 0) return;
  if (dinp)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, C, OC, 1.0f, dout, OC, w, C, 1.0f, dinp, C);
  if (dw) cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OC, C, N, 1.0f, dout, OC, inp, C, 1.0f, dw, C);
}

}  // namespace onestep::cpu
