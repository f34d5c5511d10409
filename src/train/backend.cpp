#include "train/backend.h"

#include <algorithm>

#include "core/error.h"
#include "kernels/cpu/ops.h"
#ifdef ONESTEP_HAVE_CUDA
#include "kernels/cuda/ops_cuda.h"
#endif

namespace onestep {
namespace {

class CpuBackend final : public Backend {
 public:
  Device device() const override { return Device::cpu; }
  double forward(const Stage& s, const float* w, Activations& a, const int32_t* tokens, const float* in_hidden,
                 const int32_t* targets) const override {
    return s.forward(w, a, tokens, in_hidden, targets);
  }
  void backward(const Stage& s, const float* w, float* grad, Activations& a, BackwardScratch& scratch,
                const float* dout_hidden, float loss_scale) const override {
    s.backward(w, grad, a, scratch, dout_hidden, loss_scale);
  }
  std::unique_ptr<Optimizer> make_optimizer(const OptimConfig& c, const ParamTable& table) const override {
    return onestep::make_optimizer(c, table);
  }
  void fill_zero(float* y, int64_t n) const override { cpu::fill_zero(y, n); }
  void copy(float* dst, const float* src, int64_t n) const override { std::copy_n(src, n, dst); }
  void scale(float* y, float s, int64_t n) const override { cpu::scale_inplace(y, s, n); }
  double sum_squares(const float* x, int64_t n) const override { return cpu::sum_squares(x, n); }
  void add(float* y, const float* x, int64_t n) const override { cpu::add_inplace(y, x, n); }
  void dc_asgd(float* g, const float* w, const float* stale, int64_t n, float lambda) const override {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) g[i] += lambda * g[i] * g[i] * (w[i] - stale[i]);
  }
  void apply_update(float* x, const float* u, float* u_prev, int64_t n, float c) const override {
    if (!u_prev) {
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < n; ++i) x[i] -= u[i];
      return;
    }
#pragma omp parallel for schedule(static) if (n >= 32768)
    for (int64_t i = 0; i < n; ++i) {
      x[i] -= u[i] + c * (u[i] - u_prev[i]);
      u_prev[i] = u[i];
    }
  }
};

}  // namespace

Device parse_device(const std::string& name) {
  if (name == "cpu") return Device::cpu;
  if (name == "cuda") return Device::cuda;
  internal_error("parse_device: '" + name + "' (the config admits cpu and cuda only)");
}

void use_precision(Device d, const std::string& precision) {
#ifdef ONESTEP_HAVE_CUDA
  if (d == Device::cuda)
    cuda::set_matmul_precision(precision == "tf32"   ? cuda::MatmulPrecision::tf32
                               : precision == "bf16" ? cuda::MatmulPrecision::bf16
                                                     : cuda::MatmulPrecision::fp32);
#endif
}

const Backend& backend_for(Device d) {
  static const CpuBackend cpu_backend;
  if (d == Device::cpu) return cpu_backend;
#ifdef ONESTEP_HAVE_CUDA
  if (device_memory::gpu_count() == 0) bad_input("train.device", "'cuda': no CUDA device is visible on this machine");
  return cuda_backend();
#else
  bad_input("train.device", "'cuda' needs a build with the CUDA backend (cmake -DONESTEP_CUDA=ON, nvcc present)");
#endif
}

}  // namespace onestep
