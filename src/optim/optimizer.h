// An optimizer COMPUTES an update u from (weights x, gradient g, its own state, lr); it never writes x.
// The trainer applies x <- x - u, and a delay correction (EF, ...) may transform u in between.
// u includes the learning rate and the decoupled weight decay (PAPER.md §2).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/params.h"
#include "optim/optim_config.h"

namespace onestep {

// A named float buffer of optimizer state, for checkpoints (saved and restored through these pointers).
struct StateBuffer {
  std::string name;              // e.g. "exp_avg.model.layers.0.mlp.up_proj.weight"
  float* data = nullptr;
  std::vector<int64_t> shape;
};

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  // u, x, g are flat buffers laid out by the ParamTable given at construction (gaps are left untouched).
  // lr_scale multiplies every group's peak lr (warm-up / cosine). Advances the state by one step.
  virtual void compute_update(float* u, const float* x, const float* g, double lr_scale) = 0;
  // All state tensors, for checkpointing. Pointers stay valid for the optimizer's lifetime.
  virtual std::vector<StateBuffer> state_buffers() = 0;
  // Number of compute_update calls so far (bias correction uses it); saved and restored by the trainer.
  int64_t steps_taken() const { return t_; }
  void set_steps_taken(int64_t t) { t_ = t; }

 protected:
  int64_t t_ = 0;
};

// Routes parameters by role and shape (see make_optimizer.cpp: e.g. Muon family and SOAP take
// ParamRole::matrix, MARS every 2-D parameter; the rest goes to AdamW).
std::unique_ptr<Optimizer> make_optimizer(const OptimConfig& c, const ParamTable& table);

// Global gradient-norm clipping helpers: the norm is sqrt(sum of squares) over everything given.
double grad_sum_squares(const float* g, const ParamTable& table);
void scale_grads(float* g, const ParamTable& table, float s);

}  // namespace onestep
