// CUDA counterparts of the optimizers' per-element updates (src/optim), Muon's Newton–Schulz and the delay
// corrections of optimizer_step (src/train/stage_state.cpp). Same conventions as ops_cuda.h: fp32, DEVICE
// pointers, asynchronous on `stream`, errors throw std::runtime_error.
//
// Each call works on ONE parameter tensor (its slices of the flat buffers and of its state). The routing
// and the per-parameter choices stay with the caller, as in the CPU optimizers: which parameters an
// optimizer takes (muon_takes, mars_takes), their weight decay (0 where decays(p) is false), the Muon
// shape scale (muon_scale). The float scalars of a step are derived in double on the host by the *_scalars
// helpers below exactly as the CPU optimizer derives them, and every kernel keeps the CPU's per-element
// expression, so results match the CPU up to FMA contraction (and, where a norm or a product is involved,
// summation order). State buffers start zeroed, as the CPU's do. PAPER.md §2-§3 define the rules.
// This header is plain C++17.
#pragma once
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>
#include <vector>

namespace onestep::cuda {

// ---- AdamW (src/optim/adamw.cpp) ---------------------------------------------------------------------

// The float scalars of one AdamW step, derived in double on the host exactly as AdamWGroup::update does.
struct AdamWScalars {
  float lr, beta1, one_minus_beta1, beta2, one_minus_beta2, inv_bc1, inv_bc2, eps, weight_decay;
};
// lr already includes the schedule's scale; t >= 1 is the step count; weight_decay is the parameter's
// own (0 for the parameters that do not decay).
inline AdamWScalars adamw_scalars(double lr, double beta1, double beta2, double eps, double weight_decay,
                                  int64_t t) {
  const double bc1 = 1.0 - std::pow(beta1, static_cast<double>(t));
  const double bc2 = 1.0 - std::pow(beta2, static_cast<double>(t));
  return AdamWScalars{static_cast<float>(lr),          static_cast<float>(beta1),
                      static_cast<float>(1.0 - beta1), static_cast<float>(beta2),
                      static_cast<float>(1.0 - beta2), static_cast<float>(1.0 / bc1),
                      static_cast<float>(1.0 / bc2),   static_cast<float>(eps),
                      static_cast<float>(weight_decay)};
}
// m = b1 m + (1-b1) g ; v = b2 v + (1-b2) g^2 (both updated in place) ;
// u = lr * ((m inv_bc1) / (sqrt(v inv_bc2) + eps) + wd x). u is OVERWRITTEN (the optimizer's update).
void adamw_update(float* u, const float* x, const float* g, float* m, float* v, int64_t n, const AdamWScalars& s,
                  cudaStream_t stream = 0);

// ---- MARS, AdamW form (src/optim/mars.cpp; 2-D parameters, the 1-D ones go to adamw_update) -----------

struct MarsScalars {
  AdamWScalars adam;  // AdamW's scalars (MARS's lr, betas, eps, weight decay), same derivation
  float corr;         // gamma b1 / (1 - b1); 0 at the first step (no g_{t-1})
};
inline MarsScalars mars_scalars(double lr, double beta1, double beta2, double eps, double gamma,
                                double weight_decay, int64_t t) {
  return MarsScalars{adamw_scalars(lr, beta1, beta2, eps, weight_decay, t),
                     t == 1 ? 0.0f : static_cast<float>(gamma * beta1 / (1.0 - beta1))};
}
// c = g + corr (g - prev_grad), prev_grad = g ; c /= ||c||_2 if ||c||_2 > 1 (this tensor's norm, summed in
// double on the device: no host synchronisation) ; then AdamW's update on c. u is OVERWRITTEN (it holds c
// in between, as on the CPU).
void mars_update(float* u, const float* x, const float* g, float* m, float* v, float* prev_grad, int64_t n,
                 const MarsScalars& s, cudaStream_t stream = 0);

// ---- Adan (src/optim/adan.cpp; PyTorch beta convention) ----------------------------------------------

struct AdanScalars {
  float beta1, one_minus_beta1, beta2, one_minus_beta2, beta3, one_minus_beta3;
  float inv_bc1, beta2_over_bc2, inv_bc3, eps, lr, lr_wd, inv_one_plus_lr_wd;
  int first;  // t == 1: no g_{t-1}, d = 0
};
inline AdanScalars adan_scalars(double lr, double beta1, double beta2, double beta3, double eps,
                                double weight_decay, int64_t t) {
  const double tt = static_cast<double>(t), lwd = lr * weight_decay;
  return AdanScalars{static_cast<float>(beta1),
                     static_cast<float>(1.0 - beta1),
                     static_cast<float>(beta2),
                     static_cast<float>(1.0 - beta2),
                     static_cast<float>(beta3),
                     static_cast<float>(1.0 - beta3),
                     static_cast<float>(1.0 / (1.0 - std::pow(beta1, tt))),
                     static_cast<float>(beta2 / (1.0 - std::pow(beta2, tt))),
                     static_cast<float>(1.0 / (1.0 - std::pow(beta3, tt))),
                     static_cast<float>(eps),
                     static_cast<float>(lr),
                     static_cast<float>(lwd),
                     static_cast<float>(1.0 / (1.0 + lwd)),
                     t == 1 ? 1 : 0};
}
// d = g - prev_grad (0 at t = 1); m = b1 m + (1-b1) g; m_diff = b2 m_diff + (1-b2) d;
// nu = b3 nu + (1-b3) (g + b2 d)^2; prev_grad = g;
// s = lr (m / bc1 + b2 m_diff / bc2) / (sqrt(nu / bc3) + eps); u = (s + lr wd x) / (1 + lr wd).
void adan_update(float* u, const float* x, const float* g, float* m, float* m_diff, float* nu, float* prev_grad,
                 int64_t n, const AdanScalars& s, cudaStream_t stream = 0);

// ---- Lion (src/optim/lion.cpp) -----------------------------------------------------------------------

struct LionScalars {
  float lr, beta1, one_minus_beta1, beta2, one_minus_beta2, weight_decay;
};
inline LionScalars lion_scalars(double lr, double beta1, double beta2, double weight_decay) {
  return LionScalars{static_cast<float>(lr),    static_cast<float>(beta1),        static_cast<float>(1.0 - beta1),
                     static_cast<float>(beta2), static_cast<float>(1.0 - beta2), static_cast<float>(weight_decay)};
}
// u = lr (sign(b1 m + (1-b1) g) + wd x), sign(0) = 0; then m = b2 m + (1-b2) g.
void lion_update(float* u, const float* x, const float* g, float* m, int64_t n, const LionScalars& s,
                 cudaStream_t stream = 0);

// ---- SOAP (src/optim/soap.cpp) ------------------------------------------------------------------------

// The float scalars of one SOAP call t >= 1 (Adam step s = t - 1), derived as Soap::compute_update does.
struct SoapScalars {
  float lr, beta1, one_minus_beta1, beta2, one_minus_beta2, inv_bc1, inv_bc2, eps;
  bool first;  // t = 1: the update is 0, only the statistics move
};
inline SoapScalars soap_scalars(double lr, double beta1, double beta2, double eps, int64_t t) {
  const int64_t s = t - 1;
  const double sd = static_cast<double>(s);
  return SoapScalars{static_cast<float>(lr),
                     static_cast<float>(beta1),
                     static_cast<float>(1.0 - beta1),
                     static_cast<float>(beta2),
                     static_cast<float>(1.0 - beta2),
                     s > 0 ? static_cast<float>(1.0 / (1.0 - std::pow(beta1, sd))) : 0.0f,
                     s > 0 ? static_cast<float>(1.0 / (1.0 - std::pow(beta2, sd))) : 0.0f,
                     static_cast<float>(eps),
                     s == 0};
}
// One SOAP matrix G = g [m, n] (row-major) with its state M, V [m, n], L, Q_L [m, m], R, Q_R [n, n] and scratch
// A, B [m, n]: for t >= 2 V, M and u = lr Q_L N' Q_R^T + decay x (decay = lr wd, or 0), for t = 1 u = 0; then
// L = b2 L + (1-b2) G G^T and R = b2 R + (1-b2) G^T G. The rotations are cuBLAS sgemm (fp32, no TF32). The bases
// Q_L, Q_R are refreshed by the caller on the host (soap_new_bases, src/optim/soap.h).
void soap_update(float* u, const float* x, const float* g, float* M, float* V, float* L, float* R, const float* QL,
                 const float* QR, float* A, float* B, int m, int n, const SoapScalars& s, float decay,
                 cudaStream_t stream = 0);

// ---- SGD with momentum (src/optim/sgd.cpp) -----------------------------------------------------------

struct SgdScalars {
  float lr, momentum, weight_decay;
  int nesterov;
};
inline SgdScalars sgd_scalars(double lr, double momentum, bool nesterov, double weight_decay) {
  return SgdScalars{static_cast<float>(lr), static_cast<float>(momentum), static_cast<float>(weight_decay),
                    nesterov ? 1 : 0};
}
// buf = mu buf + g; d = g + mu buf (Nesterov) or buf; u = lr (d + wd x).
void sgd_update(float* u, const float* x, const float* g, float* buf, int64_t n, const SgdScalars& s,
                cudaStream_t stream = 0);

// ---- Muon family (src/optim/muon.cpp, normuon.cpp, newton_schulz.cpp) -------------------------------

// Newton–Schulz orthogonalisation, exactly the CPU's steps: X = G / (||G||_F + eps) (the norm summed in
// double on the device), transposed if rows > cols so that A = X X^T is the small Gram matrix, then `steps`
// iterations X <- a X + (b A + c A A) X with the quintic (a, b, c) = (3.4445, -4.7750, 2.0315), transposed
// back. Products through cuBLAS in the matmul precision (set_matmul_precision): fp32 sgemm-equivalent (no TF32)
// in fp32; operands rounded to TF32 or bf16 inside cuBLAS, fp32 storage and accumulation, in tf32 and bf16
// (ONESTEP_NS_PRECISION=fp32 keeps fp32). Scratch is stream-ordered. out may alias G.
void newton_schulz(float* out, const float* G, int rows, int cols, int steps, float eps, cudaStream_t stream = 0);
// The same for `count` matrices of one shape at once: outs[i] = NS(Gs[i]) (outs[i] may alias Gs[i]), each
// product of an iteration one strided-batched cuBLAS call for the whole batch (at most max_scratch_bytes of scratch
// per batch, and at least one matrix; larger groups go in chunks). The host arrays outs and Gs are read during the
// call only.
void newton_schulz_batched(float* const* outs, const float* const* Gs, int count, int rows, int cols, int steps,
                           float eps, cudaStream_t stream = 0, size_t max_scratch_bytes = size_t{256} << 20);

struct MuonScalars {
  float momentum;
  int nesterov;
  int ns_steps;
  float ns_eps;     // X = q / (||q||_F + ns_eps)
  double lr_shape;  // lr * s (s = muon_scale(rows, cols, rule)), kept in double like the CPU's product
  float lr_wd;      // lr * wd
};
// shape_scale: onestep::muon_scale(rows, cols, adamw_rms) of the matrix (src/optim/muon.h).
inline MuonScalars muon_scalars(double lr, double momentum, bool nesterov, int ns_steps, double ns_eps,
                                double shape_scale, double weight_decay) {
  return MuonScalars{static_cast<float>(momentum), nesterov ? 1 : 0, ns_steps, static_cast<float>(ns_eps),
                     lr * shape_scale, static_cast<float>(lr * weight_decay)};
}
// The Muon family's momentum pass: B = mu B + g ; q = g + mu B (Nesterov) or B.
void muon_momentum(float* q, float* B, const float* g, int64_t n, float momentum, bool nesterov,
                   cudaStream_t stream = 0);
// One matrix of the Muon family: its update u, weights x, gradient g, momentum B and (NorMuon) row statistics.
struct MuonMatrix {
  float* u;
  const float* x;
  const float* g;
  float* B;
  float* v_row = nullptr;
};
// Muon on a group of [rows, cols] matrices (one shape, so their Newton–Schulz runs batched): per matrix the
// momentum pass, X = NS(q) on u, u = lr s X + lr wd x.
void muon_update(const std::vector<MuonMatrix>& group, int rows, int cols, const MuonScalars& s,
                 cudaStream_t stream = 0);

struct NorMuonScalars {
  float beta2, one_minus_beta2, eps;
};
inline NorMuonScalars normuon_scalars(double beta2, double eps) {
  return NorMuonScalars{static_cast<float>(beta2), static_cast<float>(1.0 - beta2), static_cast<float>(eps)};
}
// NorMuon on a group of [rows, cols] matrices: Muon's X on each u, then per row r (one block per row, summed
// in double in a fixed order) v_row[r] = b2 v_row[r] + (1-b2) mean_cols(X^2), Y = X / (sqrt(v_row) + eps);
// Y *= ||X||_F / ||Y||_F (0 if ||Y|| = 0); u = lr s Y + lr wd x. The norms stay on the device.
void normuon_update(const std::vector<MuonMatrix>& group, int rows, int cols, const MuonScalars& s,
                    const NorMuonScalars& ns, cudaStream_t stream = 0);

// ---- Delay corrections (src/train/stage_state.cpp, optimizer_step; PAPER.md §2) ----------------------

// EF: x <- x - (u + c (u - u_prev)), then u_prev <- u (the uncorrected update). The first step is
// ordinary: pass c = 0 there (u_prev holds no history), and likewise for the parameters a Muon-family run
// leaves uncorrected (delay.ef_adamw_params = false), as optimizer_step does.
void ef_apply_update(float* x, const float* u, float* u_prev, int64_t n, float c, cudaStream_t stream = 0);
// DC-ASGD, on the clipped gradient before the optimizer: g <- g + lambda g g (w - stale).
void dc_asgd_compensate(float* g, const float* w, const float* stale, int64_t n, float lambda,
                        cudaStream_t stream = 0);

}  // namespace onestep::cuda
