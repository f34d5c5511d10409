// Everything one stage owns while training: its weights (and the stale version the delay needs), gradient
// accumulator, optimizer, and the update buffers of the delay correction. The single-device trainer holds one
// of these; a pipeline holds one per stage. The optimizer step below serves both.
#pragma once
#include <memory>
#include <vector>

#include "config/config.h"
#include "model/stage.h"
#include "optim/optimizer.h"
#include "train/backend.h"

namespace onestep {

struct StageState {
  // older_versions: how many versions below the newest a delayed rule reads (1 for PipeDream-2BW, up to p-1
  // for PipeDream's per-stage delay, 0 for synchronous training). Every buffer and the optimizer's state
  // live on `device` (train.device).
  StageState(const ModelConfig& model, StageSpec spec, const OptimConfig& optim, int older_versions, bool use_ef,
             Device device = Device::cpu);

  const Backend& backend;
  Stage stage;
  Buffer<float> weights;              // W(t): the version the optimizer updates
  std::vector<Buffer<float>> older;   // W(t-1), W(t-2), ...: the versions delayed gradients are computed on
  Buffer<float> grad;                 // accumulated over the step's micro-batches (mean)
  Buffer<float> update;               // u(t), the optimizer's full update
  Buffer<float> prev_update;          // u(t-1), uncorrected (EF correction)
  std::unique_ptr<Optimizer> optimizer;
  bool has_prev_update = false;
  std::string optimizer_name;

  Device device() const { return backend.device(); }
  // Weights of version newest - lag (lag 0: W(t); lags beyond the kept history read the oldest kept, which at
  // the start of training is W(0): the paper's startup convention).
  const float* version_at_lag(int64_t lag) const;
  // W(0) from the deterministic initialisation (Stage::init_weights), and every older version = W(0).
  void init_weights(uint64_t seed);
};

// Cross-stage reductions, explicit (the original 2BW code lost them; PAPER.md §1).
// The tied embedding's gradient is the sum of the input-side copy's and the output-side copy's; both copies
// receive the sum (a + b == b + a bitwise, so the two stages of a pipeline agree exactly).
float* tied_embedding_grad(StageState& s);   // the input-side copy's gradient, or null
float* tied_head_grad(StageState& s);        // the output-side copy's gradient, or null
// Both copies on this stage: sums them in place.
void reduce_tied_embedding_local(StageState& s);
// Sum of squares of each parameter's part of `grad` (this stage's layout), counting a tied pair once (the
// output-side copy is skipped, so stage sums add up to the whole model's norm): `param` holds the indices into
// the stage's parameter table, `sum` the sums, in table order. One wait for the device (Backend::sum_squares_each).
struct ParamSquares {
  std::vector<size_t> param;
  std::vector<double> sum;
};
ParamSquares grad_squares(const StageState& s, const float* grad);
// Their total for s.grad, added in table order.
double unique_grad_sum_squares(const StageState& s);
// The gradient scale that clips the norm to optim.clip (PAPER.md §2); 1 when clip is 0 or not reached.
inline float clip_scale(double clip, double grad_norm) {
  return clip > 0 && grad_norm > clip ? static_cast<float>(clip / grad_norm) : 1.0f;
}

// One optimizer step on a stage whose gradient is final (averaged over micro-batches, combined across
// stages where needed). PAPER.md §2 order: clip (grad *= grad_scale) -> optimizer computes u ->
// correction -> apply. EF: x <- x - u - c (u - u_prev), u_prev <- u; the first step is ordinary.
// When older versions are kept, W(t) is first pushed onto them (the oldest drops off).
// DC-ASGD (delay.correction = dc_asgd) compensates the clipped gradient first, with `stale` the weights it was
// computed on: g <- g + lambda g*g*(x - stale).
void optimizer_step(StageState& s, double lr_scale, float grad_scale, const DelayConfig& delay,
                    const float* stale = nullptr);

}  // namespace onestep
