// Element-wise helpers. sum_squares is a deterministic two-pass reduction: a grid fixed by n alone writes
// one double partial per block (fixed-order block reduction), then one block sums the partials.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops_cuda.h"

namespace onestep::cuda {

namespace {
constexpr int64_t kMaxPartials = 1024;
constexpr int kFinalThreads = 1024;

__global__ void sumsq_partial_kernel(double* partial, const float* x, int64_t n) {
  double acc = 0.0;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const double v = x[i];
    acc = fma(v, v, acc);
  }
  acc = detail::block_sum(acc);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

__global__ void sumsq_final_kernel(double* result, const double* partial, int nparts) {
  double acc = 0.0;
  for (int i = threadIdx.x; i < nparts; i += blockDim.x) acc += partial[i];
  acc = detail::block_sum(acc);
  if (threadIdx.x == 0) *result = acc;
}
}  // namespace

void add_inplace(float* y, const float* x, int64_t n, cudaStream_t stream) {
  detail::for_each_element(n, stream, "add_inplace", [=] __device__(int64_t i) { y[i] += x[i]; });
}

void sub_inplace(float* y, const float* x, int64_t n, cudaStream_t stream) {
  detail::for_each_element(n, stream, "sub_inplace", [=] __device__(int64_t i) { y[i] -= x[i]; });
}

void scale_inplace(float* y, float s, int64_t n, cudaStream_t stream) {
  detail::for_each_element(n, stream, "scale_inplace", [=] __device__(int64_t i) { y[i] *= s; });
}

void sum_squares_async(double* result, const float* x, int64_t n, cudaStream_t stream) {
  if (n <= 0) {
    ONESTEP_CUDA_CHECK(cudaMemsetAsync(result, 0, sizeof(double), stream));
    return;
  }
  const unsigned nparts = detail::grid_for(n, detail::kThreads, kMaxPartials);
  detail::Scratch partial(sizeof(double) * nparts, stream);
  double* p = partial.as<double>();
  sumsq_partial_kernel<<<nparts, detail::kThreads, 0, stream>>>(p, x, n);
  ONESTEP_CUDA_LAUNCHED("sum_squares(partial)");
  sumsq_final_kernel<<<1, kFinalThreads, 0, stream>>>(result, p, static_cast<int>(nparts));
  ONESTEP_CUDA_LAUNCHED("sum_squares(final)");
}

double sum_squares(const float* x, int64_t n, cudaStream_t stream) {
  if (n <= 0) return 0.0;
  detail::Scratch result(sizeof(double), stream);
  sum_squares_async(result.as<double>(), x, n, stream);
  double host = 0.0;
  ONESTEP_CUDA_CHECK(cudaMemcpyAsync(&host, result.as<double>(), sizeof(double), cudaMemcpyDeviceToHost, stream));
  ONESTEP_CUDA_CHECK(cudaStreamSynchronize(stream));
  return host;
}

std::vector<double> sum_squares_each(const float* x, const std::vector<std::pair<int64_t, int64_t>>& pieces,
                                     cudaStream_t stream) {
  std::vector<double> host(pieces.size(), 0.0);
  if (pieces.empty()) return host;
  detail::Scratch results(sizeof(double) * pieces.size(), stream);
  for (size_t i = 0; i < pieces.size(); ++i)
    sum_squares_async(results.as<double>() + i, x + pieces[i].first, pieces[i].second, stream);
  ONESTEP_CUDA_CHECK(cudaMemcpyAsync(host.data(), results.as<double>(), sizeof(double) * pieces.size(),
                                     cudaMemcpyDeviceToHost, stream));
  ONESTEP_CUDA_CHECK(cudaStreamSynchronize(stream));
  return host;
}

void fill_zero(float* y, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  ONESTEP_CUDA_CHECK(cudaMemsetAsync(y, 0, sizeof(float) * static_cast<size_t>(n), stream));
}
void fill_zero(onestep::bf16* y, int64_t n, cudaStream_t stream) {  // bf16 +0 is all zero bits too
  if (n <= 0) return;
  ONESTEP_CUDA_CHECK(cudaMemsetAsync(y, 0, sizeof(onestep::bf16) * static_cast<size_t>(n), stream));
}

void copy_device(float* dst, const float* src, int64_t n, cudaStream_t stream) {
  if (n > 0)
    ONESTEP_CUDA_CHECK(cudaMemcpyAsync(dst, src, sizeof(float) * static_cast<size_t>(n), cudaMemcpyDefault, stream));
}
// The converting copies run on the current GPU: both buffers belong to the stage computing there.
void copy_device(onestep::bf16* dst, const float* src, int64_t n, cudaStream_t stream) {
  __nv_bfloat16* out = detail::device_type(dst);
  detail::for_each_element(n, stream, "copy_device (to bf16)",
                           [=] __device__(int64_t i) { detail::store_value(out + i, src[i]); });
}
void copy_device(float* dst, const onestep::bf16* src, int64_t n, cudaStream_t stream) {
  const __nv_bfloat16* in = detail::device_type(src);
  detail::for_each_element(n, stream, "copy_device (from bf16)",
                           [=] __device__(int64_t i) { dst[i] = detail::load_value(in + i); });
}

}  // namespace onestep::cuda
