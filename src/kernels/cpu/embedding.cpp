// Token embedding lookup and its scatter-add backward.
#include <cstring>

#include "kernels/cpu/ops.h"

namespace onestep::cpu {

void embedding_forward(float* out, const int32_t* tokens, const float* wte, int N, int C) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n)
    std::memcpy(out + static_cast<int64_t>(n) * C, wte + static_cast<int64_t>(tokens[n]) * C,
                sizeof(float) * static_cast<size_t>(C));
}

// Each thread owns a chunk of channels and visits the tokens in order, so repeated tokens are summed in
// a fixed order whatever the thread count.
void embedding_backward(float* dwte, const float* dout, const int32_t* tokens, int N, int C) {
  constexpr int kChunk = 64;
  const int nchunks = (C + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static)
  for (int ch = 0; ch < nchunks; ++ch) {
    const int c0 = ch * kChunk;
    const int c1 = c0 + kChunk < C ? c0 + kChunk : C;
    for (int n = 0; n < N; ++n) {
      float* dst = dwte + static_cast<int64_t>(tokens[n]) * C;
      const float* src = dout + static_cast<int64_t>(n) * C;
#pragma omp simd
      for (int c = c0; c < c1; ++c) dst[c] += src[c];
    }
  }
}

}  // namespace onestep::cpu
