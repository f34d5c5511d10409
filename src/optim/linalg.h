// Dense symmetric eigendecomposition and QR for SOAP's eigenbases, in double through the LAPACK routines
// that the linked OpenBLAS exports (dsyevd, dgeqrf, dorgqr), and the symmetric rank-k update that Muon's
// Newton–Schulz and SOAP's statistics share. Matrices are row-major float.
#pragma once
#include <vector>

namespace onestep {

class LinalgWorkspace {
 public:
  std::vector<double> a, w, tau, work;
  std::vector<int> iwork;
};

// C [n, n] = alpha op(A) op(A)^T + beta C, exactly symmetric: ssyrk computes the upper triangle (half of sgemm's
// work) and it is mirrored below. op(A) = A [n, k] or, with trans, A^T for A [k, n]. C must be symmetric when
// beta != 0 (ssyrk reads its upper triangle only).
void syrk_full(float* C, int n, int k, const float* A, bool trans, float alpha, float beta);

// Q's columns = orthonormal eigenvectors of the symmetric A (symmetrised as (A + A^T) / 2), ordered by
// descending eigenvalue; the eigenvalues are written to eval (descending) when it is not null.
// Throws internal_error if LAPACK fails, Error(diverged) for a non-finite A.
void sym_eigvecs_desc(const float* A, int n, float* Q, double* eval, LinalgWorkspace& ws);

// Q = the orthonormal factor of the Householder QR decomposition P = Q R (column signs as LAPACK gives
// them). Throws like sym_eigvecs_desc.
void qr_orthonormal(const float* P, int n, float* Q, LinalgWorkspace& ws);

}  // namespace onestep
