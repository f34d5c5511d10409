#include "gpu/cuda_optimizer.h"

#include <map>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "core/buffer.h"
#include "core/error.h"
#include "kernels/cuda/optim_cuda.h"
#include "optim/adamw.h"
#include "optim/mars.h"
#include "optim/matrix_loop.h"
#include "optim/muon.h"
#include "optim/optim_names.h"
#include "optim/soap.h"

namespace onestep {
namespace {

namespace gpu = onestep::cuda;

class CudaOptimizer final : public Optimizer {
 public:
  CudaOptimizer(const OptimConfig& config, const ParamTable& table, cudaStream_t stream)
      : c_(config), table_(table), stream_(stream) {
    resolve_optim_defaults(c_, "[optim]");
    for (auto& st : cuda_optimizer_state(c_, table_)) add_state(std::move(st));
  }

  void compute_update(float* u, const float* x, const float* g, double lr_scale) override {
    ++t_;
    // The Muon family's matrices by shape: each group's Newton–Schulz runs batched (a model's layers share shapes).
    std::map<std::pair<int64_t, int64_t>, std::vector<gpu::MuonMatrix>> muon_groups;
    for (const auto& p : table_.all()) {
      if (is_muon_family(c_.name) && muon_takes(p)) {
        const bool nor = c_.name == "normuon";
        muon_groups[{p.rows(), p.cols()}].push_back(
            {u + p.offset, x + p.offset, g + p.offset, state(nor ? "normuon.momentum." : "muon.momentum.", p),
             nor ? state("normuon.v_row.", p) : nullptr});
        continue;
      }
      update_param(p, u + p.offset, x + p.offset, g + p.offset, lr_scale);
    }
    for (const auto& [shape, group] : muon_groups) update_muon_group(group, shape.first, shape.second, lr_scale);
    const int64_t s = t_ - 1;
    if (c_.name == "soap" && soap_refreshes_bases(s, c_.precond_freq)) soap_new_bases_on_host(s == 0);
  }

  std::vector<StateBuffer> state_buffers() override {
    std::vector<StateBuffer> out;
    for (size_t i = 0; i < specs_.size(); ++i) out.push_back({specs_[i].name, bufs_[i].data(), specs_[i].shape});
    return out;
  }

 private:
  void add_state(StateSpec st) {
    index_[st.name] = bufs_.size();
    bufs_.emplace_back(Device::cuda).zeros(static_cast<size_t>(shape_numel(st.shape)));  // zeroed, as on the CPU
    specs_.push_back(std::move(st));
  }
  float* state(const char* kind, const ParamInfo& p) { return bufs_[index_.at(kind + p.name)].data(); }

  // SOAP's eigenbases, refreshed every precond_freq steps: on the host (LAPACK, as the CPU optimizer does it),
  // from copies of L, R, Q_L, Q_R and V; Q_L, Q_R and the re-indexed V go back. The matrices go largest first, in
  // chunks of one per host thread: a chunk is copied down, its bases computed in parallel, one matrix per thread as
  // on the CPU (optim_detail::for_each_matrix), and copied back. Copies stay on this thread, in its stream's order.
  void soap_new_bases_on_host(bool first) {
    struct HostCopy {
      std::vector<float> L, R, QL, QR, V;
    };
    std::vector<const ParamInfo*> mats;
    for (const auto& p : table_.all())
      if (soap_takes(p)) mats.push_back(&p);
    const std::vector<size_t> order = optim_detail::largest_first(mats.size(), [&](size_t k) {
      const int64_t m = mats[k]->rows(), n = mats[k]->cols();
      return m * m * m + n * n * n;  // a refresh costs about m^3 + n^3
    });
    const size_t chunk = static_cast<size_t>(optim_detail::loop_slots());
    std::vector<HostCopy> host(std::min(chunk, mats.size()));
    auto down = [](std::vector<float>& h, const float* d, int64_t n) {
      h.resize(static_cast<size_t>(n));
      device_memory::copy(h.data(), d, sizeof(float) * h.size(), device_memory::Copy::device_to_host);
    };
    auto up = [](float* d, const std::vector<float>& h) {
      device_memory::copy(d, h.data(), sizeof(float) * h.size(), device_memory::Copy::host_to_device);
    };
    for (size_t lo = 0; lo < order.size(); lo += chunk) {
      const size_t n = std::min(chunk, order.size() - lo);
      for (size_t i = 0; i < n; ++i) {
        const ParamInfo& p = *mats[order[lo + i]];
        HostCopy& h = host[i];
        down(h.L, state("soap.L.", p), p.rows() * p.rows()), down(h.QL, state("soap.Q_L.", p), p.rows() * p.rows());
        down(h.R, state("soap.R.", p), p.cols() * p.cols()), down(h.QR, state("soap.Q_R.", p), p.cols() * p.cols());
        down(h.V, state("soap.v.", p), p.numel);
      }
      std::vector<size_t> in_chunk(n);  // positions in the chunk (host[i])
      std::iota(in_chunk.begin(), in_chunk.end(), size_t{0});
      optim_detail::for_each_matrix(in_chunk, optim_detail::MatrixLoop::shared_out, [&](size_t i, int) {
        const ParamInfo& p = *mats[order[lo + i]];
        HostCopy& h = host[i];
        soap_new_bases(h.L.data(), h.R.data(), h.QL.data(), h.QR.data(), h.V.data(), static_cast<int>(p.rows()),
                       static_cast<int>(p.cols()), first);
      });
      for (size_t i = 0; i < n; ++i) {
        const ParamInfo& p = *mats[order[lo + i]];
        up(state("soap.Q_L.", p), host[i].QL), up(state("soap.Q_R.", p), host[i].QR), up(state("soap.v.", p), host[i].V);
      }
    }
  }

  void update_param(const ParamInfo& p, float* u, const float* x, const float* g, double lr_scale) {
    const std::string& n = c_.name;
    const double wd = decays(p) ? c_.weight_decay : 0.0;
    const int64_t numel = p.numel;
    if (is_muon_family(n) && !muon_takes(p)) {  // the AdamW group: its own lr, betas and eps
      gpu::adamw_update(u, x, g, state("adamw.m.", p), state("adamw.v.", p), numel,
                        gpu::adamw_scalars(c_.adamw_lr * lr_scale, c_.adamw_beta1, c_.adamw_beta2, c_.adamw_eps, wd, t_),
                        stream_);
      return;
    }
    const double lr = c_.lr * lr_scale;
    if (n == "soap" && soap_takes(p)) {
      const int rows = static_cast<int>(p.rows()), cols = static_cast<int>(p.cols());
      if (soap_scratch_.size() < static_cast<size_t>(2 * numel)) soap_scratch_.zeros(static_cast<size_t>(2 * numel));
      gpu::soap_update(u, x, g, state("soap.m.", p), state("soap.v.", p), state("soap.L.", p), state("soap.R.", p),
                       state("soap.Q_L.", p), state("soap.Q_R.", p), soap_scratch_.data(), soap_scratch_.data() + numel,
                       rows, cols, gpu::soap_scalars(lr, c_.beta1, c_.beta2, c_.eps, t_),
                       decays(p) ? static_cast<float>(lr * c_.weight_decay) : 0.0f, stream_);
    } else if (n == "mars" && mars_takes(p)) {
      gpu::mars_update(u, x, g, state("mars.m.", p), state("mars.v.", p), state("mars.prev_grad.", p), numel,
                       gpu::mars_scalars(lr, c_.beta1, c_.beta2, c_.eps, c_.gamma, wd, t_), stream_);
    } else if (n == "adan") {
      gpu::adan_update(u, x, g, state("adan.m.", p), state("adan.m_diff.", p), state("adan.n.", p),
                       state("adan.prev_grad.", p), numel,
                       gpu::adan_scalars(lr, c_.beta1, c_.beta2, c_.beta3, c_.eps, wd, t_), stream_);
    } else if (n == "lion") {
      gpu::lion_update(u, x, g, state("lion.m.", p), numel, gpu::lion_scalars(lr, c_.beta1, c_.beta2, wd), stream_);
    } else if (n == "sgd") {
      gpu::sgd_update(u, x, g, state("sgd.momentum.", p), numel, gpu::sgd_scalars(lr, c_.momentum, c_.nesterov, wd),
                      stream_);
    } else {  // adamw; MARS's 1-D parameters and SOAP's other ones (AdamW with their lr, betas and eps)
      gpu::adamw_update(u, x, g, state("adamw.m.", p), state("adamw.v.", p), numel,
                        gpu::adamw_scalars(lr, c_.beta1, c_.beta2, c_.eps, wd, t_), stream_);
    }
  }

  // Muon or NorMuon on matrices of one shape [rows, cols].
  void update_muon_group(const std::vector<gpu::MuonMatrix>& group, int64_t rows, int64_t cols, double lr_scale) {
    // NorMuon keeps Muon's Newton–Schulz eps; its eps is the row normalisation's (make_optimizer.cpp).
    const double ns_eps = c_.name == "muon" ? c_.eps : MuonHyper{}.eps;
    const auto s = gpu::muon_scalars(c_.lr * lr_scale, c_.momentum, c_.nesterov, c_.ns_steps, ns_eps,
                                     muon_scale(rows, cols, c_.muon_scale == "adamw_rms"), c_.weight_decay);
    const int r = static_cast<int>(rows), c = static_cast<int>(cols);
    if (c_.name == "muon") gpu::muon_update(group, r, c, s, stream_);
    else gpu::normuon_update(group, r, c, s, gpu::normuon_scalars(c_.beta2, c_.eps), stream_);
  }

  OptimConfig c_;
  ParamTable table_;
  cudaStream_t stream_;
  std::vector<StateSpec> specs_;  // cuda_optimizer_state's list; bufs_[i] holds specs_[i]
  std::vector<Buffer<float>> bufs_;
  std::map<std::string, size_t> index_;
  Buffer<float> soap_scratch_{Device::cuda};  // SOAP's two [m, n] products of the largest matrix
};

}  // namespace

std::vector<StateSpec> cuda_optimizer_state(const OptimConfig& config, const ParamTable& table) {
  OptimConfig c = config;
  resolve_optim_defaults(c, "[optim]");
  // Each parameter's state, under the CPU optimizers' checkpoint prefixes (src/optim/*.cpp).
  auto kinds = [&](const ParamInfo& p) -> std::vector<const char*> {
    if (c.name == "soap" && soap_takes(p)) return {"soap.m.", "soap.v.", "soap.L.", "soap.R.", "soap.Q_L.", "soap.Q_R."};
    if (is_muon_family(c.name) && muon_takes(p))
      return c.name == "muon" ? std::vector<const char*>{"muon.momentum."}
                              : std::vector<const char*>{"normuon.momentum.", "normuon.v_row."};
    if (c.name == "mars" && mars_takes(p)) return {"mars.m.", "mars.v.", "mars.prev_grad."};
    if (c.name == "adan") return {"adan.m.", "adan.m_diff.", "adan.n.", "adan.prev_grad."};
    if (c.name == "lion") return {"lion.m."};
    if (c.name == "sgd") return {"sgd.momentum."};
    return {"adamw.m.", "adamw.v."};  // adamw, and the AdamW group of muon / normuon / mars
  };
  auto shape = [](const std::string& kind, const ParamInfo& p) -> std::vector<int64_t> {
    if (kind == "normuon.v_row.") return {p.rows()};
    if (kind == "soap.L." || kind == "soap.Q_L.") return {p.rows(), p.rows()};
    if (kind == "soap.R." || kind == "soap.Q_R.") return {p.cols(), p.cols()};
    return p.shape;
  };
  std::vector<StateSpec> out;
  for (const auto& p : table.all())
    for (const char* kind : kinds(p)) out.push_back({kind + p.name, shape(kind, p)});
  return out;
}

std::unique_ptr<Optimizer> make_cuda_optimizer(const OptimConfig& config, const ParamTable& table,
                                               cudaStream_t stream) {
  return std::make_unique<CudaOptimizer>(config, table, stream);
}

}  // namespace onestep
