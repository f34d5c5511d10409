// Newton–Schulz orthogonalisation for the Muon family: the steps of the CPU's newton_schulz
// (src/optim/newton_schulz.cpp), same normalisation, orientation and quintic coefficients, with the three
// products of each iteration through cuBLAS in the model's matmul precision (ns_compute_type below). Row-major
// M[r,c] is the column-major M^T (see matmul.cu), which the comments below write Mc.
#include <algorithm>
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

// Column-major C_i (m x n) = alpha op(A_i) op(B_i) + beta C_i for the `count` matrices at A + i stride_a, ...,
// all fp32, in `compute`: one strided-batched call (CUBLAS_COMPUTE_32F with the handle's default math: no TF32).
void gemm_batched(cublasHandle_t h, cublasComputeType_t compute, cublasOperation_t ta, cublasOperation_t tb, int m,
                  int n, int k, const float* alpha, const float* A, int lda, int64_t stride_a, const float* B, int ldb,
                  int64_t stride_b, const float* beta, float* C, int ldc, int64_t stride_c, int count,
                  const char* what) {
  detail::check_cublas(cublasGemmStridedBatchedEx(h, ta, tb, m, n, k, alpha, A, CUDA_R_32F, lda, stride_a, B,
                                                  CUDA_R_32F, ldb, stride_b, beta, C, CUDA_R_32F, ldc, stride_c, count,
                                                  compute, CUBLAS_GEMM_DEFAULT),
                       what);
}

}  // namespace

// PAPER.md §3, Muon: X = q / (||q||_F + eps), transposed if rows > cols; A = X X^T; X = a X + (b A + c A A) X.
// The matrices of a batch go through each product together (one cuBLAS call per product and iteration, not one
// per matrix: a model's small matrices would otherwise leave the GPU waiting on launches); each matrix's values
// are those of its own iteration.
void newton_schulz_batched(float* const* outs, const float* const* Gs, int count, int rows, int cols, int steps,
                           float eps, cudaStream_t stream, size_t max_scratch_bytes) {
  if (rows <= 0 || cols <= 0 || count <= 0) return;
  const bool tr = rows > cols;
  const int r = tr ? cols : rows, c = tr ? rows : cols;  // X is r x c with r <= c
  const int64_t n = static_cast<int64_t>(r) * c, rr = static_cast<int64_t>(r) * r;
  // Per matrix: X, Xn [r, c] and A, B [r, r], each starting on a 256-byte boundary (64 floats) for cuBLAS.
  const int64_t pn = (n + 63) / 64 * 64, prr = (rr + 63) / 64 * 64;
  const size_t per_matrix = sizeof(float) * static_cast<size_t>(2 * pn + 2 * prr);
  const int chunk = static_cast<int>(std::max<size_t>(1, std::min<size_t>(count, max_scratch_bytes / per_matrix)));
  if (count > chunk) {
    for (int i = 0; i < count; i += chunk)
      newton_schulz_batched(outs + i, Gs + i, std::min(chunk, count - i), rows, cols, steps, eps, stream, max_scratch_bytes);
    return;
  }
  // Scratch: ||G_i||^2 (double) and 1 / (||G_i|| + eps) (float) first, then X [count][pn], Xn, A [count][prr], B.
  const int64_t head = (count * int64_t{12} + 255) / 256 * 64;  // floats, a multiple of 64
  detail::Scratch scratch(sizeof(float) * static_cast<size_t>(head) + per_matrix * count, stream);
  double* ss = scratch.as<double>();
  float* inv = reinterpret_cast<float*>(ss + count);
  float* X = scratch.as<float>() + head;
  float* Xn = X + count * pn;
  float* A = Xn + count * pn;
  float* B = A + count * prr;

  for (int i = 0; i < count; ++i) sum_squares_async(ss + i, Gs[i], n, stream);
  detail::for_each_element(count, stream, "newton_schulz(norm)", [=] __device__(int64_t i) {
    inv[i] = static_cast<float>(1.0 / (sqrt(ss[i]) + static_cast<double>(eps)));
  });
  for (int i = 0; i < count; ++i) {
    float* Xi = X + i * pn;
    const float *Gi = Gs[i], *inv_i = inv + i;
    if (tr) transpose_scaled(Xi, Gi, rows, cols, inv_i, stream);
    else detail::for_each_element(n, stream, "newton_schulz(scale)", [=] __device__(int64_t j) { Xi[j] = Gi[j] * *inv_i; });
  }

  cublasHandle_t h = detail::cublas_handle(stream, false);  // default math: the compute type alone decides
  const cublasComputeType_t compute = ns_compute_type();
  const float one = 1.0f, zero = 0.0f, ka = kNsA, kc = kNsC, kb = kNsB;
  for (int k = 0; k < steps; ++k) {
    // A = X X^T  (symmetric):  Ac = Xc^T Xc, Xc being c x r.
    gemm_batched(h, compute, CUBLAS_OP_T, CUBLAS_OP_N, r, r, c, &one, X, c, pn, X, c, pn, &zero, A, r, prr, count,
                 "newton_schulz(A)");
    // B = b A + c A A:  B = b A first (as the CPU), then Bc += c Ac Ac  ((A A)^T = A^T A^T). The padding between
    // the matrices is scaled too and never read.
    detail::for_each_element(count * prr, stream, "newton_schulz(bA)", [=] __device__(int64_t i) { B[i] = kb * A[i]; });
    gemm_batched(h, compute, CUBLAS_OP_N, CUBLAS_OP_N, r, r, r, &kc, A, r, prr, A, r, prr, &one, B, r, prr, count,
                 "newton_schulz(B)");
    // Xn = a X + B X:  Xn = X first, then Xnc = a Xnc + Xc Bc  ((B X)^T = X^T B^T), Xnc being c x r.
    ONESTEP_CUDA_CHECK(cudaMemcpyAsync(Xn, X, sizeof(float) * static_cast<size_t>(count * pn),
                                       cudaMemcpyDeviceToDevice, stream));
    gemm_batched(h, compute, CUBLAS_OP_N, CUBLAS_OP_N, c, r, r, &one, X, c, pn, B, r, prr, &ka, Xn, c, pn, count,
                 "newton_schulz(X)");
    std::swap(X, Xn);
  }
  for (int i = 0; i < count; ++i) {
    if (tr) transpose_scaled(outs[i], X + i * pn, r, c, nullptr, stream);  // X_i is [cols, rows] -> [rows, cols]
    else
      ONESTEP_CUDA_CHECK(cudaMemcpyAsync(outs[i], X + i * pn, sizeof(float) * static_cast<size_t>(n),
                                         cudaMemcpyDeviceToDevice, stream));
  }
}

void newton_schulz(float* out, const float* G, int rows, int cols, int steps, float eps, cudaStream_t stream) {
  newton_schulz_batched(&out, &G, 1, rows, cols, steps, eps, stream);
}

}  // namespace onestep::cuda
