// NorMuon (PAPER.md §3) for the matrices Muon takes (muon_takes); every other parameter goes to an AdamW
// group with adamw_lr / adamw_beta1 / adamw_beta2 / adamw_eps, as in a Muon run.
//   B = mu B + g, q = g + mu B (Nesterov) or B;  X = NS(q)            (exactly Muon's X, eps 1e-7)
//   v_row = b2 v_row + (1-b2) mean_cols(X^2)   (one value per row = output neuron; no bias correction)
//   Y = X / (sqrt(v_row) + eps);  Y *= ||X||_F / ||Y||_F              (back to the RMS of X)
//   u = lr s Y + lr wd x                                              (s: Muon's shape scale rule)
#pragma once
#include <vector>

#include "optim/adamw.h"
#include "optim/muon.h"
#include "optim/optimizer.h"

namespace onestep {

struct NorMuonHyper {
  MuonHyper muon;      // lr, momentum, nesterov, ns_steps, eps (Newton–Schulz), scale rule, weight_decay
  double beta2 = 0.95;  // per-row second moment
  double eps = 1e-8;    // X / (sqrt(v_row) + eps)
};

class NorMuon final : public Optimizer {
 public:
  NorMuon(const ParamTable& table, NorMuonHyper h, AdamWHyper adamw);
  void compute_update(float* u, const float* x, const float* g, double lr_scale) override;
  // "normuon.momentum.<name>" [rows, cols], "normuon.v_row.<name>" [rows], then the AdamW group's.
  std::vector<StateBuffer> state_buffers() override;

 private:
  NorMuonHyper h_;
  MuonMatrices mats_;  // "normuon.momentum.<name>"
  std::vector<int64_t> v_off_;
  std::vector<float> v_;
  AdamWGroup adamw_;
};

}  // namespace onestep
