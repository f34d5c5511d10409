#pragma once
#include <memory>

#include "kernels/op_profile.h"

namespace onestep {
std::unique_ptr<OpProfiler> make_cuda_op_profiler();  // CUDA events on the calling thread's stream
}
