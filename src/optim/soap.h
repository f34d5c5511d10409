// SOAP (PAPER.md §3; Vyas et al. 2024, Algorithm 3 and the official implementation) for the hidden matrices
// (ParamRole::matrix, 2-D, both dimensions <= kSoapMaxDim). Everything else (embedding, head, norms, larger
// matrices) goes to an AdamW group with SOAP's own lr, betas and eps. For a matrix G = g_t [m, n], step t:
//   L = b2 L + (1-b2) G G^T;  R = b2 R + (1-b2) G^T G                  (Shampoo statistics, beta = b2)
//   Eigenbases Q_L [m, m], Q_R [n, n] (columns, by descending eigenvalue), refreshed when t = 1 or
//   (t - 1) % precond_freq == 0, after L and R have absorbed G_t:
//     t = 1:  full eigendecomposition (LAPACK dsyevd, double);
//     later:  one power-iteration + QR step per side, as the official code does: est_i = q_i^T L q_i,
//             the columns of Q (and the matching rows of V for Q_L, columns for Q_R) are reordered by
//             descending est, then Q = qr(L Q) (Householder, double).
//   G' = Q_L^T G Q_R
//   M  = b1 M + (1-b1) G           (kept in the original basis, so a basis refresh does not touch it)
//   V  = b2 V + (1-b2) G'^2        (in the rotated basis)
//   N' = (Q_L^T M Q_R / bc1) / (sqrt(V / bc2) + eps),  bc_i = 1 - b_i^t
//   u  = lr Q_L N' Q_R^T + lr wd x
// Unlike the official code the first step is not skipped: it already uses the eigenbasis of G_1.
#pragma once
#include <vector>

#include "optim/adamw.h"
#include "optim/linalg.h"
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

class Soap final : public Optimizer {
 public:
  Soap(const ParamTable& table, SoapHyper h);
  void compute_update(float* u, const float* x, const float* g, double lr_scale) override;
  // Per SOAP matrix "soap.m.<name>" and "soap.v.<name>" [m, n], "soap.L.<name>" and "soap.Q_L.<name>"
  // [m, m], "soap.R.<name>" and "soap.Q_R.<name>" [n, n]; then the AdamW group's.
  std::vector<StateBuffer> state_buffers() override;

 private:
  // Reorders Q's columns by descending q_i^T S q_i (and V to match), then Q = qr(S Q). left: Q = Q_L.
  void refresh(const float* S, float* Q, int d, float* V, int rows, int cols, bool left);

  SoapHyper h_;
  std::vector<ParamInfo> mats_;
  std::vector<int64_t> off_mn_, off_mm_, off_nn_;
  std::vector<float> m_, v_, l_, r_, ql_, qr_;
  std::vector<float> a_, b_, p_, p2_;  // scratch: two [m, n], two [d, d]
  std::vector<double> est_;
  std::vector<int> order_;
  LinalgWorkspace ws_;
  AdamWGroup adamw_;
};

}  // namespace onestep
