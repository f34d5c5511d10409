// The CPU kernels with the GPU's bf16 operand storage (model/stage.h: OperandStorage::bf16), as a test oracle: every
// kernel computes in fp32 on its bf16 inputs widened, a bf16 output is rounded once, and every matmul multiplies
// bf16-rounded weight, input and (backward) output gradient with fp32 accumulation, as the CUDA backend's bf16
// matmuls do. The CPU trainer never uses it (the CPU computes in fp32); the tests run the model's
// bf16 plumbing (which buffers hold bf16, the conversions at stage boundaries) through it.
#pragma once
#include <vector>

#include "core/bf16.h"
#include "kernels/cpu/cpu_ops.h"

namespace onestep::test {

inline std::vector<float> widened(const bf16* x, int64_t n) {
  std::vector<float> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) out[i] = to_float(x[i]);
  return out;
}
inline std::vector<float> rounded(const float* x, int64_t n) {
  std::vector<float> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) out[i] = round_to_bf16(x[i]);
  return out;
}
inline void narrow(bf16* dst, const std::vector<float>& src) {
  for (size_t i = 0; i < src.size(); ++i) dst[i] = to_bf16(src[i]);
}

struct CpuBf16Ops : CpuOps {
  using Operand = bf16;
  using CpuOps::copy;
  using CpuOps::fill_zero;

  void matmul_forward(float* out, const bf16* inp, const float* w, int N, int C, int OC) const {
    CpuOps::matmul_forward(out, widened(inp, int64_t{N} * C).data(), rounded(w, int64_t{OC} * C).data(), N, C, OC);
  }
  void matmul_forward(bf16* out, const bf16* inp, const float* w, int N, int C, int OC) const {
    std::vector<float> o(static_cast<size_t>(N) * OC);
    matmul_forward(o.data(), inp, w, N, C, OC);
    narrow(out, o);
  }
  void matmul_backward(float* dinp, float* dw, const float* dout, const bf16* inp, const float* w, int N, int C,
                       int OC) const {
    CpuOps::matmul_backward(dinp, dw, rounded(dout, int64_t{N} * OC).data(), widened(inp, int64_t{N} * C).data(),
                            rounded(w, int64_t{OC} * C).data(), N, C, OC);
  }
  void matmul_backward(float* dinp, float* dw, const bf16* dout, const bf16* inp, const float* w, int N, int C,
                       int OC) const {
    matmul_backward(dinp, dw, widened(dout, int64_t{N} * OC).data(), inp, w, N, C, OC);  // exact: already rounded
  }
  void rmsnorm_forward(bf16* out, float* rstd, const float* x, const float* w, int N, int C, float eps) const {
    std::vector<float> o(static_cast<size_t>(N) * C);
    CpuOps::rmsnorm_forward(o.data(), rstd, x, w, N, C, eps);
    narrow(out, o);
  }
  void rope_forward(bf16* out, const bf16* x, int B, int T, int H, int D, float theta) const {
    std::vector<float> o = widened(x, int64_t{B} * T * H * D);
    CpuOps::rope_forward(o.data(), o.data(), B, T, H, D, theta);
    narrow(out, o);
  }
  void attention_forward(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, int B, int T, int H,
                         int KV, int D) const {
    std::vector<float> o(static_cast<size_t>(B) * T * H * D);
    const int64_t qn = int64_t{B} * T * H * D, kn = int64_t{B} * T * KV * D;
    CpuOps::attention_forward(o.data(), lse, widened(q, qn).data(), widened(k, kn).data(), widened(v, kn).data(), B, T,
                              H, KV, D);
    narrow(out, o);
  }
  void attention_backward(float* dq, float* dk, float* dv, const float* dout, const bf16* q, const bf16* k,
                          const bf16* v, const bf16* out, const float* lse, int B, int T, int H, int KV, int D) const {
    const int64_t qn = int64_t{B} * T * H * D, kn = int64_t{B} * T * KV * D;
    CpuOps::attention_backward(dq, dk, dv, dout, widened(q, qn).data(), widened(k, kn).data(), widened(v, kn).data(),
                               widened(out, qn).data(), lse, B, T, H, KV, D);
  }
  void swiglu_forward(bf16* out, const bf16* gate, const bf16* up, int N, int F) const {
    const int64_t n = int64_t{N} * F;
    std::vector<float> o(static_cast<size_t>(n));
    CpuOps::swiglu_forward(o.data(), widened(gate, n).data(), widened(up, n).data(), N, F);
    narrow(out, o);
  }
  // Gradients into bf16: accumulated in fp32 onto the widened buffer, then rounded.
  void swiglu_backward(bf16* dgate, bf16* dup, const float* dout, const bf16* gate, const bf16* up, int N,
                       int F) const {
    const int64_t n = int64_t{N} * F;
    std::vector<float> dg = widened(dgate, n), du = widened(dup, n);
    CpuOps::swiglu_backward(dg.data(), du.data(), dout, widened(gate, n).data(), widened(up, n).data(), N, F);
    narrow(dgate, dg), narrow(dup, du);
  }
  void rope_backward(bf16* dx, const float* dout, int B, int T, int H, int D, float theta) const {
    std::vector<float> d = widened(dx, int64_t{B} * T * H * D);
    CpuOps::rope_backward(d.data(), dout, B, T, H, D, theta);
    narrow(dx, d);
  }
  // bf16 logits: the loss on their widened values; dlogits computed in fp32 and rounded once.
  double cross_entropy_forward(float* losses, const bf16* logits, const int32_t* targets, int N, int V) const {
    return CpuOps::cross_entropy_forward(losses, widened(logits, int64_t{N} * V).data(), targets, N, V);
  }
  void cross_entropy_backward(bf16* dlogits, const bf16* logits, const int32_t* targets, int N, int V,
                              float scale) const {
    std::vector<float> d = widened(logits, int64_t{N} * V);
    CpuOps::cross_entropy_backward(d.data(), d.data(), targets, N, V, scale);
    narrow(dlogits, d);
  }
  template <class Count>  // more specialised than CpuOps' forwarding template, which would take it otherwise
  void fill_zero(bf16* y, Count n) const {
    for (Count i = 0; i < n; ++i) y[i] = bf16{0};
  }
  void copy(bf16* dst, const float* src, int64_t n) const {
    for (int64_t i = 0; i < n; ++i) dst[i] = to_bf16(src[i]);
  }
  void copy(float* dst, const bf16* src, int64_t n) const {
    for (int64_t i = 0; i < n; ++i) dst[i] = to_float(src[i]);
  }
};

}  // namespace onestep::test
