// The model's forward and backward on the GPU: model/stage_compute.h instantiated with CudaOps (fp32 storage) and
// CudaBf16Ops (bf16 matmul operands). There is no
// CUDA copy of the model code; only the kernels differ.
#include "kernels/cuda/cuda_ops.h"
#include "model/stage_compute.h"

namespace onestep {

template double Stage::forward_on<CudaOps>(const CudaOps&, const float*, Activations&, const int32_t*, const float*,
                                           const int32_t*) const;
template void Stage::backward_on<CudaOps>(const CudaOps&, const float*, float*, Activations&, BackwardScratch&,
                                          const float*, float) const;
template double Stage::forward_on<CudaBf16Ops>(const CudaBf16Ops&, const float*, Activations&, const int32_t*,
                                               const float*, const int32_t*) const;
template void Stage::backward_on<CudaBf16Ops>(const CudaBf16Ops&, const float*, float*, Activations&, BackwardScratch&,
                                              const float*, float) const;

}  // namespace onestep
