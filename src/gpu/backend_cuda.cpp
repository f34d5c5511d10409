// The CUDA backend (train/backend.h): the model code with CudaOps, the optimizers of gpu/cuda_optimizer.h and
// the trainer's vector operations as kernels, all on the default stream of the current device.
#include "core/env.h"
#include "core/error.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/optim_cuda.h"
#include "gpu/cuda_op_profiler.h"
#include "gpu/cuda_optimizer.h"
#include "train/backend.h"

namespace onestep {
namespace {

namespace gpu = onestep::cuda;

// The copy lives on this thread's GPU; rounding is queued on this thread's stream, after the products queued before
// (which may still read the previous copy) and before those queued after.
class CudaRoundedWeights final : public RoundedWeights {
 public:
  explicit CudaRoundedWeights(int64_t n) : copy_(Device::cuda) { copy_.zeros(static_cast<size_t>(n)); }
  ~CudaRoundedWeights() override { forget(); }
  void round(const float* w) override {
    forget();
    gpu::copy_device(copy_.data(), w, static_cast<int64_t>(copy_.size()));  // rounds to nearest even
    gpu::use_rounded_weights(w, copy_.data(), static_cast<int64_t>(copy_.size()));
    w_ = w;
  }
  void forget() override {
    if (w_) gpu::unuse_rounded_weights(w_);
    w_ = nullptr;
  }

 private:
  Buffer<bf16> copy_;
  const float* w_ = nullptr;
};

class CudaBackend final : public Backend {
 public:
  Device device() const override { return Device::cuda; }
  double forward(const Stage& s, const float* w, Activations& a, const int32_t* tokens, const float* in_hidden,
                 const int32_t* targets) const override {
    if (a.operands == OperandStorage::bf16) return s.forward_on(bf16_ops_, w, a, tokens, in_hidden, targets);
    return s.forward_on(ops_, w, a, tokens, in_hidden, targets);
  }
  void backward(const Stage& s, const float* w, float* grad, Activations& a, BackwardScratch& scratch,
                const float* dout_hidden, float loss_scale) const override {
    if (a.operands == OperandStorage::bf16) return s.backward_on(bf16_ops_, w, grad, a, scratch, dout_hidden, loss_scale);
    s.backward_on(ops_, w, grad, a, scratch, dout_hidden, loss_scale);
  }
  // bf16 precision stores the matmul operands in bf16, unless ONESTEP_BF16_OPERANDS=fp32 keeps them in fp32 (each
  // matmul then rounds its input per call: the earlier design, kept for benchmarks to compare).
  OperandStorage operand_storage() const override {
    static const bool fp32_requested = env_is("ONESTEP_BF16_OPERANDS", "fp32");
    const bool bf16 = gpu::current_matmul_precision() == gpu::MatmulPrecision::bf16 && !fp32_requested;
    return bf16 ? OperandStorage::bf16 : OperandStorage::fp32;
  }
  std::unique_ptr<RoundedWeights> make_rounded_weights(int64_t n) const override {
    const bool per_call = env_is("ONESTEP_BF16_WEIGHTS", "per_call");  // read per call: the tests switch it
    if (per_call || operand_storage() != OperandStorage::bf16) return nullptr;
    return std::make_unique<CudaRoundedWeights>(n);
  }
  std::unique_ptr<Optimizer> make_optimizer(const OptimConfig& c, const ParamTable& table) const override {
    return make_cuda_optimizer(c, table, ops_.stream);
  }
  void fill_zero(float* y, int64_t n) const override { gpu::fill_zero(y, n, ops_.stream); }
  void copy(float* dst, const float* src, int64_t n) const override { gpu::copy_device(dst, src, n, ops_.stream); }
  void scale(float* y, float s, int64_t n) const override { gpu::scale_inplace(y, s, n, ops_.stream); }
  double sum_squares(const float* x, int64_t n) const override { return gpu::sum_squares(x, n, ops_.stream); }
  std::vector<double> sum_squares_each(const float* x,
                                       const std::vector<std::pair<int64_t, int64_t>>& pieces) const override {
    return gpu::sum_squares_each(x, pieces, ops_.stream);
  }
  void add(float* y, const float* x, int64_t n) const override { gpu::add_inplace(y, x, n, ops_.stream); }
  void dc_asgd(float* g, const float* w, const float* stale, int64_t n, float lambda) const override {
    gpu::dc_asgd_compensate(g, w, stale, n, lambda, ops_.stream);
  }
  void apply_update(float* x, const float* u, float* u_prev, int64_t n, float c) const override {
    if (!u_prev) gpu::sub_inplace(x, u, n, ops_.stream);
    else gpu::ef_apply_update(x, u, u_prev, n, c, ops_.stream);
  }
  void synchronize() const override {
    if (cudaStreamSynchronize(ops_.stream) != cudaSuccess) internal_error("cudaStreamSynchronize failed");
  }
  std::unique_ptr<OpProfiler> make_op_profiler() const override { return make_cuda_op_profiler(); }

 private:
  CudaOps ops_{};  // stream 0: the calling thread's own default stream (per-thread streams; core/buffer.cpp)
  CudaBf16Ops bf16_ops_{};
};

}  // namespace

const Backend& cuda_backend() {
  static const CudaBackend backend;
  return backend;
}

}  // namespace onestep
