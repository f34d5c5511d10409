// CPU training kernels, fp32, row-major. One file per op with forward and backward side by side.
//
// Conventions (llm.c style):
//  - Shapes are passed as plain ints; N = number of token positions (B*T), C = channels.
//  - Weight matrices use the Hugging Face layout [out_features, in_features].
//  - Every backward ACCUMULATES (+=) into its gradient outputs, both weight and input gradients, so
//    residual branches and micro-batch accumulation need no extra buffers. Callers zero them.
//  - Kernels are deterministic for a fixed thread count: static work split, fixed reduction order.
#pragma once
#include <cstdint>

namespace onestep::cpu {

// out[N,OC] = inp[N,C] @ w[OC,C]^T            (sgemm through OpenBLAS)
void matmul_forward(float* out, const float* inp, const float* w, int N, int C, int OC);
// dinp[N,C] += dout @ w ; dw[OC,C] += dout^T @ inp. Either output may be null (skipped).
void matmul_backward(float* dinp, float* dw, const float* dout, const float* inp, const float* w, int N,
                     int C, int OC);

// out[N,C] = wte[tokens[n], :]
void embedding_forward(float* out, const int32_t* tokens, const float* wte, int N, int C);
// dwte[tokens[n], :] += dout[n, :]   (deterministic: parallel over channels, tokens in order)
void embedding_backward(float* dwte, const float* dout, const int32_t* tokens, int N, int C);

// out = x * rstd * w, rstd[n] = 1 / sqrt(mean(x[n]^2) + eps)
void rmsnorm_forward(float* out, float* rstd, const float* x, const float* w, int N, int C, float eps);
void rmsnorm_backward(float* dx, float* dw, const float* dout, const float* x, const float* w,
                      const float* rstd, int N, int C);

// Rotary embedding, Hugging Face "rotate_half" convention: within each head of size D, element i
// pairs with i + D/2, angle = pos * theta^(-2i/D), pos = t (position in the sequence).
// x is [B, T, H, D]; works in place (out may equal x).
void rope_forward(float* out, const float* x, int B, int T, int H, int D, float theta);
// dx += R(-angle) dout ; dx may not alias dout.
void rope_backward(float* dx, const float* dout, int B, int T, int H, int D, float theta);

// Causal grouped-query attention without a T x T matrix in memory: scores are computed one row block
// at a time with an online softmax (flash-attention style).
// q [B,T,H,D], k and v [B,T,KV,D] (head h uses kv head h / (H/KV)), out [B,T,H,D],
// lse [B,H,T] = log-sum-exp of the scaled scores of each query row (saved for the backward).
// Scale = 1/sqrt(D).
void attention_forward(float* out, float* lse, const float* q, const float* k, const float* v, int B, int T,
                       int H, int KV, int D);
void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                        const float* v, const float* out, const float* lse, int B, int T, int H, int KV,
                        int D);

// out[N,F] = silu(gate) * up
void swiglu_forward(float* out, const float* gate, const float* up, int N, int F);
void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up, int N,
                     int F);

// losses[n] = logsumexp(logits[n]) - logits[n, targets[n]]. Returns the mean loss (double accumulation).
// Targets < 0 are ignored (loss 0, excluded from the mean).
double cross_entropy_forward(float* losses, const float* logits, const int32_t* targets, int N, int V);
// dlogits[n] = (softmax(logits[n]) - onehot(targets[n])) * scale. Here dlogits is OVERWRITTEN and may
// alias logits (the fused classifier: the head's logits buffer becomes its gradient).
void cross_entropy_backward(float* dlogits, const float* logits, const int32_t* targets, int N, int V,
                            float scale);

// Element-wise helpers.
void add_inplace(float* y, const float* x, int64_t n);             // y += x
void scale_inplace(float* y, float s, int64_t n);                  // y *= s
double sum_squares(const float* x, int64_t n);                     // sum x^2 in double
void fill_zero(float* y, int64_t n);

}  // namespace onestep::cpu
