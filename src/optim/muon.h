// Muon (PAPER.md §3) for ParamRole::matrix; every other parameter goes to an AdamW group with its own
// peak lr (adamw_lr), betas and eps.
#pragma once
#include <functional>
#include <vector>

#include "optim/adamw.h"
#include "optim/layout.h"
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

// What Muon and NorMuon share: the matrices Muon takes, their momentum buffers B (checkpointed as
// "<momentum_name><name>"), and the Newton–Schulz step with its scratch.
class MuonMatrices {
 public:
  // One thread's scratch: the (Nesterov) momentum direction q of one matrix and the Newton–Schulz buffers.
  struct Scratch {
    std::vector<float> q;
    NewtonSchulzWorkspace ws;
  };

  MuonMatrices(const ParamTable& table, const char* momentum_name);
  const std::vector<ParamInfo>& params() const { return mom_.params(); }
  // step(k, scratch) for every matrix k, shared out among the threads when there are at least 2 per thread
  // (optim_detail::MatrixLoop::shared_out_if_many), largest first; scratch is the running thread's own.
  void for_each_matrix(const std::function<void(size_t, Scratch&)>& step);
  // Matrix k: B = mu B + g, q = g + mu B (Nesterov) or B, then X = NS(q) written on u's slice of the
  // matrix; returns that slice. u, g: the flat buffers.
  float* orthogonalized_momentum(size_t k, Scratch& s, float* u, const float* g, const MuonHyper& h);
  // On matrix k's slice of u, which holds X: u = lr s extra_scale X + lr wd x (s: muon_scale).
  void finish_update(size_t k, float* u, const float* x, const MuonHyper& h, double lr,
                     double extra_scale = 1.0) const;
  void append_state(std::vector<StateBuffer>& out, size_t k) { mom_.append(out, k); }  // matrix k's B
  void append_state(std::vector<StateBuffer>& out) { mom_.append(out); }               // every B

 private:
  optim_detail::PerParamState mom_;
  std::vector<size_t> largest_first_;  // matrix indices by Newton–Schulz cost, largest first
  std::vector<Scratch> scratch_;       // one per OpenMP thread, grown on the first step with more threads
};

class Muon final : public Optimizer {
 public:
  Muon(const ParamTable& table, MuonHyper h, AdamWHyper adamw);
  void compute_update(float* u, const float* x, const float* g, double lr_scale) override;
  std::vector<StateBuffer> state_buffers() override;

 private:
  MuonHyper h_;
  MuonMatrices mats_;  // "muon.momentum.<name>"
  AdamWGroup adamw_;
};

}  // namespace onestep
