// CUDA training kernels: the counterparts of src/kernels/cpu/ops.h, fp32, row-major, same shapes and
// conventions, but every pointer is a DEVICE pointer and each call takes the stream it is queued on.
//
//  - Weight matrices use the Hugging Face layout [out_features, in_features].
//  - Every backward ACCUMULATES (+=) into its gradient outputs; cross_entropy_backward OVERWRITES
//    dlogits, which may alias logits (the fused classifier).
//  - Calls are asynchronous on `stream` except those that return a host value (cross_entropy_forward,
//    sum_squares): they synchronise the stream.
//  - Determinism: every kernel sums in a fixed order for given shapes (cuBLAS: for a given GPU and
//    library version), EXCEPT embedding_backward, which scatters with float atomicAdd: repeated tokens
//    are summed in an unspecified order, so dwte may differ in the last bits from run to run.
//  - Errors (CUDA or cuBLAS) throw std::runtime_error.
// This header is plain C++17 (it is included by host-only .cpp files compiled by the C++ compiler).
#pragma once
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "core/bf16.h"

namespace onestep::cuda {

// Process-wide arithmetic of the model's matmuls below (train.precision). In these fp32 signatures storage is fp32:
//  fp32: cuBLAS sgemm (the default; the CPU's reference arithmetic);
//  tf32: the same call on TF32 tensor cores (inputs rounded to a 10-bit mantissa, fp32 accumulation);
//  bf16: both operands rounded to bfloat16 (7-bit mantissa, round to nearest even) into stream-ordered
//        scratch, multiplied on bf16 tensor cores with fp32 accumulation into the fp32 output (cublasGemmEx).
//        The weights stay fp32 masters; the optimizers and Newton–Schulz never see bf16.
// bf16 also runs attention's products on the tensor cores (bf16 Q, K, V, P, dO and dS; fp32 softmax and
// accumulation) for head dims that are multiples of 16.
enum class MatmulPrecision { fp32, tf32, bf16 };
void set_matmul_precision(MatmulPrecision p);
MatmulPrecision current_matmul_precision();

// out[N,OC] = inp[N,C] @ w[OC,C]^T            (in the precision set above)
void matmul_forward(float* out, const float* inp, const float* w, int N, int C, int OC, cudaStream_t stream = 0);
// dinp[N,C] += dout @ w ; dw[OC,C] += dout^T @ inp. Either output may be null (skipped).
void matmul_backward(float* dinp, float* dw, const float* dout, const float* inp, const float* w, int N, int C,
                     int OC, cudaStream_t stream = 0);

// out[N,C] = wte[tokens[n], :]
void embedding_forward(float* out, const int32_t* tokens, const float* wte, int N, int C, cudaStream_t stream = 0);
// dwte[tokens[n], :] += dout[n, :]   (float atomics: NOT deterministic for repeated tokens)
void embedding_backward(float* dwte, const float* dout, const int32_t* tokens, int N, int C,
                        cudaStream_t stream = 0);

// out = x * rstd * w, rstd[n] = 1 / sqrt(mean(x[n]^2) + eps); rstd may be null.
void rmsnorm_forward(float* out, float* rstd, const float* x, const float* w, int N, int C, float eps,
                     cudaStream_t stream = 0);
// dx and dw may each be null.
void rmsnorm_backward(float* dx, float* dw, const float* dout, const float* x, const float* w, const float* rstd,
                      int N, int C, cudaStream_t stream = 0);

// Rotary embedding, Hugging Face "rotate_half" convention (see ops.h); x is [B,T,H,D]; out may equal x.
// The cos/sin table is computed on the host in double exactly as the CPU kernel does and cached on the
// device per (device, T, D, theta).
void rope_forward(float* out, const float* x, int B, int T, int H, int D, float theta, cudaStream_t stream = 0);
// dx += R(-angle) dout ; dx may not alias dout.
void rope_backward(float* dx, const float* dout, int B, int T, int H, int D, float theta, cudaStream_t stream = 0);

// Causal grouped-query attention, fused (flash-attention style): one block per (batch, head, query tile)
// streams the key tiles with an online softmax; no T x T matrix exists in global memory.
// q [B,T,H,D], k and v [B,T,KV,D] (head h uses kv head h / (H/KV)), out [B,T,H,D], lse [B,H,T].
// Scale = 1/sqrt(D). Throws if D needs more shared memory than the device offers: D <= 128 fits every GPU from
// sm_80 on (sm_86/sm_89's 99 KiB per block included); the fp32 kernels go up to D = 256 on Hopper.
void attention_forward(float* out, float* lse, const float* q, const float* k, const float* v, int B, int T,
                       int H, int KV, int D, cudaStream_t stream = 0);
// Recomputes the probabilities from q, k and lse; dq in one kernel (per query tile), dk/dv in another (per
// kv head and key tile, the heads of its group summed in order): deterministic, no atomics.
void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                        const float* v, const float* out, const float* lse, int B, int T, int H, int KV, int D,
                        cudaStream_t stream = 0);

// out[N,F] = silu(gate) * up
void swiglu_forward(float* out, const float* gate, const float* up, int N, int F, cudaStream_t stream = 0);
// dgate and dup may each be null.
void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up, int N, int F,
                     cudaStream_t stream = 0);

// losses[n] = logsumexp(logits[n]) - logits[n, targets[n]] (losses may be null). Returns the mean over the
// targets >= 0 (double accumulation, fixed order); synchronises the stream.
double cross_entropy_forward(float* losses, const float* logits, const int32_t* targets, int N, int V,
                             cudaStream_t stream = 0);
// dlogits[n] = (softmax(logits[n]) - onehot(targets[n])) * scale, OVERWRITTEN; may alias logits.
void cross_entropy_backward(float* dlogits, const float* logits, const int32_t* targets, int N, int V, float scale,
                            cudaStream_t stream = 0);

// Element-wise helpers.
void add_inplace(float* y, const float* x, int64_t n, cudaStream_t stream = 0);  // y += x
void sub_inplace(float* y, const float* x, int64_t n, cudaStream_t stream = 0);  // y -= x
void scale_inplace(float* y, float s, int64_t n, cudaStream_t stream = 0);       // y *= s
// sum x^2 in double: fixed grid for a given n, then one block sums the partials in order (deterministic).
// Synchronises the stream.
double sum_squares(const float* x, int64_t n, cudaStream_t stream = 0);
// The same sum written to the device double *result, asynchronously (no synchronisation; 0 for n <= 0).
void sum_squares_async(double* result, const float* x, int64_t n, cudaStream_t stream = 0);
// The same sum of each piece x[offset, offset + count), with one synchronisation for all of them (a model's
// gradient norm has a piece per parameter tensor: hundreds of waits for the GPU otherwise).
std::vector<double> sum_squares_each(const float* x, const std::vector<std::pair<int64_t, int64_t>>& pieces,
                                     cudaStream_t stream = 0);
void fill_zero(float* y, int64_t n, cudaStream_t stream = 0);
// dst[0, n) = src[0, n), device to device (either GPU: the stages of one process may sit on different ones),
// asynchronous on stream.
void copy_device(float* dst, const float* src, int64_t n, cudaStream_t stream = 0);

// bf16 operand storage (train.precision = bf16; model/stage.h: OperandStorage): the activations the products read
// (the norms' outputs, q, k, v, attention's output, gate, up and SwiGLU's output), the logits (and so dlogits) and
// the gradients only matmuls read (of the q/k projections after RoPE's backward, of gate and up) are kept in bf16;
// the residual stream, the statistics (rstd, lse), the per-row losses and the other gradients stay fp32. Each kernel
// computes in fp32 as above; a bf16 output is rounded once when stored (round to nearest even; a += into bf16 adds
// in fp32, then rounds), a bf16 input is widened exactly when loaded.
// The matmuls take bf16 inputs as they are, round the weight (and in backward dout) as above, and accumulate in
// fp32, so each product equals the fp32-input call on the same (rounded) values, bit for bit.
void matmul_forward(float* out, const onestep::bf16* inp, const float* w, int N, int C, int OC,
                    cudaStream_t stream = 0);
void matmul_forward(onestep::bf16* out, const onestep::bf16* inp, const float* w, int N, int C, int OC,
                    cudaStream_t stream = 0);
void matmul_backward(float* dinp, float* dw, const float* dout, const onestep::bf16* inp, const float* w, int N, int C,
                     int OC, cudaStream_t stream = 0);
void matmul_backward(float* dinp, float* dw, const onestep::bf16* dout, const onestep::bf16* inp, const float* w, int N,
                     int C, int OC, cudaStream_t stream = 0);
// Weights rounded once: in bf16 precision every product rounds its fp32 weight to bf16 per call (the forward's and
// the backward's: twice per micro-batch). Where a weight vector w[0, n) stays constant over many products, the
// caller rounds it once into w16 (copy_device) and registers it: until unuse_rounded_weights(w), the products of
// THIS thread whose weight lies inside w[0, n) read the matching part of w16 (the same bits as rounding per call).
// The caller promises w does not change meanwhile, and keeps w16 alive.
void use_rounded_weights(const float* w, const onestep::bf16* w16, int64_t n);
void unuse_rounded_weights(const float* w);
void rmsnorm_forward(onestep::bf16* out, float* rstd, const float* x, const float* w, int N, int C, float eps,
                     cudaStream_t stream = 0);
void rope_forward(onestep::bf16* out, const onestep::bf16* x, int B, int T, int H, int D, float theta,
                  cudaStream_t stream = 0);
void attention_forward(onestep::bf16* out, float* lse, const onestep::bf16* q, const onestep::bf16* k,
                       const onestep::bf16* v, int B, int T, int H, int KV, int D, cudaStream_t stream = 0);
void attention_backward(float* dq, float* dk, float* dv, const float* dout, const onestep::bf16* q,
                        const onestep::bf16* k, const onestep::bf16* v, const onestep::bf16* out, const float* lse,
                        int B, int T, int H, int KV, int D, cudaStream_t stream = 0);
void swiglu_forward(onestep::bf16* out, const onestep::bf16* gate, const onestep::bf16* up, int N, int F,
                    cudaStream_t stream = 0);
void swiglu_backward(onestep::bf16* dgate, onestep::bf16* dup, const float* dout, const onestep::bf16* gate,
                     const onestep::bf16* up, int N, int F, cudaStream_t stream = 0);
void rope_backward(onestep::bf16* dx, const float* dout, int B, int T, int H, int D, float theta, cudaStream_t stream = 0);
void fill_zero(onestep::bf16* y, int64_t n, cudaStream_t stream = 0);
// The head's bf16 logits [N, V] (matmul_forward's bf16 output): the loss reads them widened; the backward overwrites
// them with dlogits, each element computed in fp32 and rounded once.
double cross_entropy_forward(float* losses, const onestep::bf16* logits, const int32_t* targets, int N, int V,
                             cudaStream_t stream = 0);
void cross_entropy_backward(onestep::bf16* dlogits, const onestep::bf16* logits, const int32_t* targets, int N, int V,
                            float scale, cudaStream_t stream = 0);
// The boundary tensors between stages stay fp32: bf16 -> fp32 is exact, fp32 -> bf16 rounds (and is exact on values
// that came from bf16).
void copy_device(onestep::bf16* dst, const float* src, int64_t n, cudaStream_t stream = 0);
void copy_device(float* dst, const onestep::bf16* src, int64_t n, cudaStream_t stream = 0);

// The optimizers' updates, Newton–Schulz and the delay corrections: optim_cuda.h.

}  // namespace onestep::cuda
