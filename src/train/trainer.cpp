#include "train/trainer.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "core/threads.h"
#include "core/timer.h"
#include "data/loader.h"
#include "data/tokenizer.h"
#include "train/checkpoint.h"
#include "train/evaluate.h"
#include "train/metrics.h"
#include "train/plots.h"
#include "train/progress.h"
#include "pipeline/schedule.h"
#include "train/partition.h"
#include "train/stage_state.h"
#include "train/trainer_internal.h"

namespace fs = std::filesystem;

namespace onestep {
namespace {

void check_tokenizer_matches(const RunConfig& c) {
  if (c.data.tokenizer.empty()) return;
  const Tokenizer tok = Tokenizer::load(c.data.tokenizer);
  if (tok.vocab_size() > c.model.vocab_size)
    bad_input(c.data.tokenizer, "vocab_size " + std::to_string(tok.vocab_size()) + " does not fit the model's model.vocab_size " +
                                    std::to_string(c.model.vocab_size) + " (in " + c.source + ")");
}

void check_supported(const RunConfig& c) {
  const std::string& sched = c.pipeline.schedule;
  const bool pipelined = sched != "none";
  if (!pipelined && c.pipeline.stages != 1 && c.delay.emulate != "per_stage")
    bad_input(c.source, "pipeline.stages: " + std::to_string(c.pipeline.stages) +
                            " stages need a pipeline.schedule (gpipe, 1f1b, 2bw, pipedream, sync_start) or "
                            "delay.emulate = \"per_stage\"");
  if (pipelined && c.pipeline.sync_start_steps > 0 && sched != "sync_start")
    bad_input(c.source, "pipeline.sync_start_steps: only the sync_start schedule (or the one_step emulator) uses it");
  if (pipelined && c.delay.emulate != "none")
    bad_input(c.source, "delay.emulate: '" + c.delay.emulate + "' emulates a pipeline on one device; with "
                            "pipeline.schedule = '" + sched + "' the delay is real: set delay.emulate = \"none\"");
  const bool delayed = c.delay.emulate != "none" || sched == "2bw" || sched == "pipedream" || sched == "sync_start";
  if (c.delay.correction != "none" && !delayed)
    bad_input(c.source, "delay.correction: '" + c.delay.correction +
                            "' corrects a delayed gradient, but this run has none (set delay.emulate or a "
                            "delayed pipeline.schedule)");
  if (c.delay.correction == "weight_prediction" && pipelined)
    bad_input(c.source, "delay.correction: 'weight_prediction' is implemented in the delay emulators "
                            "(delay.emulate = one_step or per_stage), not yet in pipeline schedules");
  if ((sched == "2bw" || sched == "sync_start") && c.train.micro_batches < c.pipeline.stages)
    bad_input(c.source, "train.micro_batches: " + sched + " needs micro_batches (m = " +
                            std::to_string(c.train.micro_batches) + ") >= pipeline.stages (p = " +
                            std::to_string(c.pipeline.stages) + ")");
  const std::string& tr = c.pipeline.transport;
  if (tr == "nccl" && c.train.device != "cuda")
    bad_input(c.source, "pipeline.transport: 'nccl' moves GPU memory between processes; it needs train.device = "
                        "\"cuda\" (on CPUs use 'mpi')");
#ifndef ONESTEP_HAVE_NCCL
  if (tr == "nccl")
    bad_input(c.source, "pipeline.transport: 'nccl', but this onestep was built without the NCCL transport (it needs "
                        "MPI, the CUDA backend and nccl.h at build time)");
#endif
  if (c.train.device == "cuda" && tr == "mpi")
    bad_input(c.source, "pipeline.transport: 'mpi' moves host memory; with train.device = \"cuda\" use 'nccl' "
                        "(a process per GPU) or 'inproc' (a thread per stage, on the process's GPUs)");
  // A device this build or machine lacks: bad input, before any file. (Under nccl pipeline_rank says it instead,
  // with the ranks and GPUs it counted on the machine.)
  if (tr != "nccl") backend_for(parse_device(c.train.device));
  if (c.train.device == "cuda" && c.delay.correction == "weight_prediction")
    bad_input(c.source, "delay.correction: 'weight_prediction' runs on train.device = \"cpu\" only so far");
  if (tr != "inproc" && !pipelined)
    bad_input(c.source, "pipeline.transport: '" + tr + "' runs one stage per rank; it needs a pipeline.schedule");
}

}  // namespace

std::string prepare_run_dir(const RunConfig& config, const TrainOptions& options) {
  const fs::path dir(options.out_dir);
  const fs::path cfg = dir / "config.toml";
  const bool holds_run = fs::exists(cfg) || fs::exists(dir / "metrics.jsonl") || fs::exists(dir / "checkpoints");
  if (!options.resume) {
    if (holds_run)
      bad_input(options.out_dir, "holds another run (config.toml / metrics.jsonl / checkpoints); use --resume to "
                                 "continue it or choose another --out");
    return "";
  }
  if (!holds_run) return "";
  if (fs::exists(cfg)) {
    const RunConfig old = parse_config([&] {
      std::ifstream in(cfg);
      std::stringstream ss;
      ss << in.rdbuf();
      return ss.str();
    }(), cfg.string());
    auto model_only = [](const ModelConfig& m) {
      RunConfig r;
      r.model = m;
      return to_toml(r);
    };
    if (model_only(old.model) != model_only(config.model))
      bad_input(cfg.string(), "[model]: the run in this folder has another model shape than " + config.source);
  }
  const std::string ckpt = latest_checkpoint(options.out_dir);
  if (ckpt.empty()) return ckpt;  // stopped before its first checkpoint: a fresh start
  // The weights are fp32 masters in every precision, but switching the matmuls' arithmetic mid-run would make
  // the resumed run a different experiment: say so instead of mixing them.
  const std::string trained_in = checkpoint_config(ckpt).train.precision;
  if (trained_in != config.train.precision)
    bad_input(ckpt + "/config.toml", "train.precision: this checkpoint was trained in " + trained_in +
                                         ", the resumed run asks for " + config.train.precision +
                                         " (resume with --set train.precision=" + trained_in + ")");
  return ckpt;
}

TrainResult run_training(const RunConfig& c, const TrainOptions& options) {
  check_supported(c);
  use_precision(parse_device(c.train.device), c.train.precision);
  RunIO io(c, options, pipeline_rank(c) == 0);
  if (c.pipeline.schedule == "none") run_single_device(c, io);
  else run_pipeline(c, io);
  io.progress.finish();
  io.result.writer = io.writer;
  if (!io.writer) return io.result;
  write_plots(options.out_dir);
  io.result.checkpoint_dir = latest_checkpoint(options.out_dir);
  return io.result;
}

RunIO::RunIO(const RunConfig& config, const TrainOptions& opts, bool is_writer)
    : c(config),
      options(opts),
      writer(is_writer),
      // Only the writer judges the folder (the others would see its config.toml appear).
      resume_from(is_writer ? prepare_run_dir(config, opts) : (opts.resume ? latest_checkpoint(opts.out_dir) : "")),
      train_data((set_num_threads(config.train.threads), check_tokenizer_matches(config),
                  TokenDataset(config.data.train, "data.train", config.model.vocab_size))),
      val_data(config.data.val, "data.val", config.model.vocab_size),
      progress(config.train.steps, config.train.log_every) {}

// The run's first files, written once the model and optimizer are in memory: a start that fails before (out of
// GPU memory, a bad checkpoint) leaves no folder behind to block its retry.
void RunIO::open_metrics(int64_t start_step) {
  if (!writer) return;
  fs::create_directories(options.out_dir);
  std::ofstream(fs::path(options.out_dir) / "config.toml") << "# resolved by onestep from " << c.source << "\n"
                                                            << to_toml(c);
  metrics = std::make_unique<MetricsLog>(options.out_dir, resume_from.empty() ? -1 : start_step);
  const int B = c.train.micro_batch_size, T = c.model.seq_len, M = c.train.micro_batches;
  std::printf("onestep train: %s, %.2fM parameters, %d x %d x %d tokens per step, optimizer %s, schedule %s "
              "(%d stage%s), delay %s%s, %d threads, %s\n",
              c.model.preset.c_str(), count_params(c.model) / 1e6, M, B, T, c.optim.name.c_str(),
              c.pipeline.schedule.c_str(), c.pipeline.stages, c.pipeline.stages > 1 ? "s" : "",
              c.delay.emulate.c_str(), c.delay.correction == "ef" ? " + EF" : "", num_threads(),
              resume_from.empty() ? "fresh start" : ("resuming " + resume_from).c_str());
}

double RunIO::evaluate(const Stage& whole, const float* weights, int64_t step, const Backend& backend) {
  // Validation runs on W(t), the weights the run would deploy.
  const double v = evaluate_loss(whole, weights, val_data, c.train.eval_tokens, c.train.micro_batch_size,
                                 c.model.seq_len, backend);
  if (!writer) return v;
  progress.note("step " + std::to_string(step) + ": val_loss " + std::to_string(v));
  if (result.first_val_step < 0) result.first_val_loss = v, result.first_val_step = step;
  result.final_val_loss = v;
  return v;
}

void RunIO::initial_eval(const Stage& whole, const float* weights, const Backend& backend) {
  const double v = evaluate(whole, weights, 0, backend);
  if (writer) metrics->write({{"step", 0}, {"tokens", 0}, {"train_loss", nullptr}, {"lr", 0.0}, {"grad_norm", nullptr},
                  {"tok_per_s", 0.0}, {"elapsed_s", clock.seconds()}, {"val_loss", v}});
}

bool RunIO::eval_due(int64_t step) const {
  return (c.train.eval_every > 0 && step % c.train.eval_every == 0) || step == c.train.steps;
}
bool RunIO::ckpt_due(int64_t step) const {
  return (c.train.ckpt_every > 0 && step % c.train.ckpt_every == 0) || step == c.train.steps ||
         step == options.stop_after_step;
}

nlohmann::json RunIO::step_line(int64_t step, double loss, double grad_norm, double lr, double step_s) {
  const int64_t tokens_per_step = static_cast<int64_t>(c.train.micro_batches) * c.train.micro_batch_size * c.model.seq_len;
  if (writer) progress.step(step, loss, tokens_per_step / step_s, clock.seconds(), lr);
  result.final_train_loss = loss;
  result.steps_done = step;
  return {{"step", step},         {"tokens", step * tokens_per_step}, {"train_loss", loss}, {"lr", lr},
          {"grad_norm", grad_norm}, {"tok_per_s", tokens_per_step / step_s}, {"elapsed_s", clock.seconds()}};
}

// The delay rule a single-device run emulates, as the schedule whose version rule it reproduces:
// none -> synchronous; one_step -> PipeDream-2BW (sync_start when pipeline.sync_start_steps > 0);
// per_stage -> original PipeDream with pipeline.stages stages.
std::string emulated_rule(const RunConfig& c) {
  if (c.delay.emulate == "one_step") return c.pipeline.sync_start_steps > 0 ? "sync_start" : "2bw";
  if (c.delay.emulate == "per_stage") return "pipedream";
  return "gpipe";
}

// One device. With a delay rule, the step-t gradient of each parameter is computed on the weight version the
// emulated pipeline's stage holding it would use (pipeline::version_for), and applied to W(t): exactly the
// pipeline's arithmetic, without the pipeline.
void run_single_device(const RunConfig& c, RunIO& io) {
  const int B = c.train.micro_batch_size, T = c.model.seq_len, M = c.train.micro_batches;
  const std::string rule = emulated_rule(c);
  const int p = rule == "pipedream" ? c.pipeline.stages : 1;
  const int64_t K = c.pipeline.sync_start_steps;
  const int max_lag = rule == "gpipe" ? 0 : rule == "pipedream" ? p - 1 : 1;
  const bool predict = c.delay.correction == "weight_prediction";  // also needs the version below the oldest read
  StageState state(c.model, whole_model(c.model), c.optim, max_lag + (predict ? 1 : 0), c.delay.correction == "ef",
                   parse_device(c.train.device));
  const Backend& be = state.backend;
  // Which emulated stage holds each parameter (per-stage delays differ between them).
  std::vector<int> stage_of(state.stage.params().size(), 0);
  // Only the per-stage emulator has several stages to place (so only it times the pieces when balance = measured).
  if (p > 1) {
    const auto specs = partition_model(c.model, p, balance_costs(c.model, c.pipeline.balance, c.train.micro_batch_size));
    for (int s = 1; s < p; ++s) {  // stage 0 is the default above
      const Stage emulated(c.model, specs[s]);
      for (size_t i = 0; i < stage_of.size(); ++i)
        if (emulated.params().find(state.stage.params().all()[i].name)) stage_of[i] = s;
    }
  }
  Buffer<float> mixed(be.device());  // weights assembled from several versions (per-stage delays)
  int64_t start_step = 0;
  if (!io.resume_from.empty()) {
    start_step = load_checkpoint(io.resume_from, {&state});
  } else {
    state.init_weights(static_cast<uint64_t>(c.train.seed));  // older versions = W(0): the startup convention
  }
  io.open_metrics(start_step);
  auto acts = be.make_activations(state.stage, B, T);
  auto scratch = be.make_scratch(state.stage, B, T);
  std::vector<int32_t> inputs(static_cast<size_t>(B) * T), targets(inputs.size());
  const std::unique_ptr<RoundedWeights> rounded = be.make_rounded_weights(static_cast<int64_t>(state.weights.size()));
  if (start_step == 0) io.initial_eval(state.stage, state.weights.data(), be);

  for (int64_t t = start_step; t < c.train.steps; ++t) {
    Stopwatch step_clock;
    const double lr_scale = lr_scale_at(t, c.train.steps, c.optim.warmup_frac, c.optim.min_lr_frac);
    std::vector<int64_t> lag(p);
    for (int s = 0; s < p; ++s) lag[s] = t - pipeline::version_for(rule, t, s, p, K);
    const float* w = state.version_at_lag(lag[0]);
    if (predict || std::any_of(lag.begin(), lag.end(), [&](int64_t l) { return l != lag[0]; })) {
      if (mixed.size() != state.weights.size()) mixed.zeros(state.weights.size());
      for (size_t i = 0; i < stage_of.size(); ++i) {
        const ParamInfo& prm = state.stage.params().all()[i];
        const int64_t l = lag[stage_of[i]];
        const float* v = state.version_at_lag(l) + prm.offset;
        float* out = mixed.data() + prm.offset;
        if (predict && l > 0) {
          // Weight prediction (host buffers only, see check_supported): extrapolate the last known weight
          // change over the delay, W(v) + lag (W(v) - W(v-1)): what the stage could compute when the forward starts.
          const float* prev = state.version_at_lag(l + 1) + prm.offset;
          for (int64_t k = 0; k < prm.numel; ++k) out[k] = v[k] + static_cast<float>(l) * (v[k] - prev[k]);
        } else {
          be.copy(out, v, prm.numel);
        }
      }
      w = mixed.data();
    }
    be.fill_zero(state.grad.data(), static_cast<int64_t>(state.grad.size()));
    double loss = 0.0;
    if (rounded) rounded->round(w);  // w is constant over the step's products
    for (int mb = 0; mb < M; ++mb) {  // gradient accumulation in micro-batch order
      sample_train_batch(io.train_data, static_cast<uint64_t>(c.train.seed), t, mb, B, T, inputs.data(), targets.data());
      loss += be.forward(state.stage, w, *acts, inputs.data(), nullptr, targets.data());
      be.backward(state.stage, w, state.grad.data(), *acts, *scratch, nullptr, 1.0f / M);
    }
    if (rounded) rounded->forget();  // before the optimizer changes w
    loss /= M;
    reduce_tied_embedding_local(state);
    const double grad_norm = std::sqrt(unique_grad_sum_squares(state));
    if (!std::isfinite(loss) || !std::isfinite(grad_norm)) {
      io.progress.finish();
      save_checkpoint(io.options.out_dir, t, c, {&state}, c.train.keep_ckpts + 1);
      throw Error(ExitCode::diverged, "training diverged at step " + std::to_string(t) + ": loss " +
                                          std::to_string(loss) + ", grad norm " + std::to_string(grad_norm) +
                                          "; the state before this step is saved in " + io.options.out_dir + "/checkpoints");
    }
    optimizer_step(state, lr_scale, clip_scale(c.optim.clip, grad_norm), c.delay, w);

    const int64_t step = t + 1;
    nlohmann::json line = io.step_line(step, loss, grad_norm, c.optim.lr * lr_scale, step_clock.seconds());
    if (rule != "gpipe") line["staleness"] = lag;
    if (io.eval_due(step)) line["val_loss"] = io.evaluate(state.stage, state.weights.data(), step, be);
    io.metrics->write(line);
    if (io.ckpt_due(step)) save_checkpoint(io.options.out_dir, step, c, {&state}, c.train.keep_ckpts);
    if (step == io.options.stop_after_step) break;
  }
}

}  // namespace onestep
