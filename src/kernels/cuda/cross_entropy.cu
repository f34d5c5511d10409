// Softmax cross-entropy over the vocabulary, fused: one block per row computes the row's max and
// sum(exp(x - max)) in one pass (online softmax, fixed-order block reduction). The forward's mean is a
// single-block double reduction over the rows in a fixed order, copied back to the host. The logits are fp32, or
// bf16 in bf16 precision (model/stage.h: OperandStorage): read widened, computed in fp32, and the gradient stored
// once per element (bf16: one rounding of the fp32 value, the target's "- scale" included).
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops_cuda.h"

namespace onestep::cuda {

namespace {
constexpr int kCeThreads = 512;

using detail::load_value;
using detail::store_value;

// Max and sum(exp(x - max)) of one row, returned to every thread of the block.
template <class T>
__device__ inline detail::MaxSum row_maxsum(const T* x, int V) {
  detail::MaxSum acc{-INFINITY, 0.0f};
  for (int j = threadIdx.x; j < V; j += blockDim.x) {
    const float xj = load_value(x + j);
    if (xj > acc.m) {
      acc.s = acc.s * expf(acc.m - xj) + 1.0f;  // expf(-inf) = 0 on the first element
      acc.m = xj;
    } else {
      acc.s += expf(xj - acc.m);
    }
  }
  return detail::block_maxsum(acc);
}

template <class T>
__global__ void ce_fwd_kernel(float* row_loss, const T* logits, const int32_t* targets, int V) {
  const int n = blockIdx.x;
  const int t = targets[n];
  if (t < 0) {  // uniform across the block: no thread reaches the reduction's barriers
    if (threadIdx.x == 0) row_loss[n] = 0.0f;
    return;
  }
  const T* x = logits + static_cast<int64_t>(n) * V;
  const detail::MaxSum ms = row_maxsum(x, V);
  if (threadIdx.x == 0) row_loss[n] = logf(ms.s) + ms.m - load_value(x + t);
}

// result[0] = sum of the losses of rows with targets >= 0, result[1] = their count. One block.
__global__ void ce_mean_kernel(double* result, const float* row_loss, const int32_t* targets, int N) {
  double sum = 0.0, count = 0.0;
  for (int n = threadIdx.x; n < N; n += blockDim.x)
    if (targets[n] >= 0) {
      sum += static_cast<double>(row_loss[n]);
      count += 1.0;
    }
  sum = detail::block_sum(sum);
  count = detail::block_sum(count);
  if (threadIdx.x == 0) {
    result[0] = sum;
    result[1] = count;
  }
}

// d may alias x: the reduction's barriers order every read of the first pass before any write, and in the
// second pass each element is read and then written by the same thread. d[t] = p_t k - scale in fp32, stored once.
template <class T>
__global__ void ce_bwd_kernel(T* dlogits, const T* logits, const int32_t* targets, int V, float scale) {
  const int n = blockIdx.x;
  const int64_t off = static_cast<int64_t>(n) * V;
  T* d = dlogits + off;
  const T* x = logits + off;
  const int t = targets[n];
  if (t < 0) {
    for (int j = threadIdx.x; j < V; j += blockDim.x) store_value(d + j, 0.0f);
    return;
  }
  const detail::MaxSum ms = row_maxsum(x, V);
  const float k = scale / ms.s;
  for (int j = threadIdx.x; j < V; j += blockDim.x) {
    const float p = __fmul_rn(expf(load_value(x + j) - ms.m), k);  // rounded before "- scale", as on the CPU
    store_value(d + j, j == t ? p - scale : p);
  }
}

template <class T>
double forward(float* losses, const T* logits, const int32_t* targets, int N, int V, cudaStream_t stream) {
  if (N <= 0) return 0.0;
  detail::Scratch own(losses ? 0 : sizeof(float) * static_cast<size_t>(N), stream);
  float* row_loss = losses ? losses : own.as<float>();
  ce_fwd_kernel<<<N, kCeThreads, 0, stream>>>(row_loss, logits, targets, V);
  ONESTEP_CUDA_LAUNCHED("cross_entropy_forward");
  detail::Scratch result(2 * sizeof(double), stream);
  ce_mean_kernel<<<1, 1024, 0, stream>>>(result.as<double>(), row_loss, targets, N);
  ONESTEP_CUDA_LAUNCHED("cross_entropy_forward(mean)");
  double host[2] = {0.0, 0.0};
  ONESTEP_CUDA_CHECK(cudaMemcpyAsync(host, result.as<double>(), sizeof(host), cudaMemcpyDeviceToHost, stream));
  ONESTEP_CUDA_CHECK(cudaStreamSynchronize(stream));
  return host[1] > 0.0 ? host[0] / host[1] : 0.0;
}

template <class T>
void backward(T* dlogits, const T* logits, const int32_t* targets, int N, int V, float scale, cudaStream_t stream) {
  if (N <= 0 || V <= 0) return;
  ce_bwd_kernel<<<N, kCeThreads, 0, stream>>>(dlogits, logits, targets, V, scale);
  ONESTEP_CUDA_LAUNCHED("cross_entropy_backward");
}
}  // namespace

double cross_entropy_forward(float* losses, const float* logits, const int32_t* targets, int N, int V,
                             cudaStream_t stream) {
  return forward(losses, logits, targets, N, V, stream);
}
double cross_entropy_forward(float* losses, const onestep::bf16* logits, const int32_t* targets, int N, int V,
                             cudaStream_t stream) {
  return forward(losses, detail::device_type(logits), targets, N, V, stream);
}
void cross_entropy_backward(float* dlogits, const float* logits, const int32_t* targets, int N, int V, float scale,
                            cudaStream_t stream) {
  backward(dlogits, logits, targets, N, V, scale, stream);
}
void cross_entropy_backward(onestep::bf16* dlogits, const onestep::bf16* logits, const int32_t* targets, int N, int V,
                            float scale, cudaStream_t stream) {
  backward(detail::device_type(dlogits), detail::device_type(logits), targets, N, V, scale, stream);
}

}  // namespace onestep::cuda
