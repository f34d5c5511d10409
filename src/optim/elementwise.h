// The loops shared by the element-wise optimizers (AdamW, Adan, Lion, MARS, SGD, and the Muon family's
// per-matrix passes): a walk over the parameters with their slices of the flat buffers, and a parallel
// loop over the elements of one slice. The per-element formula stays in each optimizer's own file.
#pragma once
#include <cstdint>
#include <vector>

#include <omp.h>

#include "model/params.h"

namespace onestep::optim_detail {

// Below this many elements a loop runs on the calling thread alone.
inline constexpr int64_t kParallelMinElements = 32768;

// body(i) for i in [0, n), split into one contiguous range per OpenMP thread when n >= min_parallel: each
// element is computed by one thread with exactly body's expression, so the result does not depend on the split.
// Give a body that captures by value ([=]): GCC then keeps its pointers in registers and vectorizes the
// loop as it does a hand-written one (with [&] it reloads them through the closure and does not). The ranges
// are split by hand because GCC 12 does not vectorize the body of an `omp parallel for` loop (AdamW ran
// scalar at 5.9 ns per parameter; bench/bench_optimizer.cpp).
template <class Body>
inline void for_each_element(int64_t n, Body&& body, int64_t min_parallel = kParallelMinElements) {
  auto range = [&body](int64_t lo, int64_t hi) {
#pragma omp simd
    for (int64_t i = lo; i < hi; ++i) body(i);
  };
  if (n < min_parallel) return range(0, n);
#pragma omp parallel
  {
    const int64_t threads = omp_get_num_threads(), t = omp_get_thread_num();
    range(n * t / threads, n * (t + 1) / threads);
  }
}

// One parameter's slices of the flat buffers: weights x, gradient g, update u, numel n.
struct ParamView {
  const float* x;
  const float* g;
  float* u;
  int64_t n;
};

// f(k, params[k], its ParamView) for every parameter k, in order.
template <class F>
inline void for_each_param(const std::vector<ParamInfo>& params, float* u, const float* x, const float* g, F&& f) {
  for (size_t k = 0; k < params.size(); ++k) {
    const ParamInfo& p = params[k];
    f(k, p, ParamView{x + p.offset, g + p.offset, u + p.offset, p.numel});
  }
}

}  // namespace onestep::optim_detail
