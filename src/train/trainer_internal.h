// Shared by the two training loops (trainer.cpp: one device; pipeline_trainer.cpp: a pipeline): the run
// folder, data, metrics, progress and evaluation of one `onestep train` invocation.
#pragma once
#include <memory>
#include <nlohmann/json.hpp>

#include "core/timer.h"
#include "data/loader.h"
#include "model/stage.h"
#include "train/metrics.h"
#include "train/progress.h"
#include "train/trainer.h"

namespace onestep {

struct RunIO {
  RunIO(const RunConfig& c, const TrainOptions& options);
  void open_metrics(int64_t start_step);  // after the start step is known (resume)
  double evaluate(const Stage& whole, const float* weights, int64_t step);
  void initial_eval(const Stage& whole, const float* weights);
  bool eval_due(int64_t step) const;
  bool ckpt_due(int64_t step) const;
  // Prints the progress line and returns the step's metrics line (step, tokens, losses, lr, timing).
  nlohmann::json step_line(int64_t step, double loss, double grad_norm, double lr, double step_s);

  const RunConfig& c;
  TrainOptions options;
  std::string resume_from;  // checkpoint folder, "" for a fresh start
  TokenDataset train_data, val_data;
  Progress progress;
  std::unique_ptr<MetricsLog> metrics;
  Stopwatch clock;
  TrainResult result;
};

void run_single_device(const RunConfig& c, RunIO& io);
void run_pipeline(const RunConfig& c, RunIO& io);

}  // namespace onestep
