// SOAP against a double reference written from PAPER.md §3 / the SOAP paper (Jacobi eigenvectors, Gram–Schmidt
// QR), and the LAPACK helpers it uses.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include "optim/linalg.h"
#include "optim/optimizer.h"
#include "reference.h"

using namespace onestep;
using optim_test::Mat;
using optim_test::matmul;
using optim_test::transpose;

namespace {

double max_abs(const Mat& m) {
  double a = 0;
  for (double v : m) a = std::max(a, std::abs(v));
  return a;
}

Mat random_sym(int n, uint64_t seed) {
  auto a = optim_test::gaussian(n * n, seed);
  Mat A(n * n);
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) A[i * n + j] = 0.5 * (double(a[i * n + j]) + a[j * n + i]);
  return A;
}

// SOAP for one [m, n] matrix, b = (b1, b2), eps, refresh period f. Call t = 1 only sets L, R and the
// eigenbases (u = 0); call t > 1 is Adam step s = t - 1 in the rotated basis (M kept in the original basis),
// then L and R absorb G and, when s % f == 0, each basis is reordered by descending q^T L q (V along with
// it) and replaced by the Gram–Schmidt orthonormalisation of L Q.
struct RefSoap {
  int m, n;
  double b1, b2, eps;
  int f;
  Mat M, V, L, R, QL, QR;

  void refresh(const Mat& S, Mat& Q, int d, bool left) {
    Mat SQ = matmul(S, Q, d, d, d), QtSQ = matmul(transpose(Q, d, d), SQ, d, d, d);
    std::vector<int> ord(d);
    std::iota(ord.begin(), ord.end(), 0);
    std::stable_sort(ord.begin(), ord.end(), [&](int a, int b) { return QtSQ[a * d + a] > QtSQ[b * d + b]; });
    Mat Qs(d * d), Vs(V.size());
    for (int i = 0; i < d; ++i)
      for (int j = 0; j < d; ++j) Qs[i * d + j] = Q[i * d + ord[j]];
    for (int i = 0; i < m; ++i)
      for (int j = 0; j < n; ++j) Vs[i * n + j] = left ? V[ord[i] * n + j] : V[i * n + ord[j]];
    V = Vs;
    Q = optim_test::gram_schmidt(matmul(S, Qs, d, d, d), d);
  }

  void absorb(const Mat& G) {
    Mat GGt = matmul(G, transpose(G, m, n), m, n, m), GtG = matmul(transpose(G, m, n), G, n, m, n);
    for (int i = 0; i < m * m; ++i) L[i] = b2 * L[i] + (1 - b2) * GGt[i];
    for (int i = 0; i < n * n; ++i) R[i] = b2 * R[i] + (1 - b2) * GtG[i];
  }

  Mat step(const float* gf, const float* x, int t, double lr, double wd) {
    Mat G(gf, gf + m * n);
    if (t == 1) {
      M.assign(m * n, 0.0), V.assign(m * n, 0.0), L.assign(m * m, 0.0), R.assign(n * n, 0.0);
      absorb(G);
      optim_test::jacobi_eigh_desc(L, m, &QL);
      optim_test::jacobi_eigh_desc(R, n, &QR);
      return Mat(m * n, 0.0);
    }
    const int s = t - 1;
    auto rot = [&](const Mat& A) { return matmul(matmul(transpose(QL, m, m), A, m, m, n), QR, m, n, n); };
    Mat Gp = rot(G);
    for (int i = 0; i < m * n; ++i) {
      M[i] = b1 * M[i] + (1 - b1) * G[i];
      V[i] = b2 * V[i] + (1 - b2) * Gp[i] * Gp[i];
    }
    Mat Mp = rot(M), Np(m * n);
    for (int i = 0; i < m * n; ++i)
      Np[i] = (Mp[i] / (1 - std::pow(b1, s))) / (std::sqrt(V[i] / (1 - std::pow(b2, s))) + eps);
    Mat N = matmul(matmul(QL, Np, m, m, n), transpose(QR, n, n), m, n, n);
    Mat u(m * n);
    for (int i = 0; i < m * n; ++i) u[i] = lr * N[i] + lr * wd * x[i];
    absorb(G);
    if (s % f == 0) {
      refresh(L, QL, m, true);
      refresh(R, QR, n, false);
    }
    return u;
  }
};

const StateBuffer& find_state(const std::vector<StateBuffer>& sb, const std::string& name) {
  for (const auto& b : sb)
    if (b.name == name) return b;
  throw std::runtime_error("no state " + name);
}

OptimConfig soap_config(int freq) {
  OptimConfig c;
  c.name = "soap";
  c.lr = 0.01;
  c.weight_decay = 0.1;
  c.precond_freq = freq;
  return c;
}

}  // namespace

TEST(Linalg, SymmetricEigenvectorsDescending) {
  const int n = 9;
  Mat A = random_sym(n, 500);
  std::vector<float> Af(A.begin(), A.end()), Q(n * n);
  std::vector<double> ev(n);
  LinalgWorkspace ws;
  sym_eigvecs_desc(Af.data(), n, Q.data(), ev.data(), ws);
  Mat vecs;
  std::vector<double> want = optim_test::jacobi_eigh_desc(A, n, &vecs);
  for (int i = 0; i < n; ++i) EXPECT_NEAR(ev[i], want[i], 1e-5) << i;
  // A q_j = lambda_j q_j and Q^T Q = I.
  Mat Qd(Q.begin(), Q.end());
  Mat AQ = matmul(A, Qd, n, n, n), QtQ = matmul(transpose(Qd, n, n), Qd, n, n, n);
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) {
      EXPECT_NEAR(AQ[i * n + j], ev[j] * Qd[i * n + j], 1e-5);
      EXPECT_NEAR(QtQ[i * n + j], i == j ? 1.0 : 0.0, 1e-6);
    }
}

TEST(Linalg, QrMatchesGramSchmidtUpToSigns) {
  const int n = 7;
  auto P = optim_test::gaussian(n * n, 501);
  std::vector<float> Q(n * n);
  LinalgWorkspace ws;
  qr_orthonormal(P.data(), n, Q.data(), ws);
  Mat want = optim_test::gram_schmidt(Mat(P.begin(), P.end()), n);
  for (int j = 0; j < n; ++j) {
    const double sign = Q[j] * want[j] < 0 ? -1.0 : 1.0;  // first row decides the column's sign
    for (int i = 0; i < n; ++i) EXPECT_NEAR(Q[i * n + j], sign * want[i * n + j], 1e-5) << i << "," << j;
  }
}

// C = alpha op(A) op(A)^T + beta C against a double reference, both ways round (A [n, k] and, transposed, A [k, n]),
// with a symmetric C to update; the result is exactly symmetric (the lower triangle mirrors ssyrk's upper).
TEST(Linalg, SymmetricRankUpdateBothWaysRound) {
  const int n = 6, k = 11;
  const auto A = optim_test::gaussian(int64_t{n} * k, 502);
  for (bool trans : {false, true}) {
    Mat C0 = random_sym(n, 503);
    std::vector<float> C(C0.begin(), C0.end());
    syrk_full(C.data(), n, k, A.data(), trans, 0.3f, 0.7f);
    for (int i = 0; i < n; ++i)
      for (int j = 0; j < n; ++j) {
        double dot = 0;  // row i of op(A) with row j of op(A)
        for (int t = 0; t < k; ++t)
          dot += trans ? double(A[t * n + i]) * A[t * n + j] : double(A[i * k + t]) * A[j * k + t];
        EXPECT_NEAR(C[i * n + j], 0.3 * dot + 0.7 * float(C0[i * n + j]), 1e-5) << trans << " " << i << "," << j;
        EXPECT_EQ(C[i * n + j], C[j * n + i]);
      }
  }
}

class SoapFreq : public ::testing::TestWithParam<int> {};

TEST_P(SoapFreq, SquareMatricesEightStepsMatchDoubleReference) {
  // Square matrices: L and R are full rank with distinct eigenvalues, so the eigenbases are unique up to
  // column signs (which the update does not depend on) and the runs are comparable step by step.
  const int freq = GetParam();
  ParamTable t;
  t.add("model.layers.0.self_attn.q_proj.weight", {5, 5}, ParamRole::matrix);
  t.add("model.layers.0.self_attn.o_proj.weight", {6, 6}, ParamRole::matrix);
  const int64_t N = t.total();
  auto x = optim_test::gaussian(N, 600);
  std::vector<float> u(N);
  auto opt = make_optimizer(soap_config(freq), t);  // defaults b = (0.95, 0.95), eps 1e-8
  RefSoap r5{5, 5, 0.95, 0.95, 1e-8, freq, {}, {}, {}, {}, {}, {}};
  RefSoap r6{6, 6, 0.95, 0.95, 1e-8, freq, {}, {}, {}, {}, {}, {}};
  const double scales[8] = {1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3};
  for (int step = 1; step <= 8; ++step) {
    auto g = optim_test::gaussian(N, 600 + step);
    opt->compute_update(u.data(), x.data(), g.data(), scales[step - 1]);
    for (RefSoap* r : {&r5, &r6}) {
      const ParamInfo& p = t.all()[r == &r5 ? 0 : 1];
      Mat want = r->step(g.data() + p.offset, x.data() + p.offset, step, 0.01 * scales[step - 1], 0.1);
      const double tol = 2e-4 * max_abs(want);
      for (int64_t i = 0; i < p.numel; ++i)
        EXPECT_NEAR(u[p.offset + i], want[i], tol) << p.name << "[" << i << "] step " << step;
    }
    for (int64_t k = 0; k < N; ++k) x[k] -= u[k];
  }
  // Statistics and moments in the state buffers.
  auto sb = opt->state_buffers();
  const std::string q = "model.layers.0.self_attn.q_proj.weight", o = "model.layers.0.self_attn.o_proj.weight";
  const StateBuffer& L = find_state(sb, "soap.L." + q);
  for (int i = 0; i < 25; ++i) EXPECT_NEAR(L.data[i], r5.L[i], 1e-5 * (1 + std::abs(r5.L[i])));
  const StateBuffer& M = find_state(sb, "soap.m." + q);
  for (int i = 0; i < 25; ++i) EXPECT_NEAR(M.data[i], r5.M[i], 1e-6);
  const StateBuffer& V = find_state(sb, "soap.v." + o);
  for (int i = 0; i < 36; ++i) EXPECT_NEAR(V.data[i], r6.V[i], 1e-4 * (1e-3 + std::abs(r6.V[i])));
}

INSTANTIATE_TEST_SUITE_P(RefreshPeriods, SoapFreq, ::testing::Values(1, 2, 10));

TEST(Soap, RectangularMatricesFromTheSameEigenbasis) {
  // For a rectangular G_1, G_1 G_1^T (or G_1^T G_1) is singular and any basis of its null space is an
  // eigenbasis. After checking that the code's Q_L, Q_R from step 1 are eigenbases of the reference L, R
  // (descending), the reference continues from them, independently for the following steps.
  ParamTable t;
  t.add("model.layers.0.mlp.up_proj.weight", {8, 5}, ParamRole::matrix);
  t.add("model.layers.0.mlp.down_proj.weight", {5, 8}, ParamRole::matrix);
  const int64_t N = t.total();
  auto x = optim_test::gaussian(N, 700);
  std::vector<float> u(N);
  auto opt = make_optimizer(soap_config(2), t);
  std::vector<RefSoap> ref;
  for (const auto& p : t.all()) ref.push_back({int(p.rows()), int(p.cols()), 0.95, 0.95, 1e-8, 2, {}, {}, {}, {}, {}, {}});
  for (int step = 1; step <= 7; ++step) {
    auto g = optim_test::gaussian(N, 700 + step);
    opt->compute_update(u.data(), x.data(), g.data(), 1.0);
    for (size_t k = 0; k < t.size(); ++k) {
      const ParamInfo& p = t.all()[k];
      RefSoap& r = ref[k];
      Mat want = r.step(g.data() + p.offset, x.data() + p.offset, step, 0.01, 0.1);
      if (step == 1) {
        for (int64_t i = 0; i < p.numel; ++i) EXPECT_EQ(u[p.offset + i], 0.0f);
        auto sb = opt->state_buffers();
        for (bool left : {true, false}) {
          const int d = left ? r.m : r.n;
          const StateBuffer& Qs = find_state(sb, (left ? "soap.Q_L." : "soap.Q_R.") + p.name);
          Mat Q(Qs.data, Qs.data + d * d);
          const Mat& S = left ? r.L : r.R;
          Mat vecs;
          std::vector<double> ev = optim_test::jacobi_eigh_desc(S, d, &vecs);
          Mat D = matmul(transpose(Q, d, d), matmul(S, Q, d, d, d), d, d, d);
          for (int i = 0; i < d; ++i)
            for (int j = 0; j < d; ++j)
              EXPECT_NEAR(D[i * d + j], i == j ? ev[i] : 0.0, 1e-5 * (1 + std::abs(ev[0]))) << p.name;
          (left ? r.QL : r.QR) = Q;
        }
        continue;
      }
      for (int64_t i = 0; i < p.numel; ++i)
        EXPECT_NEAR(u[p.offset + i], want[i], 2e-4 * max_abs(want)) << p.name << "[" << i << "] step " << step;
    }
    for (int64_t k = 0; k < N; ++k) x[k] -= u[k];
  }
}

TEST(Soap, RoutesEmbeddingHeadNormsAndLargeMatricesToAdamW) {
  ParamTable t;
  t.add("model.embed_tokens.weight", {10, 6}, ParamRole::embedding);
  t.add("model.layers.0.input_layernorm.weight", {6}, ParamRole::norm);
  t.add("model.layers.0.mlp.up_proj.weight", {4, 6}, ParamRole::matrix);
  t.add("model.layers.0.mlp.big.weight", {4097, 2}, ParamRole::matrix);  // over the 4096 limit
  t.add("lm_head.weight", {10, 6}, ParamRole::head);
  auto x = optim_test::gaussian(t.total(), 800), g = optim_test::gaussian(t.total(), 801);
  std::vector<float> u(t.total());
  auto opt = make_optimizer(soap_config(10), t);
  opt->compute_update(u.data(), x.data(), g.data(), 0.5);
  // AdamW first step with SOAP's lr and eps: u = lr (g / (|g| + eps) + wd x); the SOAP matrix rests.
  for (const auto& p : t.all()) {
    if (p.name == "model.layers.0.mlp.up_proj.weight") {
      for (int64_t i = 0; i < p.numel; ++i) EXPECT_EQ(u[p.offset + i], 0.0f);
      continue;
    }
    const double wd = p.role == ParamRole::norm ? 0.0 : 0.1;
    for (int64_t i = 0; i < p.numel; ++i) {
      const double gi = g[p.offset + i];
      const double want = 0.005 * (gi / (std::abs(gi) + 1e-8) + wd * x[p.offset + i]);
      EXPECT_NEAR(u[p.offset + i], want, 1e-9 + 1e-5 * std::abs(want)) << p.name;
    }
  }
  std::vector<std::string> names;
  for (const auto& b : opt->state_buffers()) names.push_back(b.name);
  std::sort(names.begin(), names.end());
  const std::string up = "model.layers.0.mlp.up_proj.weight";
  std::vector<std::string> expect = {"adamw.m.lm_head.weight",
                                     "adamw.m.model.embed_tokens.weight",
                                     "adamw.m.model.layers.0.input_layernorm.weight",
                                     "adamw.m.model.layers.0.mlp.big.weight",
                                     "adamw.v.lm_head.weight",
                                     "adamw.v.model.embed_tokens.weight",
                                     "adamw.v.model.layers.0.input_layernorm.weight",
                                     "adamw.v.model.layers.0.mlp.big.weight",
                                     "soap.L." + up, "soap.Q_L." + up, "soap.Q_R." + up, "soap.R." + up,
                                     "soap.m." + up, "soap.v." + up};
  std::sort(expect.begin(), expect.end());
  EXPECT_EQ(names, expect);
}
