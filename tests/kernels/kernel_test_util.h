// Helpers for the kernel tests: random data, double copies, tolerance checks and finite differences.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

namespace kt {

inline std::vector<float> randn(size_t n, std::mt19937& rng, float stddev = 1.0f) {
  std::normal_distribution<float> d(0.0f, stddev);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

inline std::vector<double> to_double(const std::vector<float>& v) { return {v.begin(), v.end()}; }

template <class T>
inline double max_abs(const std::vector<T>& v) {
  double m = 0.0;
  for (T x : v) m = std::max(m, std::fabs(static_cast<double>(x)));
  return m;
}

// Element-wise |got - want| <= rtol * |want| + atol_rel * max|want| (want: a float or double reference).
template <class Ref>
inline void expect_close(const std::vector<float>& got, const std::vector<Ref>& want, double rtol,
                         double atol_rel, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  const double scale = std::max(max_abs(want), 1e-30);
  int bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double ref = static_cast<double>(want[i]);
    const double err = std::fabs(static_cast<double>(got[i]) - ref);
    if (!(err <= rtol * std::fabs(ref) + atol_rel * scale)) {
      if (++bad <= 5)
        ADD_FAILURE() << what << "[" << i << "]: got " << got[i] << " want " << want[i] << " (err " << err
                      << ", scale " << scale << ")";
    }
  }
  EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << got.size() << " elements out of tolerance";
}

// Central differences of loss() w.r.t. every element of x (perturbed in place and restored).
inline std::vector<double> numeric_grad(std::vector<double>& x, const std::function<double()>& loss,
                                        double h = 1e-5) {
  std::vector<double> g(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double x0 = x[i];
    x[i] = x0 + h;
    const double lp = loss();
    x[i] = x0 - h;
    const double lm = loss();
    x[i] = x0;
    g[i] = (lp - lm) / (2 * h);
  }
  return g;
}

// The kernel gradient against central differences of the double reference, element by element.
inline void expect_grad(const std::vector<float>& kernel_grad, std::vector<double>& x,
                        const std::function<double()>& loss, const std::string& what, double tol = 1e-3) {
  const auto fd = numeric_grad(x, loss);
  expect_close(kernel_grad, fd, tol, tol * 0.1, what);
}

// Directional derivative check for large inputs: for random directions u, compare <grad, u> with
// (L(x + h u) - L(x - h u)) / 2h.
inline void expect_directional(const std::vector<float>& kernel_grad, std::vector<double>& x,
                               const std::function<double()>& loss, std::mt19937& rng,
                               const std::string& what, int ndirs = 3, double tol = 1e-4) {
  const std::vector<double> x0 = x;
  for (int r = 0; r < ndirs; ++r) {
    const auto u = to_double(randn(x.size(), rng));
    double dot = 0.0, norm = 0.0;
    for (size_t i = 0; i < x.size(); ++i) {
      dot += kernel_grad[i] * u[i];
      norm += std::fabs(kernel_grad[i] * u[i]);
    }
    const double h = 1e-5;
    for (size_t i = 0; i < x.size(); ++i) x[i] = x0[i] + h * u[i];
    const double lp = loss();
    for (size_t i = 0; i < x.size(); ++i) x[i] = x0[i] - h * u[i];
    const double lm = loss();
    x = x0;
    const double fd = (lp - lm) / (2 * h);
    EXPECT_NEAR(dot, fd, tol * norm + 1e-9) << what << " direction " << r;
  }
}

inline double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0.0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

}  // namespace kt
