// Double-precision references for the optimizer tests, written from PAPER.md §3 independently of
// src/optim (naive loops, no BLAS).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "core/rng.h"

namespace optim_test {

using Mat = std::vector<double>;  // row-major

inline Mat matmul(const Mat& A, const Mat& B, int n, int k, int m) {  // [n,k] x [k,m]
  Mat C(static_cast<size_t>(n) * m, 0.0);
  for (int i = 0; i < n; ++i)
    for (int p = 0; p < k; ++p)
      for (int j = 0; j < m; ++j) C[i * m + j] += A[i * k + p] * B[p * m + j];
  return C;
}

inline Mat transpose(const Mat& A, int n, int m) {  // [n,m] -> [m,n]
  Mat T(A.size());
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < m; ++j) T[j * n + i] = A[i * m + j];
  return T;
}

// Muon's Newton–Schulz: normalise by the Frobenius norm (+eps), transpose when rows > cols,
// X <- a X + (b A + c A A) X with A = X X^T, transpose back.
inline Mat ns_reference(const Mat& G, int rows, int cols, int steps, double eps = 1e-7) {
  double fro = 0;
  for (double v : G) fro += v * v;
  fro = std::sqrt(fro);
  Mat X(G.size());
  for (size_t i = 0; i < G.size(); ++i) X[i] = G[i] / (fro + eps);
  bool tr = rows > cols;
  int r = rows, c = cols;
  if (tr) {
    X = transpose(X, rows, cols);
    std::swap(r, c);
  }
  const double a = 3.4445, b = -4.7750, cc = 2.0315;
  for (int k = 0; k < steps; ++k) {
    Mat A = matmul(X, transpose(X, r, c), r, c, r);
    Mat AA = matmul(A, A, r, r, r);
    Mat Bm(A.size());
    for (size_t i = 0; i < A.size(); ++i) Bm[i] = b * A[i] + cc * AA[i];
    Mat BX = matmul(Bm, X, r, r, c);
    for (size_t i = 0; i < X.size(); ++i) X[i] = a * X[i] + BX[i];
  }
  if (tr) X = transpose(X, r, c);
  return X;
}

// Eigenvalues of a symmetric n x n matrix by cyclic Jacobi rotations.
inline std::vector<double> jacobi_eigenvalues(Mat A, int n) {
  for (int sweep = 0; sweep < 100; ++sweep) {
    double off = 0;
    for (int i = 0; i < n; ++i)
      for (int j = 0; j < n; ++j)
        if (i != j) off += A[i * n + j] * A[i * n + j];
    if (off < 1e-22) break;
    for (int p = 0; p < n; ++p)
      for (int q = p + 1; q < n; ++q) {
        double apq = A[p * n + q];
        if (std::abs(apq) < 1e-300) continue;
        double theta = (A[q * n + q] - A[p * n + p]) / (2 * apq);
        double t = (theta >= 0 ? 1.0 : -1.0) / (std::abs(theta) + std::sqrt(theta * theta + 1));
        double c = 1 / std::sqrt(t * t + 1), s = t * c;
        for (int k = 0; k < n; ++k) {  // columns p, q
          double akp = A[k * n + p], akq = A[k * n + q];
          A[k * n + p] = c * akp - s * akq;
          A[k * n + q] = s * akp + c * akq;
        }
        for (int k = 0; k < n; ++k) {  // rows p, q
          double apk = A[p * n + k], aqk = A[q * n + k];
          A[p * n + k] = c * apk - s * aqk;
          A[q * n + k] = s * apk + c * aqk;
        }
      }
  }
  std::vector<double> ev(n);
  for (int i = 0; i < n; ++i) ev[i] = A[i * n + i];
  return ev;
}

// Symmetric eigendecomposition by cyclic Jacobi rotations: returns the eigenvalues in descending order and
// sets *vecs (row-major n x n) to the matching orthonormal eigenvectors as columns.
inline std::vector<double> jacobi_eigh_desc(Mat A, int n, Mat* vecs) {
  Mat V(static_cast<size_t>(n) * n, 0.0);
  for (int i = 0; i < n; ++i) V[i * n + i] = 1.0;
  for (int sweep = 0; sweep < 100; ++sweep) {
    double off = 0, tot = 0;
    for (int i = 0; i < n; ++i)
      for (int j = 0; j < n; ++j) {
        tot += A[i * n + j] * A[i * n + j];
        if (i != j) off += A[i * n + j] * A[i * n + j];
      }
    if (off <= 1e-30 * tot) break;
    for (int p = 0; p < n; ++p)
      for (int q = p + 1; q < n; ++q) {
        double apq = A[p * n + q];
        if (std::abs(apq) < 1e-300) continue;
        double theta = (A[q * n + q] - A[p * n + p]) / (2 * apq);
        double t = (theta >= 0 ? 1.0 : -1.0) / (std::abs(theta) + std::sqrt(theta * theta + 1));
        double c = 1 / std::sqrt(t * t + 1), s = t * c;
        for (int k = 0; k < n; ++k) {  // A <- A J, V <- V J
          double akp = A[k * n + p], akq = A[k * n + q];
          A[k * n + p] = c * akp - s * akq;
          A[k * n + q] = s * akp + c * akq;
          double vkp = V[k * n + p], vkq = V[k * n + q];
          V[k * n + p] = c * vkp - s * vkq;
          V[k * n + q] = s * vkp + c * vkq;
        }
        for (int k = 0; k < n; ++k) {  // A <- J^T A
          double apk = A[p * n + k], aqk = A[q * n + k];
          A[p * n + k] = c * apk - s * aqk;
          A[q * n + k] = s * apk + c * aqk;
        }
      }
  }
  std::vector<int> idx(n);
  for (int i = 0; i < n; ++i) idx[i] = i;
  std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return A[a * n + a] > A[b * n + b]; });
  std::vector<double> ev(n);
  Mat S(V.size());
  for (int j = 0; j < n; ++j) {
    ev[j] = A[idx[j] * n + idx[j]];
    for (int i = 0; i < n; ++i) S[i * n + j] = V[i * n + idx[j]];
  }
  *vecs = S;
  return ev;
}

// Orthonormal factor of P [n, n] by modified Gram–Schmidt (applied twice), columns in order.
inline Mat gram_schmidt(const Mat& P, int n) {
  Mat Q = P;
  for (int j = 0; j < n; ++j) {
    for (int pass = 0; pass < 2; ++pass)
      for (int i = 0; i < j; ++i) {
        double d = 0;
        for (int k = 0; k < n; ++k) d += Q[k * n + i] * Q[k * n + j];
        for (int k = 0; k < n; ++k) Q[k * n + j] -= d * Q[k * n + i];
      }
    double nn = 0;
    for (int k = 0; k < n; ++k) nn += Q[k * n + j] * Q[k * n + j];
    nn = std::sqrt(nn);
    for (int k = 0; k < n; ++k) Q[k * n + j] /= nn;
  }
  return Q;
}

// Singular values of a [rows, cols] matrix: sqrt of the eigenvalues of the smaller Gram matrix.
inline std::vector<double> singular_values(const Mat& X, int rows, int cols) {
  Mat G;
  int n;
  if (rows <= cols) {
    G = matmul(X, transpose(X, rows, cols), rows, cols, rows);
    n = rows;
  } else {
    G = matmul(transpose(X, rows, cols), X, cols, rows, cols);
    n = cols;
  }
  std::vector<double> ev = jacobi_eigenvalues(G, n);
  for (double& e : ev) e = std::sqrt(std::max(0.0, e));
  return ev;
}

inline std::vector<float> gaussian(int64_t n, uint64_t index, float scale = 1.0f) {
  onestep::CounterRng rng(1234, onestep::RngStream::test, index);
  std::vector<float> v(n);
  for (auto& x : v) x = scale * rng.normal();
  return v;
}

}  // namespace optim_test
