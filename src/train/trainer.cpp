#include "train/trainer.h"

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
#include "kernels/cpu/ops.h"
#include "train/checkpoint.h"
#include "train/evaluate.h"
#include "train/metrics.h"
#include "train/plots.h"
#include "train/progress.h"
#include "train/stage_state.h"

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
  if (c.pipeline.schedule != "none" || c.pipeline.stages != 1)
    bad_input(c.source, "pipeline.schedule '" + c.pipeline.schedule + "' with pipeline.stages = " +
                            std::to_string(c.pipeline.stages) +
                            ": pipeline schedules are not implemented yet; use schedule = \"none\", stages = 1 "
                            "and delay.emulate = \"one_step\" for 2BW's update rule on one device");
  if (c.delay.emulate == "per_stage")
    bad_input(c.source, "delay.emulate: 'per_stage' is not implemented yet; expected none or one_step");
  if (c.delay.correction != "none" && c.delay.emulate == "none")
    bad_input(c.source, "delay.correction: '" + c.delay.correction +
                            "' corrects a delayed gradient, but this run has none (set delay.emulate or a "
                            "delayed pipeline.schedule)");
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
    if (to_toml(RunConfig{old.model}) != to_toml(RunConfig{config.model}))
      bad_input(cfg.string(), "[model]: the run in this folder has another model shape than " + config.source);
  }
  return latest_checkpoint(options.out_dir);
}

TrainResult run_training(const RunConfig& c, const TrainOptions& options) {
  check_supported(c);
  const std::string resume_from = prepare_run_dir(c, options);
  set_num_threads(c.train.threads);

  const int B = c.train.micro_batch_size, T = c.model.seq_len, M = c.train.micro_batches;
  check_tokenizer_matches(c);  // first: a wrong tokenizer is the likelier cause of out-of-range tokens
  const TokenDataset train_data(c.data.train, "data.train", c.model.vocab_size);
  const TokenDataset val_data(c.data.val, "data.val", c.model.vocab_size);

  const bool delayed = c.delay.emulate == "one_step";
  StageState state(c.model, whole_model(c.model), c.optim, delayed, c.delay.correction == "ef");
  int64_t start_step = 0;
  if (!resume_from.empty()) {
    start_step = load_checkpoint(resume_from, {&state});
  } else {
    state.stage.init_weights(state.weights.data(), static_cast<uint64_t>(c.train.seed));
    if (delayed) state.stale = state.weights;  // W(-1) := W(0): batches 0 and 1 both see W(0)
  }

  fs::create_directories(options.out_dir);
  {
    std::ofstream out(fs::path(options.out_dir) / "config.toml");
    out << "# resolved by onestep from " << c.source << "\n" << to_toml(c);
  }
  MetricsLog metrics(options.out_dir, resume_from.empty() ? -1 : start_step);
  Progress progress(c.train.steps, c.train.log_every);
  std::printf("onestep train: %s, %.2fM parameters, %d x %d x %d tokens per step, optimizer %s, delay %s%s, "
              "%d threads, %s\n",
              c.model.preset.c_str(), count_params(c.model) / 1e6, M, B, T, c.optim.name.c_str(),
              c.delay.emulate.c_str(), c.delay.correction == "ef" ? " + EF" : "", num_threads(),
              resume_from.empty() ? "fresh start" : ("resuming " + resume_from).c_str());

  auto acts = state.stage.make_activations(B, T);
  auto scratch = state.stage.make_scratch(B, T);
  std::vector<int32_t> inputs(static_cast<size_t>(B) * T), targets(inputs.size());
  const int64_t tokens_per_step = static_cast<int64_t>(M) * B * T;
  TrainResult result;
  Stopwatch clock;
  auto eval_now = [&](int64_t step) {
    // Validation runs on W(t), the weights the run would deploy.
    const double v = evaluate_loss(state.stage, state.weights.data(), val_data, c.train.eval_tokens, B, T);
    progress.note("step " + std::to_string(step) + ": val_loss " + std::to_string(v));
    return v;
  };

  if (start_step == 0) {
    result.first_val_loss = eval_now(0);
    metrics.write({{"step", 0}, {"tokens", 0}, {"train_loss", nullptr}, {"lr", 0.0}, {"grad_norm", nullptr},
                   {"tok_per_s", 0.0}, {"elapsed_s", clock.seconds()}, {"val_loss", result.first_val_loss}});
  }

  for (int64_t t = start_step; t < c.train.steps; ++t) {
    Stopwatch step_clock;
    const double lr_scale = lr_scale_at(t, c.train.steps, c.optim.warmup_frac, c.optim.min_lr_frac);
    cpu::fill_zero(state.grad.data(), static_cast<int64_t>(state.grad.size()));
    double loss = 0.0;
    for (int mb = 0; mb < M; ++mb) {  // gradient accumulation in micro-batch order
      sample_train_batch(train_data, static_cast<uint64_t>(c.train.seed), t, mb, B, T, inputs.data(), targets.data());
      loss += state.stage.forward(state.compute_weights(), *acts, inputs.data(), nullptr, targets.data());
      state.stage.backward(state.compute_weights(), state.grad.data(), *acts, *scratch, nullptr, 1.0f / M);
    }
    loss /= M;
    reduce_tied_embedding_local(state);
    const double grad_norm = std::sqrt(unique_grad_sum_squares(state));
    if (!std::isfinite(loss) || !std::isfinite(grad_norm)) {
      progress.finish();
      save_checkpoint(options.out_dir, t, c, {&state}, c.train.keep_ckpts + 1);
      throw Error(ExitCode::diverged, "training diverged at step " + std::to_string(t) + ": loss " +
                                          std::to_string(loss) + ", grad norm " + std::to_string(grad_norm) +
                                          "; the state before this step is saved in " + options.out_dir + "/checkpoints");
    }
    const float clip_scale =
        (c.optim.clip > 0 && grad_norm > c.optim.clip) ? static_cast<float>(c.optim.clip / grad_norm) : 1.0f;
    optimizer_step(state, lr_scale, clip_scale, c.delay);

    const int64_t step = t + 1;
    const double step_s = step_clock.seconds();
    const double lr = c.optim.lr * lr_scale;
    nlohmann::json line = {{"step", step},       {"tokens", step * tokens_per_step},
                           {"train_loss", loss}, {"lr", lr},
                           {"grad_norm", grad_norm}, {"tok_per_s", tokens_per_step / step_s},
                           {"elapsed_s", clock.seconds()}};
    if (delayed) line["staleness"] = t == 0 ? 0 : 1;
    progress.step(step, loss, tokens_per_step / step_s, clock.seconds(), lr);
    const bool last = step == c.train.steps;
    const bool stop_here = step == options.stop_after_step;
    if ((c.train.eval_every > 0 && step % c.train.eval_every == 0) || last) {
      line["val_loss"] = eval_now(step);
      result.final_val_loss = line["val_loss"];
    }
    metrics.write(line);
    if ((c.train.ckpt_every > 0 && step % c.train.ckpt_every == 0) || last || stop_here) {
      save_checkpoint(options.out_dir, step, c, {&state}, c.train.keep_ckpts);
    }
    result.final_train_loss = loss;
    result.steps_done = step;
    if (stop_here) break;
  }
  progress.finish();
  write_plots(options.out_dir);
  result.checkpoint_dir = latest_checkpoint(options.out_dir);
  return result;
}

}  // namespace onestep
