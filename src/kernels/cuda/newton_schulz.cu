// Newton–Schulz orthogonalisation for the Muon family: the steps of the CPU's newton_schulz
// (src/optim/newton_schulz.cpp), same normalisation, orientation and quintic coefficients, with the three
// products of each iteration through cuBLAS in the model's matmul precision (ns_compute_type below). Row-major
// M[r,c] is the column-major M^T (see matmul.cu), which the comments below write Mc.
#include <utility>

#include "core/env.h"

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cublas_util.cuh"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/cuda/optim_cuda.h"
#include "optim/newton_schulz.h"  // kNsA, kNsB, kNsC: the one definition of the coefficients

namespace onestep::cuda {

namespace {

constexpr int kTile = 32, kTileRows = 8;

// dst[c, r] = src[r, c] * s (s = *scale, or 1 when scale is null), src being R x C; 32 x 32 shared tiles.
__global__ void transpose_scaled_kernel(float* dst, const float* src, int R, int C, const float* scale) {
  __shared__ float tile[kTile][kTile + 1];
  const float s = scale ? *scale : 1.0f;
  const int c0 = blockIdx.x * kTile, r0 = blockIdx.y * kTile;
  for (int k = threadIdx.y; k < kTile; k += kTileRows) {
    const int r = r0 + k, c = c0 + threadIdx.x;
    if (r < R && c < C) tile[k][threadIdx.x] = src[static_cast<int64_t>(r) * C + c] * s;
  }
  __syncthreads();
  for (int k = threadIdx.y; k < kTile; k += kTileRows) {
    const int c = c0 + k, r = r0 + threadIdx.x;
    if (r < R && c < C) dst[static_cast<int64_t>(c) * R + r] = tile[threadIdx.x][k];
  }
}

void transpose_scaled(float* dst, const float* src, int R, int C, const float* scale, cudaStream_t stream) {
  const dim3 grid((C + kTile - 1) / kTile, (R + kTile - 1) / kTile), block(kTile, kTileRows);
  transpose_scaled_kernel<<<grid, block, 0, stream>>>(dst, src, R, C, scale);
  ONESTEP_CUDA_LAUNCHED("newton_schulz(transpose)");
}

// The products' arithmetic. fp32 (sgemm, no TF32) in fp32 precision: the CPU's arithmetic, which the tests compare
// with. In tf32 and bf16 precision the operands are rounded to TF32 or bf16 inside cuBLAS (fp32 storage, fp32
// accumulation), as the reference Muon runs its iteration in bf16: on a GPU whose fp32 products run on CUDA cores,
// fp32 Newton–Schulz costs about as much as the model's forward and backward (smollm2-360m: ~7 TFLOP per step for
// its 224 matrices). The iteration's fixed point is not sharp anyway: the quintic leaves the singular values in
// about [0.7, 1.2]. ONESTEP_NS_PRECISION=fp32 keeps fp32 in every precision.
cublasComputeType_t ns_compute_type() {
  if (env_is("ONESTEP_NS_PRECISION", "fp32")) return CUBLAS_COMPUTE_32F;  // read per call: tests switch it
  switch (current_matmul_precision()) {
    case MatmulPrecision::tf32: return CUBLAS_COMPUTE_32F_FAST_TF32;
    case MatmulPrecision::bf16: return CUBLAS_COMPUTE_32F_FAST_16BF;
    default: return CUBLAS_COMPUTE_32F;
  }
}

// Column-major C (m x n) = alpha op(A) op(B) + beta C, all fp32, in `compute` (sgemm for CUBLAS_COMPUTE_32F).
void gemm(cublasHandle_t h, cublasComputeType_t compute, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
          int k, const float* alpha, const float* A, int lda, const float* B, int ldb, const float* beta, float* C,
          int ldc, const char* what) {
  if (compute == CUBLAS_COMPUTE_32F)
    return detail::check_cublas(cublasSgemm(h, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc), what);
  detail::check_cublas(cublasGemmEx(h, ta, tb, m, n, k, alpha, A, CUDA_R_32F, lda, B, CUDA_R_32F, ldb, beta, C,
                                    CUDA_R_32F, ldc, compute, CUBLAS_GEMM_DEFAULT),
                       what);
}

}  // namespace

// PAPER.md §3, Muon: X = q / (||q||_F + eps), transposed if rows > cols; A = X X^T; X = a X + (b A + c A A) X.
void newton_schulz(float* out, const float* G, int rows, int cols, int steps, float eps, cudaStream_t stream) {
  if (rows <= 0 || cols <= 0) return;
  const bool tr = rows > cols;
  const int r = tr ? cols : rows, c = tr ? rows : cols;  // X is r x c with r <= c
  const int64_t n = static_cast<int64_t>(r) * c, rr = static_cast<int64_t>(r) * r;
  // Scratch: ||G||^2 (double) and 1 / (||G|| + eps) (float) in the first 256 bytes, then X, Xn [r, c] and
  // A, B [r, r], each starting on a 256-byte boundary (64 floats) for cuBLAS.
  const int64_t pn = (n + 63) / 64 * 64, prr = (rr + 63) / 64 * 64;
  detail::Scratch scratch(256 + sizeof(float) * static_cast<size_t>(2 * pn + 2 * prr), stream);
  double* ss = scratch.as<double>();
  float* inv = reinterpret_cast<float*>(ss + 1);
  float* X = scratch.as<float>() + 64;
  float* Xn = X + pn;
  float* A = Xn + pn;
  float* B = A + prr;

  sum_squares_async(ss, G, n, stream);
  detail::run_single(stream, "newton_schulz(norm)", [=] __device__() {
    *inv = static_cast<float>(1.0 / (sqrt(*ss) + static_cast<double>(eps)));
  });
  if (tr) {
    transpose_scaled(X, G, rows, cols, inv, stream);
  } else {
    detail::for_each_element(n, stream, "newton_schulz(scale)", [=] __device__(int64_t i) { X[i] = G[i] * *inv; });
  }

  cublasHandle_t h = detail::cublas_handle(stream, false);  // default math: the compute type alone decides
  const cublasComputeType_t compute = ns_compute_type();
  const float one = 1.0f, zero = 0.0f, ka = kNsA, kc = kNsC, kb = kNsB;
  for (int k = 0; k < steps; ++k) {
    // A = X X^T  (symmetric):  Ac = Xc^T Xc, Xc being c x r.
    gemm(h, compute, CUBLAS_OP_T, CUBLAS_OP_N, r, r, c, &one, X, c, X, c, &zero, A, r, "newton_schulz(A)");
    // B = b A + c A A:  B = b A first (as the CPU), then Bc += c Ac Ac  ((A A)^T = A^T A^T).
    detail::for_each_element(rr, stream, "newton_schulz(bA)", [=] __device__(int64_t i) { B[i] = kb * A[i]; });
    gemm(h, compute, CUBLAS_OP_N, CUBLAS_OP_N, r, r, r, &kc, A, r, A, r, &one, B, r, "newton_schulz(B)");
    // Xn = a X + B X:  Xn = X first, then Xnc = a Xnc + Xc Bc  ((B X)^T = X^T B^T), Xnc being c x r.
    ONESTEP_CUDA_CHECK(cudaMemcpyAsync(Xn, X, sizeof(float) * static_cast<size_t>(n), cudaMemcpyDeviceToDevice,
                                       stream));
    gemm(h, compute, CUBLAS_OP_N, CUBLAS_OP_N, c, r, r, &one, X, c, B, r, &ka, Xn, c, "newton_schulz(X)");
    std::swap(X, Xn);
  }
  if (tr) {
    transpose_scaled(out, X, r, c, nullptr, stream);  // X is [cols, rows] -> out [rows, cols]
  } else {
    ONESTEP_CUDA_CHECK(cudaMemcpyAsync(out, X, sizeof(float) * static_cast<size_t>(n), cudaMemcpyDeviceToDevice,
                                       stream));
  }
}

}  // namespace onestep::cuda
