#include "optim/linalg.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <string>

#include "core/error.h"

// LAPACK (Fortran ABI, column-major); the trailing size_t are the hidden lengths of the character arguments.
extern "C" {
void dsyevd_(const char* jobz, const char* uplo, const int* n, double* a, const int* lda, double* w,
             double* work, const int* lwork, int* iwork, const int* liwork, int* info, size_t, size_t);
void dgeqrf_(const int* m, const int* n, double* a, const int* lda, double* tau, double* work, const int* lwork,
             int* info);
void dorgqr_(const int* m, const int* n, const int* k, double* a, const int* lda, const double* tau,
             double* work, const int* lwork, int* info);
}

namespace onestep {

void syrk_full(float* C, int n, int k, const float* A, bool trans, float alpha, float beta) {
  cblas_ssyrk(CblasRowMajor, CblasUpper, trans ? CblasTrans : CblasNoTrans, n, k, alpha, A, trans ? n : k, beta, C, n);
  for (int64_t i = 1; i < n; ++i)
    for (int64_t j = 0; j < i; ++j) C[i * n + j] = C[j * n + i];
}

namespace {

void check_finite(const float* A, int64_t n, const char* what) {
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(A[i])) throw Error(ExitCode::diverged, std::string(what) + ": non-finite input matrix");
}

void check_info(int info, const char* routine) {
  if (info != 0) internal_error(std::string("LAPACK ") + routine + " failed, info = " + std::to_string(info));
}

}  // namespace

void sym_eigvecs_desc(const float* A, int n, float* Q, double* eval, LinalgWorkspace& ws) {
  const int64_t nn = static_cast<int64_t>(n) * n;
  check_finite(A, nn, "sym_eigvecs_desc");
  ws.a.resize(nn);
  ws.w.resize(n);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j)
      ws.a[i + j * n] = 0.5 * (static_cast<double>(A[i * n + j]) + static_cast<double>(A[j * n + i]));
  const char jobz = 'V', uplo = 'L';
  int info = 0, lwork = -1, liwork = -1, iq = 0;
  double wq = 0;
  dsyevd_(&jobz, &uplo, &n, ws.a.data(), &n, ws.w.data(), &wq, &lwork, &iq, &liwork, &info, 1, 1);
  check_info(info, "dsyevd (query)");
  lwork = static_cast<int>(wq);
  liwork = iq;
  ws.work.resize(std::max(lwork, 1));
  ws.iwork.resize(std::max(liwork, 1));
  dsyevd_(&jobz, &uplo, &n, ws.a.data(), &n, ws.w.data(), ws.work.data(), &lwork, ws.iwork.data(), &liwork,
          &info, 1, 1);
  check_info(info, "dsyevd");
  // LAPACK: column j of a (a[i + j n]) is the eigenvector of the j-th smallest eigenvalue.
  for (int64_t c = 0; c < n; ++c) {
    const int64_t src = n - 1 - c;
    for (int64_t i = 0; i < n; ++i) Q[i * n + c] = static_cast<float>(ws.a[i + src * n]);
    if (eval) eval[c] = ws.w[src];
  }
}

void qr_orthonormal(const float* P, int n, float* Q, LinalgWorkspace& ws) {
  const int64_t nn = static_cast<int64_t>(n) * n;
  check_finite(P, nn, "qr_orthonormal");
  ws.a.resize(nn);
  ws.tau.resize(n);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) ws.a[i + j * n] = P[i * n + j];
  int info = 0, lwork = -1;
  double wq1 = 0, wq2 = 0;
  dgeqrf_(&n, &n, ws.a.data(), &n, ws.tau.data(), &wq1, &lwork, &info);
  check_info(info, "dgeqrf (query)");
  dorgqr_(&n, &n, &n, ws.a.data(), &n, ws.tau.data(), &wq2, &lwork, &info);
  check_info(info, "dorgqr (query)");
  lwork = std::max(1, static_cast<int>(std::max(wq1, wq2)));
  ws.work.resize(lwork);
  dgeqrf_(&n, &n, ws.a.data(), &n, ws.tau.data(), ws.work.data(), &lwork, &info);
  check_info(info, "dgeqrf");
  dorgqr_(&n, &n, &n, ws.a.data(), &n, ws.tau.data(), ws.work.data(), &lwork, &info);
  check_info(info, "dorgqr");
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) Q[i * n + j] = static_cast<float>(ws.a[i + j * n]);
}

}  // namespace onestep
