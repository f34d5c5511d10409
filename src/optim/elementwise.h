// The loops shared by the element-wise optimizers (AdamW, Adan, Lion, MARS, SGD, and the Muon family's
// per-matrix passes): a walk over the parameters with their slices of the flat buffers, and a parallel
// loop over the elements of one slice. The per-element formula stays in each optimizer's own file.
#pragma once
#include <cstdint>
#include <vector>

#include "model/params.h"

namespace onestep::optim_detail {

// Below this many elements a loop runs on the calling thread alone.
inline constexpr int64_t kParallelMinElements = 32768;

// body(i) for i in [0, n), split statically over the OpenMP threads when n >= min_parallel: each element
// is computed by one thread with exactly body's expression, so the result does not depend on the split.
// Give a body that captures by value ([=]): GCC then keeps its pointers in registers and vectorizes the
// loop as it does a hand-written one (with [&] it reloads them through the closure and does not).
template <class Body>
inline void for_each_element(int64_t n, Body&& body, int64_t min_parallel = kParallelMinElements) {
#pragma omp parallel for schedule(static) if (n >= min_parallel)
  for (int64_t i = 0; i < n; ++i) body(i);
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
