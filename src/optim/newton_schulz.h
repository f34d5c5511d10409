// Newton–Schulz orthogonalisation for Muon (PAPER.md §3), fp32 through OpenBLAS (ssyrk for the Gram matrix, sgemm).
#pragma once
#include <cstdint>
#include <vector>

namespace onestep {

// Quintic coefficients (a, b, c) of the Muon iteration X <- a X + (b A + c A A) X, A = X X^T.
inline constexpr float kNsA = 3.4445f, kNsB = -4.7750f, kNsC = 2.0315f;

// Scratch buffers, sized once for the largest matrix (reserve) so that steps never allocate.
class NewtonSchulzWorkspace {
 public:
  void reserve(int64_t rows, int64_t cols);  // grows to fit a rows x cols matrix (either orientation)

 private:
  friend void newton_schulz(float*, const float*, int, int, int, float, NewtonSchulzWorkspace&);
  std::vector<float> x_, xn_, a_, b_;
};

// out[rows, cols] = NS(G): X = G / (||G||_F + eps); if rows > cols X is transposed so that the Gram
// matrix A = X X^T is the small one; `steps` iterations; the result is transposed back. out may alias G.
// Deterministic for a fixed thread count.
void newton_schulz(float* out, const float* G, int rows, int cols, int steps, float eps,
                   NewtonSchulzWorkspace& ws);

}  // namespace onestep
