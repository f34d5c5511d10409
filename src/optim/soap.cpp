#include "optim/soap.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "optim/layout.h"
#include "optim/linalg.h"
#include "optim/matrix_loop.h"

namespace onestep {

bool soap_takes(const ParamInfo& p) {
  return p.role == ParamRole::matrix && p.shape.size() == 2 && p.rows() <= kSoapMaxDim && p.cols() <= kSoapMaxDim;
}

namespace {

// C[r, c] = op(A) op(B), row-major, fp32 OpenBLAS.
void gemm(bool ta, bool tb, int r, int c, int k, float alpha, const float* A, const float* B, float beta, float* C) {
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, r, c, k, alpha, A,
              ta ? r : k, B, tb ? k : c, beta, C, c);
}

}  // namespace

Soap::Soap(const ParamTable& table, SoapHyper h)
    : h_(h),
      mats_(optim_detail::select_params(table, soap_takes, true)),
      adamw_(optim_detail::select_params(table, soap_takes, false), {h.lr, h.beta1, h.beta2, h.eps, h.weight_decay}) {
  std::vector<int64_t> mn, mm, nn;
  for (const auto& p : mats_) {
    mn.push_back(p.numel);
    mm.push_back(p.rows() * p.rows());
    nn.push_back(p.cols() * p.cols());
    max_mn_ = std::max(max_mn_, p.numel);
  }
  const int64_t tmn = optim_detail::pack(mn, off_mn_);
  m_.assign(tmn, 0.0f);
  v_.assign(tmn, 0.0f);
  l_.assign(optim_detail::pack(mm, off_mm_), 0.0f);
  ql_.assign(l_.size(), 0.0f);
  r_.assign(optim_detail::pack(nn, off_nn_), 0.0f);
  qr_.assign(r_.size(), 0.0f);
  // Per step a matrix costs about m n (m + n) multiply-adds (its rotations and statistics).
  largest_first_ = optim_detail::largest_first(mats_.size(), [this](size_t k) {
    return mats_[k].numel * (mats_[k].rows() + mats_[k].cols());
  });
}

namespace {

// One power-iteration + QR step for one side: the columns of Q are reordered by descending q_i^T S q_i and
// V (rows x cols) is re-indexed to match along its rows (left) or columns; then Q = qr(S Q).
void power_qr(const float* S, float* Q, int d, float* V, int64_t rows, int64_t cols, bool left,
              LinalgWorkspace& ws) {
  const int64_t dd = static_cast<int64_t>(d) * d;
  std::vector<float> P(dd), P2(dd);
  gemm(false, false, d, d, d, 1.0f, S, Q, 0.0f, P.data());  // P = S Q
  std::vector<double> est(d, 0.0);
  for (int64_t k = 0; k < d; ++k)
    for (int64_t i = 0; i < d; ++i) est[i] += static_cast<double>(Q[k * d + i]) * P[k * d + i];
  std::vector<int> ord(d);
  std::iota(ord.begin(), ord.end(), 0);
  std::stable_sort(ord.begin(), ord.end(), [&](int a, int b) { return est[a] > est[b]; });
  // S (Q Pi) = (S Q) Pi: the columns of P in the new order.
  for (int64_t i = 0; i < d; ++i)
    for (int64_t j = 0; j < d; ++j) P2[i * d + j] = P[i * d + ord[j]];
  std::vector<float> T(rows * cols);
  if (left) {
    for (int64_t i = 0; i < rows; ++i) std::memcpy(&T[i * cols], V + ord[i] * cols, sizeof(float) * cols);
  } else {
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < cols; ++j) T[i * cols + j] = V[i * cols + ord[j]];
  }
  std::memcpy(V, T.data(), sizeof(float) * rows * cols);
  qr_orthonormal(P2.data(), d, Q, ws);
}

}  // namespace

void soap_new_bases(const float* L, const float* R, float* QL, float* QR, float* V, int m, int n, bool first) {
  LinalgWorkspace ws;
  if (first) {
    sym_eigvecs_desc(L, m, QL, nullptr, ws);
    sym_eigvecs_desc(R, n, QR, nullptr, ws);
  } else {
    power_qr(L, QL, m, V, m, n, true, ws);
    power_qr(R, QR, n, V, m, n, false, ws);
  }
}

void Soap::new_bases(size_t k, bool first) {
  const ParamInfo& p = mats_[k];
  soap_new_bases(l_.data() + off_mm_[k], r_.data() + off_nn_[k], ql_.data() + off_mm_[k], qr_.data() + off_nn_[k],
                 v_.data() + off_mn_[k], static_cast<int>(p.rows()), static_cast<int>(p.cols()), first);
}

void Soap::compute_update(float* u, const float* x, const float* g, double lr_scale) {
  ++t_;
  const double lr = h_.lr * lr_scale;
  const int64_t s = t_ - 1;  // Adam steps so far, this one included
  const float b1 = static_cast<float>(h_.beta1), omb1 = static_cast<float>(1.0 - h_.beta1);
  const float b2 = static_cast<float>(h_.beta2), omb2 = static_cast<float>(1.0 - h_.beta2);
  const double sd = static_cast<double>(s);
  const float inv_bc1 = s > 0 ? static_cast<float>(1.0 / (1.0 - std::pow(h_.beta1, sd))) : 0.0f;
  const float inv_bc2 = s > 0 ? static_cast<float>(1.0 / (1.0 - std::pow(h_.beta2, sd))) : 0.0f;
  const float eps = static_cast<float>(h_.eps), lrf = static_cast<float>(lr);
  optim_detail::grow_to_slots(scratch_, [this] { return std::vector<float>(2 * max_mn_); });
  // The matrices are independent: shared out among the threads when there are at least 2 per thread.
  optim_detail::for_each_matrix(largest_first_, optim_detail::MatrixLoop::shared_out_if_many, [&](size_t k, int slot) {
    const ParamInfo& p = mats_[k];
    const int m = static_cast<int>(p.rows()), n = static_cast<int>(p.cols());
    const int64_t mn = p.numel;
    const float* G = g + p.offset;
    float* M = m_.data() + off_mn_[k];
    float* V = v_.data() + off_mn_[k];
    float* L = l_.data() + off_mm_[k];
    float* R = r_.data() + off_nn_[k];
    float* QL = ql_.data() + off_mm_[k];
    float* QR = qr_.data() + off_nn_[k];
    float* A = scratch_[slot].data();
    float* B = A + max_mn_;
    float* up = u + p.offset;
    if (s > 0) {
      // V with the rotated gradient G' = Q_L^T G Q_R; M in the original basis.
      gemm(true, false, m, n, m, 1.0f, QL, G, 0.0f, A);
      gemm(false, false, m, n, n, 1.0f, A, QR, 0.0f, B);
#pragma omp parallel for schedule(static) if (mn >= 32768)
      for (int64_t i = 0; i < mn; ++i) {
        V[i] = b2 * V[i] + omb2 * (B[i] * B[i]);
        M[i] = b1 * M[i] + omb1 * G[i];
      }
      // N' = (Q_L^T M Q_R / bc1) / (sqrt(V / bc2) + eps)
      gemm(true, false, m, n, m, 1.0f, QL, M, 0.0f, A);
      gemm(false, false, m, n, n, 1.0f, A, QR, 0.0f, B);
#pragma omp parallel for schedule(static) if (mn >= 32768)
      for (int64_t i = 0; i < mn; ++i) B[i] = (B[i] * inv_bc1) / (std::sqrt(V[i] * inv_bc2) + eps);
      // u = lr Q_L N' Q_R^T + lr wd x
      gemm(false, false, m, n, m, 1.0f, QL, B, 0.0f, A);
      gemm(false, true, m, n, n, 1.0f, A, QR, 0.0f, up);
      const float d = decays(p) ? static_cast<float>(lr * h_.weight_decay) : 0.0f;
      const float* xp = x + p.offset;
#pragma omp parallel for schedule(static) if (mn >= 32768)
      for (int64_t i = 0; i < mn; ++i) up[i] = lrf * up[i] + d * xp[i];
    } else {
      std::fill(up, up + mn, 0.0f);  // the first step only sets up the preconditioner
    }
    // Statistics after the step: the current gradient never enters its own projection.
    syrk_full(L, m, n, G, false, omb2, b2);  // L = b2 L + (1-b2) G G^T
    syrk_full(R, n, m, G, true, omb2, b2);   // R = b2 R + (1-b2) G^T G
  });
  if (soap_refreshes_bases(s, h_.precond_freq)) {
    // New bases for the next step, one matrix per thread always, so that they do not depend on the thread count.
    optim_detail::for_each_matrix(largest_first_, optim_detail::MatrixLoop::shared_out,
                                  [&](size_t k, int) { new_bases(k, s == 0); });
  }
  adamw_.update(u, x, g, lr_scale, t_);
}

std::vector<StateBuffer> Soap::state_buffers() {
  std::vector<StateBuffer> out;
  for (size_t k = 0; k < mats_.size(); ++k) {
    const ParamInfo& p = mats_[k];
    const std::vector<int64_t> mm = {p.rows(), p.rows()}, nn = {p.cols(), p.cols()};
    out.push_back({"soap.m." + p.name, m_.data() + off_mn_[k], p.shape});
    out.push_back({"soap.v." + p.name, v_.data() + off_mn_[k], p.shape});
    out.push_back({"soap.L." + p.name, l_.data() + off_mm_[k], mm});
    out.push_back({"soap.R." + p.name, r_.data() + off_nn_[k], nn});
    out.push_back({"soap.Q_L." + p.name, ql_.data() + off_mm_[k], mm});
    out.push_back({"soap.Q_R." + p.name, qr_.data() + off_nn_[k], nn});
  }
  adamw_.append_state(out);
  return out;
}

}  // namespace onestep
