// Matrix multiply through cuBLAS in the process's matmul precision (ops_cuda.h): sgemm in fp32 or on TF32
// tensor cores, or cublasGemmEx on bf16 operands (rounded copies, or the activation itself when it is stored in
// bf16) with fp32 accumulation. Row-major A[r,c] is the
// column-major matrix A^T, so each row-major product C = A B is issued as the column-major C^T = B^T A^T.
#include <cuda_bf16.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>
#include <utility>
#include <unordered_map>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cublas_util.cuh"
#include "kernels/cuda/ops_cuda.h"

namespace onestep::cuda {

namespace detail {

namespace {
std::atomic<MatmulPrecision> matmul_precision{MatmulPrecision::fp32};

// bf16 copies of the operands, per (host thread, device, stream): reused across calls on that stream (work on one
// stream runs in order, so a copy is not overwritten before the product that reads it ran) and grown when too small.
struct Bf16Operands {
  __nv_bfloat16* buf[3] = {nullptr, nullptr, nullptr};
  size_t cap[3] = {0, 0, 0};
};

// What a host thread holds on the GPU for its products: a cuBLAS handle per device (a handle must not be shared by
// threads that set its stream) and the bf16 operand scratch per (device, stream). Released when the thread ends: a
// pipeline starts new stage threads for every segment between evaluations and checkpoints, and each would otherwise
// leave a handle with its workspace and the scratch (for the head's output gradient N x vocab bf16) behind. The
// main thread's are released at exit, before any static object is destroyed, so while the CUDA runtime is alive.
struct ThreadResources {
  std::unordered_map<int, cublasHandle_t> handles;
  std::map<std::pair<int, cudaStream_t>, Bf16Operands> scratch;
  ThreadResources() = default;
  ThreadResources(const ThreadResources&) = delete;
  ThreadResources& operator=(const ThreadResources&) = delete;
  ~ThreadResources() {  // never throws; a failure here only leaks
    int current = 0;
    if (cudaGetDevice(&current) != cudaSuccess) return;
    for (auto& [key, s] : scratch) {
      cudaSetDevice(key.first);
      for (__nv_bfloat16* b : s.buf)
        if (b) cudaFreeAsync(b, key.second);  // after the products queued on its stream
    }
    for (auto& [dev, h] : handles) {
      cudaSetDevice(dev);
      cublasDestroy(h);
    }
    cudaSetDevice(current);
    cudaGetLastError();
  }
};
ThreadResources& thread_resources() {
  thread_local ThreadResources r;
  return r;
}

// Operand slot `k` (0..2) of this thread and stream holding `x` rounded to bf16 (round to nearest even).
const __nv_bfloat16* bf16_copy(int k, const float* x, int64_t n, cudaStream_t stream) {
  int dev = 0;
  ONESTEP_CUDA_CHECK(cudaGetDevice(&dev));
  Bf16Operands& s = thread_resources().scratch[{dev, stream}];
  if (s.cap[k] < static_cast<size_t>(n)) {
    if (s.buf[k]) ONESTEP_CUDA_CHECK(cudaFreeAsync(s.buf[k], stream));
    ONESTEP_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&s.buf[k]), sizeof(__nv_bfloat16) * n, stream));
    s.cap[k] = static_cast<size_t>(n);
  }
  __nv_bfloat16* out = s.buf[k];
  for_each_element(n, stream, "round_to_bf16", [=] __device__(int64_t i) { out[i] = __float2bfloat16_rn(x[i]); });
  return out;
}

// Weights rounded once (use_rounded_weights): the ranges registered, each with the thread whose products read it.
struct RoundedRange {
  const float* w;
  const __nv_bfloat16* w16;
  int64_t n;
  std::thread::id owner;
};
std::mutex rounded_mu;
std::vector<RoundedRange> rounded_ranges;

// A product's weight w[0, n) in bf16: its registered rounded copy on this thread, else rounded now into slot 0.
const __nv_bfloat16* weight_operand(const float* w, int64_t n, cudaStream_t stream) {
  {
    std::lock_guard<std::mutex> lock(rounded_mu);
    for (const RoundedRange& r : rounded_ranges)
      if (r.owner == std::this_thread::get_id() && w >= r.w && w + n <= r.w + r.n) return r.w16 + (w - r.w);
  }
  return bf16_copy(0, w, n, stream);
}

// The bf16 operand of slot k: a rounded copy of fp32 x, or x itself when it is stored in bf16 already.
const __nv_bfloat16* bf16_operand(int k, const float* x, int64_t n, cudaStream_t stream) {
  return bf16_copy(k, x, n, stream);
}
const __nv_bfloat16* bf16_operand(int, const onestep::bf16* x, int64_t, cudaStream_t) { return device_type(x); }

// C (column-major m x n, fp32 or bf16, leading dimension ldc) = alpha op(A) op(B) + beta C, A and B already in
// bf16, accumulated in fp32 (a bf16 C is rounded once, at the end).
template <class Out>
void gemm_bf16(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, float alpha, const __nv_bfloat16* A,
               int lda, const __nv_bfloat16* B, int ldb, float beta, Out* C, int ldc, cudaStream_t stream,
               const char* what) {
  const cudaDataType_t c_type = std::is_same_v<Out, float> ? CUDA_R_32F : CUDA_R_16BF;
  check_cublas(cublasGemmEx(cublas_handle(stream, false), ta, tb, m, n, k, &alpha, A, CUDA_R_16BF, lda, B,
                            CUDA_R_16BF, ldb, &beta, C, c_type, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
               what);
}
}  // namespace

// The calling thread's handle for the current device (ThreadResources), set to `stream` and the precision's math mode.
cublasHandle_t cublas_handle(cudaStream_t stream, bool allow_tf32) {
  auto& handles = thread_resources().handles;
  int dev = 0;
  ONESTEP_CUDA_CHECK(cudaGetDevice(&dev));
  auto it = handles.find(dev);
  if (it == handles.end()) {
    cublasHandle_t h = nullptr;
    check_cublas(cublasCreate(&h), "cublasCreate");
    check_cublas(cublasSetMathMode(h, CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
    it = handles.emplace(dev, h).first;
  }
  // cuBLAS is built without per-thread streams: its "0" is the legacy stream, so name this thread's own.
  check_cublas(cublasSetStream(it->second, stream ? stream : cudaStreamPerThread), "cublasSetStream");
  const bool tf32 = allow_tf32 && matmul_precision.load(std::memory_order_relaxed) == MatmulPrecision::tf32;
  check_cublas(cublasSetMathMode(it->second, tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH),
               "cublasSetMathMode");
  return it->second;
}

}  // namespace detail

void set_matmul_precision(MatmulPrecision p) { detail::matmul_precision.store(p); }
MatmulPrecision current_matmul_precision() { return detail::matmul_precision.load(std::memory_order_relaxed); }

void use_rounded_weights(const float* w, const onestep::bf16* w16, int64_t n) {
  std::lock_guard<std::mutex> lock(detail::rounded_mu);
  detail::rounded_ranges.push_back({w, detail::device_type(w16), n, std::this_thread::get_id()});
}
void unuse_rounded_weights(const float* w) {
  std::lock_guard<std::mutex> lock(detail::rounded_mu);
  auto& v = detail::rounded_ranges;
  v.erase(std::remove_if(v.begin(), v.end(),
                         [&](const detail::RoundedRange& r) { return r.w == w && r.owner == std::this_thread::get_id(); }),
          v.end());
}

using detail::check_cublas;
using detail::cublas_handle;
using detail::bf16_operand;
using detail::weight_operand;
using detail::gemm_bf16;

namespace {
bool bf16() { return current_matmul_precision() == MatmulPrecision::bf16; }

// Products with an empty side: nothing to do, or (forward, C = 0) a zero output. True when handled.
template <class Out>
bool empty_forward(Out* out, int N, int C, int OC, cudaStream_t stream) {
  if (N <= 0 || OC <= 0) return true;
  if (C > 0) return false;
  ONESTEP_CUDA_CHECK(cudaMemsetAsync(out, 0, sizeof(Out) * static_cast<size_t>(N) * OC, stream));  // +0 in both
  return true;
}
bool empty_backward(int N, int C, int OC) { return N <= 0 || C <= 0 || OC <= 0; }

// The bf16 products of matmul_forward / matmul_backward; `In` (the input activation) is fp32, rounded per call,
// or already bf16; the forward's `Out` is fp32 or bf16. Operand slots: 0 the weight (unless rounded once, see
// use_rounded_weights), 1 the input, 2 dout (rounded once, read by both backward products).
template <class In, class Out>
void matmul_forward_bf16(Out* out, const In* inp, const float* w, int N, int C, int OC, cudaStream_t stream) {
  gemm_bf16(CUBLAS_OP_T, CUBLAS_OP_N, OC, N, C, 1.0f, weight_operand(w, static_cast<int64_t>(OC) * C, stream), C,
            bf16_operand(1, inp, static_cast<int64_t>(N) * C, stream), C, 0.0f, out, OC, stream,
            "matmul_forward (bf16)");
}
template <class Dout, class In>
void matmul_backward_bf16(float* dinp, float* dw, const Dout* dout, const In* inp, const float* w, int N, int C,
                          int OC, cudaStream_t stream) {
  const __nv_bfloat16* dout16 = bf16_operand(2, dout, static_cast<int64_t>(N) * OC, stream);
  if (dinp)
    gemm_bf16(CUBLAS_OP_N, CUBLAS_OP_N, C, N, OC, 1.0f, weight_operand(w, static_cast<int64_t>(OC) * C, stream), C,
              dout16, OC, 1.0f, dinp, C, stream, "matmul_backward(dinp, bf16)");
  if (dw)
    gemm_bf16(CUBLAS_OP_N, CUBLAS_OP_T, C, OC, N, 1.0f, bf16_operand(1, inp, static_cast<int64_t>(N) * C, stream), C,
              dout16, OC, 1.0f, dw, C, stream, "matmul_backward(dw, bf16)");
}
}  // namespace

// out[N,OC] = inp[N,C] @ w[OC,C]^T.  Column-major: out^T[OC,N] = op_T(w: C x OC) * inp^T (C x N).
void matmul_forward(float* out, const float* inp, const float* w, int N, int C, int OC, cudaStream_t stream) {
  if (empty_forward(out, N, C, OC, stream)) return;
  const float one = 1.0f, zero = 0.0f;
  if (bf16()) return matmul_forward_bf16(out, inp, w, N, C, OC, stream);
  check_cublas(cublasSgemm(cublas_handle(stream, true), CUBLAS_OP_T, CUBLAS_OP_N, OC, N, C, &one, w, C, inp, C, &zero, out,
                           OC),
               "matmul_forward");
}
void matmul_forward(float* out, const onestep::bf16* inp, const float* w, int N, int C, int OC, cudaStream_t stream) {
  if (!empty_forward(out, N, C, OC, stream)) matmul_forward_bf16(out, inp, w, N, C, OC, stream);
}
void matmul_forward(onestep::bf16* out, const onestep::bf16* inp, const float* w, int N, int C, int OC,
                    cudaStream_t stream) {
  __nv_bfloat16* out16 = detail::device_type(out);
  if (!empty_forward(out16, N, C, OC, stream)) matmul_forward_bf16(out16, inp, w, N, C, OC, stream);
}

// dinp[N,C] += dout[N,OC] @ w[OC,C]:  dinp^T[C,N] += w^T(C x OC, as stored) * dout^T(OC x N, as stored).
// dw[OC,C] += dout^T @ inp:           dw^T[C,OC] += inp^T(C x N, as stored) * op_T(dout^T: OC x N).
void matmul_backward(float* dinp, float* dw, const float* dout, const float* inp, const float* w, int N, int C,
                     int OC, cudaStream_t stream) {
  if (empty_backward(N, C, OC)) return;
  const float one = 1.0f;
  if (bf16()) return matmul_backward_bf16(dinp, dw, dout, inp, w, N, C, OC, stream);
  if (dinp)
    check_cublas(cublasSgemm(cublas_handle(stream, true), CUBLAS_OP_N, CUBLAS_OP_N, C, N, OC, &one, w, C, dout, OC, &one,
                             dinp, C),
                 "matmul_backward(dinp)");
  if (dw)
    check_cublas(cublasSgemm(cublas_handle(stream, true), CUBLAS_OP_N, CUBLAS_OP_T, C, OC, N, &one, inp, C, dout, OC, &one,
                             dw, C),
                 "matmul_backward(dw)");
}
void matmul_backward(float* dinp, float* dw, const float* dout, const onestep::bf16* inp, const float* w, int N, int C,
                     int OC, cudaStream_t stream) {
  if (!empty_backward(N, C, OC)) matmul_backward_bf16(dinp, dw, dout, inp, w, N, C, OC, stream);
}
void matmul_backward(float* dinp, float* dw, const onestep::bf16* dout, const onestep::bf16* inp, const float* w, int N,
                     int C, int OC, cudaStream_t stream) {
  if (!empty_backward(N, C, OC)) matmul_backward_bf16(dinp, dw, dout, inp, w, N, C, OC, stream);
}

}  // namespace onestep::cuda
