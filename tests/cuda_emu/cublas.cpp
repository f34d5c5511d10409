// CPU emulation of the cuBLAS calls onestep makes (tests/cuda_emu), with OpenBLAS's sgemm. The operands are first
// read as the GPU would: fp32 as they are, TF32 (math mode or compute type) rounded to 10 mantissa bits, bf16
// widened, and fp32 with CUBLAS_COMPUTE_32F_FAST_16BF rounded to bf16. The product accumulates in fp32 in
// OpenBLAS's order, so it matches cuBLAS to rounding, not bit for bit. A product runs in its handle's stream's
// order (streams.h); the arguments are checked when called.
#include <cblas.h>

#include <vector>

#include "cublas_v2.h"
#include "streams.h"

struct cublasContext {
  cublasMath_t math = CUBLAS_DEFAULT_MATH;
  cudaStream_t stream = nullptr;
};

namespace {
enum class Operands { fp32, tf32, bf16 };

float round_tf32(float x) {  // round to nearest, ties away from zero, to 10 explicit mantissa bits
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7f800000u) == 0x7f800000u) return x;  // inf, NaN
  u = (u + 0x1000u) & 0xffffe000u;
  std::memcpy(&x, &u, 4);
  return x;
}

// The columns x rows (column-major, leading dimension ld) that an operand of `type` spans, as fp32.
std::vector<float> read(const void* p, cudaDataType_t type, int rows, int cols, int ld, Operands rounding) {
  std::vector<float> out(static_cast<size_t>(ld) * (cols - 1) + rows);
  for (size_t i = 0; i < out.size(); ++i) {
    if (static_cast<int>(i % ld) >= rows) continue;  // the padding between columns: never read
    float x = type == CUDA_R_16BF ? __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i])
                                  : static_cast<const float*>(p)[i];
    if (rounding == Operands::tf32) x = round_tf32(x);
    if (rounding == Operands::bf16) x = __bfloat162float(__float2bfloat16_rn(x));
    out[i] = x;
  }
  return out;
}

void multiply(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, float alpha, const void* A,
              cudaDataType_t a_type, int lda, const void* B, cudaDataType_t b_type, int ldb, float beta, void* C,
              cudaDataType_t c_type, int ldc, Operands rounding) {
  std::vector<float> c = c_type == CUDA_R_32F ? std::vector<float>()
                                                            : read(C, c_type, m, n, ldc, Operands::fp32);
  float* cp = c.empty() ? static_cast<float*>(C) : c.data();
  if (beta == 0.0f)  // cuBLAS does not read C when beta is 0 (NaN garbage in it must not leak through)
    for (int j = 0; j < n; ++j) std::fill(cp + static_cast<size_t>(j) * ldc, cp + static_cast<size_t>(j) * ldc + m, 0.0f);
  if (k > 0) {
    const std::vector<float> a = read(A, a_type, ta == CUBLAS_OP_N ? m : k, ta == CUBLAS_OP_N ? k : m, lda, rounding);
    const std::vector<float> b = read(B, b_type, tb == CUBLAS_OP_N ? k : n, tb == CUBLAS_OP_N ? n : k, ldb, rounding);
    cblas_sgemm(CblasColMajor, ta == CUBLAS_OP_N ? CblasNoTrans : CblasTrans, tb == CUBLAS_OP_N ? CblasNoTrans : CblasTrans,
                m, n, k, alpha, a.data(), lda, b.data(), ldb, beta == 0.0f ? 1.0f : beta, cp, ldc);
  } else {
    for (int j = 0; j < n; ++j)
      for (int i = 0; i < m; ++i) cp[i + static_cast<size_t>(j) * ldc] *= beta;
  }
  if (c_type == CUDA_R_16BF)
    for (int j = 0; j < n; ++j)
      for (int i = 0; i < m; ++i) {
        const size_t at = i + static_cast<size_t>(j) * ldc;
        static_cast<__nv_bfloat16*>(C)[at] = __float2bfloat16_rn(cp[at]);
      }
  else if (cp != C)
    for (int j = 0; j < n; ++j)
      std::memcpy(static_cast<float*>(C) + static_cast<size_t>(j) * ldc, cp + static_cast<size_t>(j) * ldc, sizeof(float) * m);
}

// Checks the arguments now and queues the product in the stream's order.
cublasStatus_t gemm(cudaStream_t stream, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, float alpha,
                    const void* A, cudaDataType_t a_type, int lda, const void* B, cudaDataType_t b_type, int ldb, float beta, void* C,
                    cudaDataType_t c_type, int ldc, Operands rounding) {
  if (m < 0 || n < 0 || k < 0 || lda < (ta == CUBLAS_OP_N ? m : k) || ldb < (tb == CUBLAS_OP_N ? k : n) || ldc < m)
    return CUBLAS_STATUS_INVALID_VALUE;
  if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
  // Each operand, from its first element to its last (leading dimension included), inside one allocation.
  auto check = [](const void* p, cudaDataType_t type, int rows, int cols, int ld) {
    if (!emu::is_device_address(p)) emu::refuse_launch("cuBLAS gemm", "an operand points to host memory");
    const size_t bytes = (static_cast<size_t>(ld) * (cols - 1) + rows) * (type == CUDA_R_16BF ? 2 : 4);
    if (rows > 0 && cols > 0 && emu::device_of(p, bytes) < 0)
      emu::refuse_launch("cuBLAS gemm", "an operand runs past the end of its allocation");
  };
  check(A, a_type, ta == CUBLAS_OP_N ? m : k, ta == CUBLAS_OP_N ? k : m, lda);
  check(B, b_type, tb == CUBLAS_OP_N ? k : n, tb == CUBLAS_OP_N ? n : k, ldb);
  check(C, c_type, m, n, ldc);
  emu::enqueue(stream, [=] { multiply(ta, tb, m, n, k, alpha, A, a_type, lda, B, b_type, ldb, beta, C, c_type, ldc, rounding); });
  return CUBLAS_STATUS_SUCCESS;
}
}  // namespace

cublasStatus_t cublasCreate(cublasHandle_t* h) {
  *h = new cublasContext;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy(cublasHandle_t h) {
  delete h;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetMathMode(cublasHandle_t h, cublasMath_t mode) {
  h->math = mode;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t s) {
  if (!h) return CUBLAS_STATUS_INVALID_VALUE;
  h->stream = s;
  return CUBLAS_STATUS_SUCCESS;
}
const char* cublasGetStatusName(cublasStatus_t s) {
  return s == CUBLAS_STATUS_SUCCESS ? "CUBLAS_STATUS_SUCCESS" : s == CUBLAS_STATUS_INVALID_VALUE ? "CUBLAS_STATUS_INVALID_VALUE" : "CUBLAS_STATUS_NOT_SUPPORTED";
}
const char* cublasGetStatusString(cublasStatus_t s) { return cublasGetStatusName(s); }

// cublasSgemm is cublasGemmEx on fp32 with CUBLAS_COMPUTE_32F: the handle's math mode alone decides TF32.
cublasStatus_t cublasSgemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                           const float* alpha, const float* A, int lda, const float* B, int ldb, const float* beta,
                           float* C, int ldc) {
  return cublasGemmEx(h, ta, tb, m, n, k, alpha, A, CUDA_R_32F, lda, B, CUDA_R_32F, ldb, beta, C, CUDA_R_32F, ldc,
                      CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
}
cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                            const void* alpha, const void* A, cudaDataType_t a_type, int lda, const void* B,
                            cudaDataType_t b_type, int ldb, const void* beta, void* C, cudaDataType_t c_type, int ldc,
                            cublasComputeType_t compute, cublasGemmAlgo_t) {
  if (a_type != b_type) return CUBLAS_STATUS_NOT_SUPPORTED;
  Operands rounding = Operands::fp32;  // an explicit fast compute type wins over the handle's math mode
  if (a_type == CUDA_R_32F && compute == CUBLAS_COMPUTE_32F_FAST_16BF) rounding = Operands::bf16;
  else if (a_type == CUDA_R_32F && (compute == CUBLAS_COMPUTE_32F_FAST_TF32 || h->math == CUBLAS_TF32_TENSOR_OP_MATH))
    rounding = Operands::tf32;
  return gemm(h->stream, ta, tb, m, n, k, *static_cast<const float*>(alpha), A, a_type, lda, B, b_type, ldb,
              *static_cast<const float*>(beta), C, c_type, ldc, rounding);
}
// The batch as that many cublasGemmEx calls on the strided operands (each checked and queued in order).
cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                                          int k, const void* alpha, const void* A, cudaDataType_t a_type, int lda,
                                          long long stride_a, const void* B, cudaDataType_t b_type, int ldb,
                                          long long stride_b, const void* beta, void* C, cudaDataType_t c_type, int ldc,
                                          long long stride_c, int batch_count, cublasComputeType_t compute,
                                          cublasGemmAlgo_t algo) {
  if (batch_count < 0) return CUBLAS_STATUS_INVALID_VALUE;
  auto at = [](const void* p, cudaDataType_t type, long long elements) {
    return static_cast<const char*>(p) + elements * (type == CUDA_R_16BF ? 2 : 4);
  };
  for (int i = 0; i < batch_count; ++i) {
    const cublasStatus_t st =
        cublasGemmEx(h, ta, tb, m, n, k, alpha, at(A, a_type, i * stride_a), a_type, lda, at(B, b_type, i * stride_b),
                     b_type, ldb, beta, const_cast<char*>(at(C, c_type, i * stride_c)), c_type, ldc, compute, algo);
    if (st != CUBLAS_STATUS_SUCCESS) return st;
  }
  return CUBLAS_STATUS_SUCCESS;
}
