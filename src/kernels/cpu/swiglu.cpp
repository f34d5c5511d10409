// SwiGLU gate: out = silu(gate) * up, silu(g) = g * sigmoid(g).
#include "kernels/cpu/fast_math.h"
#include "kernels/cpu/ops.h"

namespace onestep::cpu {

using detail::fast_exp;

void swiglu_forward(float* out, const float* gate, const float* up, int N, int F) {
  const int64_t total = static_cast<int64_t>(N) * F;
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < total; ++i) {
    const float g = gate[i];
    const float s = 1.0f / (1.0f + fast_exp(-g));
    out[i] = g * s * up[i];
  }
}

// silu'(g) = s * (1 + g * (1 - s)), s = sigmoid(g).  dgate += dout * up * silu'(g) ; dup += dout * silu(g).
void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up, int N,
                     int F) {
  const int64_t total = static_cast<int64_t>(N) * F;
  if (dgate && dup) {
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < total; ++i) {
      const float g = gate[i];
      const float s = 1.0f / (1.0f + fast_exp(-g));
      const float d = dout[i];
      dgate[i] += d * up[i] * s * (1.0f + g * (1.0f - s));
      dup[i] += d * g * s;
    }
  } else if (dgate) {
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < total; ++i) {
      const float g = gate[i];
      const float s = 1.0f / (1.0f + fast_exp(-g));
      dgate[i] += dout[i] * up[i] * s * (1.0f + g * (1.0f - s));
    }
  } else if (dup) {
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < total; ++i) {
      const float g = gate[i];
      dup[i] += dout[i] * g / (1.0f + fast_exp(-g));
    }
  }
}

}  // namespace onestep::cpu
