// The optimizers of src/optim on the GPU, behind the same Optimizer interface: the same routing (muon_takes,
// mars_takes, decays, muon_scale), the same hyper-parameters (OptimConfig, defaults resolved) and the same
// checkpoint names and shapes for the state, so a checkpoint moves between the backends. Each parameter's
// update is one call of kernels/cuda/optim_cuda.h, queued on `stream`. x, g, u and the state are DEVICE
// memory; state_buffers() returns device pointers.
#pragma once
#include <cuda_runtime_api.h>

#include <memory>
#include <string>
#include <vector>

#include "optim/optim_config.h"
#include "optim/optimizer.h"

namespace onestep {

// SOAP has no CUDA kernels yet: bad input (exit 2) naming optim.name.
std::unique_ptr<Optimizer> make_cuda_optimizer(const OptimConfig& config, const ParamTable& table,
                                               cudaStream_t stream = 0);

// The state tensors make_cuda_optimizer allocates, by checkpoint name, with their shapes (host-only: testable
// without a GPU against the CPU optimizers' state_buffers()).
struct StateSpec {
  std::string name;
  std::vector<int64_t> shape;
};
std::vector<StateSpec> cuda_optimizer_state(const OptimConfig& config, const ParamTable& table);

}  // namespace onestep
