// The executor: runs one stage's action list (pipeline/schedule.h) against a transport. The same code runs
// every schedule on threads in one process and on MPI ranks; the schedule decides when and on which weight
// version, the Stage decides what a forward/backward computes, StageState what an optimizer step does. Every
// buffer lives on the stage's device (StageState::backend): a pipeline runs on CPU threads or on one GPU.
//
// Optimizer steps are split in two so that no stage waits for the others at a step: the `step` action only
// posts this stage's contributions to the cross-stage reductions (per-parameter gradient sums of squares
// for the global clipping norm, the loss, the tied embedding's gradient); the step completes when a later
// action first needs the new weight version, or at the end. Gradients are buffered per batch until their step completes.
#pragma once
#include <functional>
#include <map>
#include <memory>
#include <vector>

#include "config/config.h"
#include "data/loader.h"
#include "pipeline/schedule.h"
#include "pipeline/transport.h"
#include "train/stage_state.h"

namespace onestep {

// What a stage executed, for telemetry and for tests that assert the version every forward/backward used.
struct ExecutedAction {
  pipeline::Action action;
  double start_s, end_s;  // since the runner was created
};

// Per optimizer step: what the step's reduction gives every stage alike, and this stage's own post time.
struct StepRecord {
  int64_t batch = 0;
  double loss = 0, grad_norm = 0;
  std::vector<double> busy_s;  // per stage: compute time spent on this batch's forwards and backwards
  // Per stage, when the step was posted: bytes of activations held for micro-batches in flight (peak since the
  // previous step) and of weight versions + gradient buffers alive.
  std::vector<double> activation_bytes, weight_bytes;
  // When this stage posted the step (its last backward of the batch done), in seconds on the runner's clock
  // (elapsed_s). Stage 0 posts a batch last, so its posts pace the pipeline; completions can come in bursts.
  double posted_s = 0;
};

class StageRunner {
 public:
  // `state` must already hold the newest weights (version `newest_version`) and, for a delayed schedule,
  // `older` the versions below it that the first batches still read (newest first).
  StageRunner(StageState& state, pipeline::Transport& transport, const RunConfig& config, const TokenDataset& train,
              int64_t newest_version, std::vector<Buffer<float>> older);
  // Runs the actions (a slice of one schedule program), completing every step it posts.
  void run(const std::vector<pipeline::Action>& actions, const std::string& schedule_name);

  int64_t newest_version() const { return newest_; }
  // Weights of version v (must be alive).
  const float* version(int64_t v) const;
  const std::vector<ExecutedAction>& executed() const { return executed_; }
  double origin_s() const { return t0_; }  // the steady_clock time executed() counts from
  double elapsed_s() const;                 // seconds since origin_s()
  // Called on the runner's thread as each step completes (its optimizer step done), with that step's record; an
  // exception it throws ends run(). Empty: none.
  void set_step_listener(std::function<void(const StepRecord&)> listener) { on_step_ = std::move(listener); }
  // Copies of versions newest-1, newest-2, ... (n of them; versions below 0 are W(0)), for checkpoints.
  std::vector<Buffer<float>> older_versions(int n) const;

 private:
  struct Pending {
    int64_t batch;
    std::unique_ptr<pipeline::PendingSum> sum;
    double posted_s;
  };
  Activations& activations(int64_t batch, int micro);
  void release(int64_t batch, int micro);
  void forward(const pipeline::Action& a);
  void backward(const pipeline::Action& a);
  void post_step(int64_t batch);
  void complete_step();
  void ensure_version(int64_t v);
  int other_tied_end() const;
  const ParamInfo* tied_param() const;  // this stage's copy of a tied embedding, or null  // the stage holding the other copy of a tied embedding, or -1

  StageState& st_;
  pipeline::Transport& tx_;
  const RunConfig& c_;
  const TokenDataset& train_;
  const int B_, T_, M_;
  int64_t newest_;
  std::map<int64_t, Buffer<float>> history_;  // older versions still read by pending work
  std::vector<Buffer<float>> spare_versions_;  // buffers for versions to come (those that dropped off)
  int max_versions_ = 2;
  std::string schedule_;
  // Gradient buffers by batch: a step completes lazily, so up to max_versions_ batches' gradients are alive.
  std::vector<Buffer<float>> grads_;
  std::vector<int64_t> grad_batch_;
  size_t grad_slot(int64_t batch) const { return static_cast<size_t>(batch) % grads_.size(); }
  std::map<std::pair<int64_t, int>, std::unique_ptr<Activations>> acts_;
  std::vector<std::unique_ptr<Activations>> free_acts_;
  std::unique_ptr<BackwardScratch> scratch_;
  using MessageMap = std::map<std::pair<int64_t, int>, Buffer<float>>;
  MessageMap inputs_, douts_;  // received activations / output gradients, on the stage's device
  std::vector<Buffer<float>> spare_messages_;
  Buffer<float>& message_buffer(MessageMap& m, std::pair<int64_t, int> key, int64_t n);
  void recycle(MessageMap& m, std::pair<int64_t, int> key);
  Buffer<float> tied_recv_;  // the other end's tied-embedding gradient
  const float* recv_other_tied_copy(int other, uint32_t tag, int64_t n);
  std::map<int64_t, double> loss_sum_, busy_;
  std::vector<Pending> pending_;
  std::vector<int> global_index_;  // this stage's parameters' positions in the whole model's table
  int n_global_params_ = 0;
  std::vector<int32_t> tokens_, targets_;
  std::vector<ExecutedAction> executed_;
  size_t peak_acts_in_flight_ = 0;
  std::function<void(const StepRecord&)> on_step_;
  double t0_;
  // bf16 copies of the weight versions the products read (Backend::make_rounded_weights; none on the CPU or in
  // fp32/tf32): each made from version(v) and valid while v is alive at that pointer. Recycled during a run, freed
  // at its end, on the thread that made them.
  struct Rounded {
    int64_t version = -1;
    const float* from = nullptr;
    std::unique_ptr<RoundedWeights> copy;
  };
  std::vector<Rounded> rounded_;
  bool rounds_weights_ = true;  // false once the backend has declined
  void use_rounded(int64_t v);
};

}  // namespace onestep
