// `onestep train`: the single-device trainer, with the one-step delay emulator of PipeDream-2BW
// (PAPER.md §1: the gradient applied at step t is computed on W(t-1); batches 0 and 1 both use W(0)).
#pragma once
#include <string>

#include "config/config.h"

namespace onestep {

struct TrainOptions {
  std::string out_dir;
  bool resume = false;
  // Stop (with a checkpoint) after this many steps even if train.steps is larger: splits a long run into
  // sittings (experiment runner) and lets tests interrupt a run at a known step. -1: run to the end.
  int64_t stop_after_step = -1;
};

struct TrainResult {
  int64_t steps_done = 0;
  double first_val_loss = 0, final_val_loss = 0, final_train_loss = 0;
  int64_t first_val_step = -1;  // the step of this session's first evaluation (a resumed run starts later); -1: none
  std::string checkpoint_dir;
  bool writer = true;  // false on the MPI ranks that do not own the run folder's shared files
};

TrainResult run_training(const RunConfig& config, const TrainOptions& options);

// Refuses an output folder that holds another run (unless resuming it) and, when resuming, a run whose model
// differs from the config. Returns the checkpoint to resume from ("" when starting fresh).
std::string prepare_run_dir(const RunConfig& config, const TrainOptions& options);

}  // namespace onestep
