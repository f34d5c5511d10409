// Shared by the two training loops (trainer.cpp: one device; pipeline_trainer.cpp: a pipeline): the run
// folder, data, metrics, progress and evaluation of one `onestep train` invocation.
#pragma once
#include <memory>
#include <nlohmann/json.hpp>

#include "core/timer.h"
#include "data/loader.h"
#include "model/stage.h"
#include "train/backend.h"
#include "train/metrics.h"
#include "train/progress.h"
#include "train/trainer.h"

namespace onestep {

struct RunIO {
  // `writer`: this process owns the run folder's shared files (metrics, config, checkpoint metadata,
  // progress output); false on the other ranks of an MPI run.
  RunIO(const RunConfig& c, const TrainOptions& options, bool writer = true);
  void open_metrics(int64_t start_step);  // creates the run folder; after the state is allocated and loaded
  // weights live on `backend`'s device.
  double evaluate(const Stage& whole, const float* weights, int64_t step,
                  const Backend& backend = backend_for(Device::cpu));
  void initial_eval(const Stage& whole, const float* weights, const Backend& backend = backend_for(Device::cpu));
  bool eval_due(int64_t step) const;
  bool ckpt_due(int64_t step) const;
  // Prints the progress line and returns the step's metrics line (step, tokens, losses, lr, timing).
  nlohmann::json step_line(int64_t step, double loss, double grad_norm, double lr, double step_s);

  const RunConfig& c;
  TrainOptions options;
  bool writer;
  std::string resume_from;  // checkpoint folder, "" for a fresh start
  TokenDataset train_data, val_data;
  Progress progress;
  std::unique_ptr<MetricsLog> metrics;
  Stopwatch clock;
  TrainResult result;
};

// This process's stage under the MPI transport (its rank; checks the world size), else 0.
int pipeline_rank(const RunConfig& c);
void run_single_device(const RunConfig& c, RunIO& io);
void run_pipeline(const RunConfig& c, RunIO& io);

}  // namespace onestep
