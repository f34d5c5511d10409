// SOAP (PAPER.md §3; Vyas et al. 2024, Algorithm 3, and the official implementation's order of operations)
// for the hidden matrices (ParamRole::matrix, 2-D, both dimensions <= kSoapMaxDim). Everything else
// (embedding, head, norms, larger matrices) goes to an AdamW group with SOAP's own lr, betas and eps.
// For a matrix G = g_t [m, n] at call t (1-based):
//   t = 1:  L = (1-b2) G G^T, R = (1-b2) G^T G; Q_L, Q_R = their eigenvectors (columns, by descending
//           eigenvalue; full eigendecomposition, LAPACK dsyevd in double); u = 0 for the matrix. As in the
//           official code the first step only sets up the preconditioner: projecting G_1 on the eigenbasis
//           of G_1 G_1^T would leave only float round-off in the null directions, which Adam would blow
//           up to full-size steps.
//   t > 1:  s = t - 1 (the Adam step), bc_i = 1 - b_i^s
//           G' = Q_L^T G Q_R
//           M  = b1 M + (1-b1) G           (kept in the original basis, so a basis refresh does not touch it)
//           V  = b2 V + (1-b2) G'^2        (in the rotated basis)
//           N' = (Q_L^T M Q_R / bc1) / (sqrt(V / bc2) + eps)
//           u  = lr Q_L N' Q_R^T + lr wd x
//           then (the current gradient never enters its own projection) L = b2 L + (1-b2) G G^T,
//           R = b2 R + (1-b2) G^T G, and when s % precond_freq == 0 both bases are refreshed by one
//           power-iteration + QR step, as the official code does: est_i = q_i^T L q_i, the columns of Q
//           (and the matching rows of V for Q_L, columns for Q_R) are reordered by descending est, then
//           Q = qr(L Q) (Householder, double).
// The eigendecompositions and refreshes of the different matrices are independent tasks run in parallel
// (OpenMP over matrices), each on one thread (OpenBLAS runs single-threaded inside a parallel region): the
// bases are then the same for any thread count, and LAPACK's fine-grained threading is avoided. The per-step
// work is shared out the same way when there are at least 2 matrices per thread (optim_detail::for_each_matrix).
#pragma once
#include <vector>

#include "optim/adamw.h"
#include "optim/optimizer.h"

namespace onestep {

inline constexpr int64_t kSoapMaxDim = 4096;

struct SoapHyper {
  double lr = 3e-3;
  double beta1 = 0.95, beta2 = 0.95, eps = 1e-8;
  int precond_freq = 10;
  double weight_decay = 0.1;
};

bool soap_takes(const ParamInfo& p);

// Whether the call making Adam step s (s = 0 the first) ends by refreshing the bases: the first, then every
// precond_freq-th. The CPU and GPU optimizers share it.
inline bool soap_refreshes_bases(int64_t s, int64_t precond_freq) { return s == 0 || s % precond_freq == 0; }

// One matrix's new bases (host arrays, row-major; L, Q_L [m, m], R, Q_R [n, n], V [m, n]): at the first step the
// eigenvectors of L and R, later one power-iteration + QR step from the current Q_L, Q_R, re-indexing V to match.
// The CPU optimizer and the GPU one (gpu/cuda_optimizer.cpp, on host copies) share it.
void soap_new_bases(const float* L, const float* R, float* QL, float* QR, float* V, int m, int n, bool first);

class Soap final : public Optimizer {
 public:
  Soap(const ParamTable& table, SoapHyper h);
  void compute_update(float* u, const float* x, const float* g, double lr_scale) override;
  // Per SOAP matrix "soap.m.<name>" and "soap.v.<name>" [m, n], "soap.L.<name>" and "soap.Q_L.<name>"
  // [m, m], "soap.R.<name>" and "soap.Q_R.<name>" [n, n]; then the AdamW group's.
  std::vector<StateBuffer> state_buffers() override;

 private:
  // Matrix k's new bases: the eigenvectors of L and R (first step) or one power-iteration + QR step.
  void new_bases(size_t k, bool first);

  SoapHyper h_;
  std::vector<ParamInfo> mats_;
  std::vector<int64_t> off_mn_, off_mm_, off_nn_;
  std::vector<float> m_, v_, l_, r_, ql_, qr_;
  std::vector<size_t> largest_first_;        // matrix indices by cost per step, largest first
  int64_t max_mn_ = 0;                       // the largest matrix's numel
  std::vector<std::vector<float>> scratch_;  // per OpenMP thread: two [m, n], grown on the first step
  AdamWGroup adamw_;
};

}  // namespace onestep
