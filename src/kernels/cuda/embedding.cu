// Token embedding lookup and its scatter-add backward.
#include <cub/device/device_radix_sort.cuh>

#include <algorithm>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops_cuda.h"

namespace onestep::cuda {

namespace {
__global__ void embedding_fwd_kernel(float* out, const int32_t* tokens, const float* wte, int64_t total, int C) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = i / C, c = i % C;
    out[i] = wte[static_cast<int64_t>(tokens[n]) * C + c];
  }
}

// dwte[v] += dout[n] for the rows n with tokens[n] = v, added one by one in increasing n to the value dwte held:
// the CPU's order (kernels/cpu/embedding.cpp), so the same bits, whatever the GPU schedules first. The rows come
// grouped by token, in increasing n within a token, from a stable sort of (token, row); the thread of (position p,
// column c) whose p starts a token's run adds the run's column c. It loads 8 rows of the run at a time, so a
// frequent token waits on memory once per 8 rows; the adds keep the rows' order.
__global__ void embedding_bwd_kernel(float* dwte, const float* dout, const int32_t* sorted_tokens,
                                     const int32_t* sorted_rows, int N, int C) {
  const int64_t total = static_cast<int64_t>(N) * C;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int p = static_cast<int>(i / C), c = static_cast<int>(i % C);
    const int32_t v = sorted_tokens[p];
    if (p > 0 && sorted_tokens[p - 1] == v) continue;  // not the first row of its token's run
    float* dst = dwte + static_cast<int64_t>(v) * C + c;
    float sum = *dst;
    for (int q = p, more = 1; more;) {
      float x[8];
      int k = 0;  // rows of the run among q .. q + 7 (a run is contiguous: the first other token ends it)
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const bool in = q + j < N && sorted_tokens[q + j] == v;
        x[j] = in ? dout[static_cast<int64_t>(sorted_rows[q + j]) * C + c] : 0.0f;
        k += in;
      }
#pragma unroll
      for (int j = 0; j < 8; ++j)
        if (j < k) sum += x[j];
      q += k, more = k == 8;
    }
    *dst = sum;
  }
}
}  // namespace

void embedding_forward(float* out, const int32_t* tokens, const float* wte, int N, int C, cudaStream_t stream) {
  const int64_t total = static_cast<int64_t>(N) * C;
  if (total <= 0) return;
  embedding_fwd_kernel<<<detail::grid_for(total), detail::kThreads, 0, stream>>>(out, tokens, wte, total, C);
  ONESTEP_CUDA_LAUNCHED("embedding_forward");
}

void embedding_backward(float* dwte, const float* dout, const int32_t* tokens, int N, int C, cudaStream_t stream) {
  if (N <= 0 || C <= 0) return;
  // (token, row) sorted by token, stably: CUB's radix sort, which sizes its own scratch on a first call.
  detail::Scratch rows(sizeof(int32_t) * N, stream), sorted_tokens(sizeof(int32_t) * N, stream),
      sorted_rows(sizeof(int32_t) * N, stream);
  int32_t* r = rows.as<int32_t>();
  detail::for_each_element(N, stream, "embedding_backward(rows)", [=] __device__(int64_t i) {
    r[i] = static_cast<int32_t>(i);
  });
  size_t bytes = 0;
  ONESTEP_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, bytes, tokens, sorted_tokens.as<int32_t>(), r,
                                                     sorted_rows.as<int32_t>(), N, 0, 32, stream));
  detail::Scratch temp(std::max<size_t>(bytes, 1), stream);
  ONESTEP_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp.as<void>(), bytes, tokens, sorted_tokens.as<int32_t>(), r,
                                                     sorted_rows.as<int32_t>(), N, 0, 32, stream));
  const int64_t total = static_cast<int64_t>(N) * C;
  embedding_bwd_kernel<<<detail::grid_for(total), detail::kThreads, 0, stream>>>(
      dwte, dout, sorted_tokens.as<int32_t>(), sorted_rows.as<int32_t>(), N, C);
  ONESTEP_CUDA_LAUNCHED("embedding_backward");
}

}  // namespace onestep::cuda
