#include "optim/soap.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "optim/layout.h"

namespace onestep {

bool soap_takes(const ParamInfo& p) {
  return p.role == ParamRole::matrix && p.shape.size() == 2 && p.rows() <= kSoapMaxDim && p.cols() <= kSoapMaxDim;
}

namespace {

std::vector<ParamInfo> select(const ParamTable& t, bool want_soap) {
  std::vector<ParamInfo> out;
  for (const auto& p : t.all())
    if (soap_takes(p) == want_soap) out.push_back(p);
  return out;
}

// C[r, c] = op(A) op(B), row-major, fp32 OpenBLAS.
void gemm(bool ta, bool tb, int r, int c, int k, float alpha, const float* A, const float* B, float beta, float* C) {
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, r, c, k, alpha, A,
              ta ? r : k, B, tb ? k : c, beta, C, c);
}

}  // namespace

Soap::Soap(const ParamTable& table, SoapHyper h)
    : h_(h), mats_(select(table, true)), adamw_(select(table, false), {h.lr, h.beta1, h.beta2, h.eps, h.weight_decay}) {
  std::vector<int64_t> mn, mm, nn;
  int64_t max_mn = 0, max_dd = 0, max_d = 0;
  for (const auto& p : mats_) {
    mn.push_back(p.numel);
    mm.push_back(p.rows() * p.rows());
    nn.push_back(p.cols() * p.cols());
    max_mn = std::max(max_mn, p.numel);
    max_d = std::max({max_d, p.rows(), p.cols()});
  }
  max_dd = max_d * max_d;
  const int64_t tmn = optim_detail::pack(mn, off_mn_);
  m_.assign(tmn, 0.0f);
  v_.assign(tmn, 0.0f);
  l_.assign(optim_detail::pack(mm, off_mm_), 0.0f);
  ql_.assign(l_.size(), 0.0f);
  r_.assign(optim_detail::pack(nn, off_nn_), 0.0f);
  qr_.assign(r_.size(), 0.0f);
  a_.assign(max_mn, 0.0f);
  b_.assign(max_mn, 0.0f);
  p_.assign(max_dd, 0.0f);
  p2_.assign(max_dd, 0.0f);
  est_.assign(max_d, 0.0);
  order_.assign(max_d, 0);
}

void Soap::refresh(const float* S, float* Q, int d, float* V, int rows, int cols, bool left) {
  float* P = p_.data();
  float* P2 = p2_.data();
  gemm(false, false, d, d, d, 1.0f, S, Q, 0.0f, P);  // P = S Q
  for (int i = 0; i < d; ++i) {
    double e = 0;
    for (int k = 0; k < d; ++k) e += static_cast<double>(Q[static_cast<int64_t>(k) * d + i]) * P[static_cast<int64_t>(k) * d + i];
    est_[i] = e;
  }
  int* ord = order_.data();
  std::iota(ord, ord + d, 0);
  std::stable_sort(ord, ord + d, [&](int a, int b) { return est_[a] > est_[b]; });
  // Columns of S Q in the new order (S (Q Pi) = (S Q) Pi), and V re-indexed along the same dimension.
  for (int64_t i = 0; i < d; ++i)
    for (int64_t j = 0; j < d; ++j) P2[i * d + j] = P[i * d + ord[j]];
  float* T = a_.data();
  const int64_t n = static_cast<int64_t>(rows) * cols;
  if (left) {
    for (int64_t j = 0; j < rows; ++j) std::memcpy(T + j * cols, V + static_cast<int64_t>(ord[j]) * cols, sizeof(float) * cols);
  } else {
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < cols; ++j) T[i * cols + j] = V[i * cols + ord[j]];
  }
  std::memcpy(V, T, sizeof(float) * n);
  qr_orthonormal(P2, d, Q, ws_);
}

void Soap::compute_update(float* u, const float* x, const float* g, double lr_scale) {
  ++t_;
  const double lr = h_.lr * lr_scale;
  const double t = static_cast<double>(t_);
  const float b1 = static_cast<float>(h_.beta1), omb1 = static_cast<float>(1.0 - h_.beta1);
  const float b2 = static_cast<float>(h_.beta2), omb2 = static_cast<float>(1.0 - h_.beta2);
  const float inv_bc1 = static_cast<float>(1.0 / (1.0 - std::pow(h_.beta1, t)));
  const float inv_bc2 = static_cast<float>(1.0 / (1.0 - std::pow(h_.beta2, t)));
  const float eps = static_cast<float>(h_.eps), lrf = static_cast<float>(lr);
  const bool first = t_ == 1;
  const bool refresh_now = !first && (t_ - 1) % h_.precond_freq == 0;
  for (size_t k = 0; k < mats_.size(); ++k) {
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
    float* A = a_.data();
    float* B = b_.data();
    gemm(false, true, m, m, n, omb2, G, G, b2, L);  // L = b2 L + (1-b2) G G^T
    gemm(true, false, n, n, m, omb2, G, G, b2, R);  // R = b2 R + (1-b2) G^T G
    if (first) {
      sym_eigvecs_desc(L, m, QL, nullptr, ws_);
      sym_eigvecs_desc(R, n, QR, nullptr, ws_);
    } else if (refresh_now) {
      refresh(L, QL, m, V, m, n, true);
      refresh(R, QR, n, V, m, n, false);
    }
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
    float* up = u + p.offset;
    gemm(false, false, m, n, m, 1.0f, QL, B, 0.0f, A);
    gemm(false, true, m, n, n, 1.0f, A, QR, 0.0f, up);
    const float d = decays(p) ? static_cast<float>(lr * h_.weight_decay) : 0.0f;
    const float* xp = x + p.offset;
#pragma omp parallel for schedule(static) if (mn >= 32768)
    for (int64_t i = 0; i < mn; ++i) up[i] = lrf * up[i] + d * xp[i];
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
