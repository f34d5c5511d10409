// One threading runtime: our kernels use OpenMP and OpenBLAS is its OpenMP build, so a single call
// sets the thread count for both.
#pragma once

namespace onestep {
void set_num_threads(int n);  // n <= 0: leave the runtime's default
int num_threads();
}  // namespace onestep
