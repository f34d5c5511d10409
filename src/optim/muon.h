// Muon (PAPER.md §3) for ParamRole::matrix; every other parameter goes to an AdamW group with its own
// peak lr (adamw_lr), betas and eps.
#pragma once
#include <vector>

#include "optim/adamw.h"
#include "optim/newton_schulz.h"
#include "optim/optimizer.h"

namespace onestep {

struct MuonHyper {
  double lr = 0.02;
  double momentum = 0.95;
  bool nesterov = true;
  int ns_steps = 5;
  double eps = 1e-7;           // X = q / (||q||_F + eps)
  bool adamw_rms_scale = false;  // false: s = sqrt(max(1, rows/cols)); true: s = 0.2 sqrt(max(rows, cols))
  double weight_decay = 0.1;
};

// Which parameters Muon takes: 2-D hidden matrices.
bool muon_takes(const ParamInfo& p);
// The shape scale s of u = lr * s * X + lr * wd * x.
double muon_scale(int64_t rows, int64_t cols, bool adamw_rms);

class Muon final : public Optimizer {
 public:
  Muon(const ParamTable& table, MuonHyper h, AdamWHyper adamw);
  void compute_update(float* u, const float* x, const float* g, double lr_scale) override;
  std::vector<StateBuffer> state_buffers() override;

 private:
  MuonHyper h_;
  std::vector<ParamInfo> mats_;
  std::vector<int64_t> mom_off_;
  std::vector<float> mom_;  // momentum buffers B
  std::vector<float> q_;    // scratch: the (Nesterov) momentum direction of one matrix
  NewtonSchulzWorkspace ws_;
  AdamWGroup adamw_;
};

}  // namespace onestep
