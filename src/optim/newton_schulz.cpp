#include "optim/newton_schulz.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>

#include "optim/linalg.h"
#include "optim/reduce.h"

namespace onestep {

void NewtonSchulzWorkspace::reserve(int64_t rows, int64_t cols) {
  const int64_t n = rows * cols, s = std::min(rows, cols);
  if (static_cast<int64_t>(x_.size()) < n) {
    x_.resize(n);
    xn_.resize(n);
  }
  if (static_cast<int64_t>(a_.size()) < s * s) {
    a_.resize(s * s);
    b_.resize(s * s);
  }
}

namespace {

// dst[c, r] = src[r, c] * s, in 32 x 32 tiles.
void transpose_scaled(float* dst, const float* src, int64_t r, int64_t c, float s) {
  constexpr int64_t T = 32;
#pragma omp parallel for schedule(static) if (r * c >= 65536)
  for (int64_t i0 = 0; i0 < r; i0 += T)
    for (int64_t j0 = 0; j0 < c; j0 += T)
      for (int64_t i = i0; i < std::min(i0 + T, r); ++i)
        for (int64_t j = j0; j < std::min(j0 + T, c); ++j) dst[j * r + i] = src[i * c + j] * s;
}

}  // namespace

void newton_schulz(float* out, const float* G, int rows, int cols, int steps, float eps,
                   NewtonSchulzWorkspace& ws) {
  ws.reserve(rows, cols);  // no-op when reserved at construction
  const bool tr = rows > cols;
  const int64_t r = tr ? cols : rows, c = tr ? rows : cols;  // X is r x c with r <= c
  const int64_t n = r * c;
  const float inv = static_cast<float>(1.0 / (std::sqrt(optim_detail::sum_squares(G, n)) + eps));
  float* X = ws.x_.data();
  float* Xn = ws.xn_.data();
  float* A = ws.a_.data();
  float* B = ws.b_.data();
  if (tr) {
    transpose_scaled(X, G, rows, cols, inv);
  } else {
#pragma omp parallel for schedule(static) if (n >= 65536)
    for (int64_t i = 0; i < n; ++i) X[i] = G[i] * inv;
  }
  const int ri = static_cast<int>(r), ci = static_cast<int>(c);
  for (int k = 0; k < steps; ++k) {
    syrk_full(A, ri, ci, X, false, 1.0f, 0.0f);  // A = X X^T (half of sgemm's work)
    // B = b A + c A A
    for (int64_t i = 0; i < r * r; ++i) B[i] = kNsB * A[i];
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, ri, ri, ri, kNsC, A, ri, A, ri, 1.0f, B, ri);
    // Xn = a X + B X
    std::memcpy(Xn, X, sizeof(float) * n);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, ri, ci, ri, 1.0f, B, ri, X, ci, kNsA, Xn, ci);
    std::swap(X, Xn);
  }
  if (tr) {
    transpose_scaled(out, X, r, c, 1.0f);  // X is [cols, rows] -> out [rows, cols]
  } else {
    std::memcpy(out, X, sizeof(float) * n);
  }
}

}  // namespace onestep
