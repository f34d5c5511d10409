// The model's forward and backward on the GPU: model/stage_compute.h instantiated with CudaOps. There is no
// CUDA copy of the model code; only the kernels differ.
#include "kernels/cuda/cuda_ops.h"
#include "model/stage_compute.h"

namespace onestep {

template double Stage::forward_on<CudaOps>(const CudaOps&, const float*, Activations&, const int32_t*, const float*,
                                           const int32_t*) const;
template void Stage::backward_on<CudaOps>(const CudaOps&, const float*, float*, Activations&, BackwardScratch&,
                                          const float*, float) const;

}  // namespace onestep
