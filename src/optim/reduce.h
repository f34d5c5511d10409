// Deterministic reductions for the optimizers: the sum is split into fixed chunks (independent of the
// thread count), each chunk summed in double in a fixed order, then the chunk sums added in order.
// The result is therefore bit-identical for any thread count.
#pragma once
#include <cstdint>

namespace onestep::optim_detail {

double sum_squares(const float* x, int64_t n);

}  // namespace onestep::optim_detail
