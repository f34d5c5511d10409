// Packed per-parameter optimizer state: one float buffer per kind of state, each parameter's slice
// starting on a 16-float boundary.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/error.h"
#include "model/params.h"
#include "optim/optimizer.h"

namespace onestep::optim_detail {

inline int64_t pad16(int64_t n) { return (n + 15) / 16 * 16; }

// off[k] = start of slice k for slices of the given sizes; returns the total length.
inline int64_t pack(const std::vector<int64_t>& sizes, std::vector<int64_t>& off) {
  off.clear();
  int64_t total = 0;
  for (int64_t n : sizes) {
    off.push_back(total);
    total += pad16(n);
  }
  return total;
}

// The parameters of the table for which takes(p) == want (an optimizer's share, or the rest for AdamW).
template <class Pred>
std::vector<ParamInfo> select_params(const ParamTable& table, Pred takes, bool want) {
  std::vector<ParamInfo> out;
  for (const auto& p : table.all())
    if (takes(p) == want) out.push_back(p);
  return out;
}

// A set of parameters and, for each kind of state, a zero-initialised buffer holding one slice of numel
// floats per parameter (packed by pack()). Kind j is checkpointed as "<names[j]><parameter name>".
class PerParamState {
 public:
  PerParamState(std::vector<ParamInfo> params, std::vector<std::string> names)
      : params_(std::move(params)), names_(std::move(names)) {
    std::vector<int64_t> sizes;
    for (const auto& p : params_) sizes.push_back(p.numel);
    const int64_t total = pack(sizes, off_);
    bufs_.assign(names_.size(), std::vector<float>(total, 0.0f));
  }

  const std::vector<ParamInfo>& params() const { return params_; }

  // Parameter k's slice of each of the N state buffers (N = the number of names), in the order named.
  template <size_t N>
  std::array<float*, N> slices(size_t k) {
    if (N != bufs_.size()) internal_error("PerParamState::slices: wrong number of state buffers");
    std::array<float*, N> out;
    for (size_t j = 0; j < N; ++j) out[j] = bufs_[j].data() + off_[k];
    return out;
  }

  // Appends parameter k's StateBuffers, one per kind of state (in the order named).
  void append(std::vector<StateBuffer>& out, size_t k) {
    for (size_t j = 0; j < names_.size(); ++j)
      out.push_back({names_[j] + params_[k].name, bufs_[j].data() + off_[k], params_[k].shape});
  }
  // The same for every parameter, in order.
  void append(std::vector<StateBuffer>& out) {
    for (size_t k = 0; k < params_.size(); ++k) append(out, k);
  }

 private:
  std::vector<ParamInfo> params_;
  std::vector<std::string> names_;
  std::vector<int64_t> off_;
  std::vector<std::vector<float>> bufs_;
};

// An Optimizer whose whole state is one PerParamState (Adan, Lion, SGD); checkpoints list it as it is.
class PerParamStateOptimizer : public Optimizer {
 public:
  std::vector<StateBuffer> state_buffers() override {
    std::vector<StateBuffer> out;
    state_.append(out);
    return out;
  }

 protected:
  explicit PerParamStateOptimizer(PerParamState state) : state_(std::move(state)) {}
  PerParamState state_;
};

}  // namespace onestep::optim_detail
