// Where a stage computes: the model's forward and backward, the optimizer, and the few vector operations the
// trainer applies to a stage's flat buffers (weights, gradient, update). One trainer drives every backend;
// only this interface's implementations differ: the CPU one (train/backend.cpp) and the CUDA one
// (gpu/backend_cuda.cpp, in builds with ONESTEP_CUDA). Every pointer lives on device().
#pragma once
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "core/buffer.h"
#include "kernels/op_profile.h"
#include "model/stage.h"
#include "optim/optim_config.h"
#include "optim/optimizer.h"

namespace onestep {

// A bf16 copy of a weight vector that stays constant over many products (bf16 precision on the GPU, where each
// product otherwise rounds its weight per call: twice per micro-batch). round(w) rounds w once; until forget(), the
// calling thread's products whose weights lie in w read the copy (the same bits). Call forget() before w changes,
// and use the object on one thread. Re-rounding reuses the copy's memory (no allocation, no device-wide wait).
class RoundedWeights {
 public:
  virtual ~RoundedWeights() = default;
  virtual void round(const float* w) = 0;
  virtual void forget() = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual Device device() const = 0;

  // Stage::forward / backward on this backend (tokens and targets are HOST arrays).
  virtual double forward(const Stage& s, const float* w, Activations& a, const int32_t* tokens,
                         const float* in_hidden, const int32_t* targets) const = 0;
  virtual void backward(const Stage& s, const float* w, float* grad, Activations& a, BackwardScratch& scratch,
                        const float* dout_hidden, float loss_scale) const = 0;
  // How the activations and backward scratch this backend computes on store the products' operands (model/stage.h),
  // and activations and scratch made that way for a micro-batch of B sequences of length T.
  virtual OperandStorage operand_storage() const { return OperandStorage::fp32; }
  // A RoundedWeights for weight vectors of n floats; nullptr where products do not round their weights (the CPU,
  // fp32 and tf32 precision, and ONESTEP_BF16_WEIGHTS=per_call, kept to measure what rounding once saves).
  virtual std::unique_ptr<RoundedWeights> make_rounded_weights(int64_t /*n*/) const { return nullptr; }
  std::unique_ptr<Activations> make_activations(const Stage& s, int B, int T) const {
    return s.make_activations(B, T, device(), operand_storage());
  }
  std::unique_ptr<BackwardScratch> make_scratch(const Stage& s, int B, int T) const {
    return s.make_scratch(B, T, device(), operand_storage());
  }
  // make_optimizer's routing and hyper-parameters, its state on this device.
  virtual std::unique_ptr<Optimizer> make_optimizer(const OptimConfig& c, const ParamTable& table) const = 0;

  virtual void fill_zero(float* y, int64_t n) const = 0;
  virtual void copy(float* dst, const float* src, int64_t n) const = 0;
  virtual void scale(float* y, float s, int64_t n) const = 0;
  virtual double sum_squares(const float* x, int64_t n) const = 0;  // in double
  // sum_squares of each piece x[offset, offset + count), in order; the GPU waits once for all of them.
  virtual std::vector<double> sum_squares_each(const float* x,
                                               const std::vector<std::pair<int64_t, int64_t>>& pieces) const {
    std::vector<double> out;
    out.reserve(pieces.size());
    for (const auto& [offset, count] : pieces) out.push_back(sum_squares(x + offset, count));
    return out;
  }
  virtual void add(float* y, const float* x, int64_t n) const = 0;  // y <- y + x
  // a = b = a + b (the tied embedding's two gradient copies): the sum formed once, so both hold the same bits.
  void sum_pair(float* a, float* b, int64_t n) const {
    add(a, b, n);
    copy(b, a, n);
  }
  // DC-ASGD: g <- g + lambda g g (w - stale).
  virtual void dc_asgd(float* g, const float* w, const float* stale, int64_t n, float lambda) const = 0;
  // u_prev null: x <- x - u. Otherwise EF: x <- x - (u + c (u - u_prev)), then u_prev <- u.
  virtual void apply_update(float* x, const float* u, float* u_prev, int64_t n, float c) const = 0;
  // Waits for the queued work (timing); the CPU's work is never queued.
  virtual void synchronize() const {}
  // Times the model's kernel calls on this device while active (kernels/op_profile.h).
  virtual std::unique_ptr<OpProfiler> make_op_profiler() const { return make_host_op_profiler(); }
};

// The backend of a device (one shared instance each). Device::cuda throws bad_input naming train.device in a
// build without the CUDA backend or on a machine without a GPU.
const Backend& backend_for(Device d);
Device parse_device(const std::string& name);  // "cpu" | "cuda" (validated by the config parser)
// train.precision for the process (validated by the config: "tf32" and "bf16" only with "cuda"): on CUDA, the
// arithmetic of the model's matmuls (kernels/cuda/ops_cuda.h: MatmulPrecision); in bf16 also the storage of the
// matmul operands among the activations (Backend::operand_storage). Weights, gradients and optimizer state stay fp32.
void use_precision(Device d, const std::string& precision);

#ifdef ONESTEP_HAVE_CUDA
const Backend& cuda_backend();  // gpu/backend_cuda.cpp
#endif

}  // namespace onestep
