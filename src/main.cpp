// onestep: one binary, one subcommand per job. This file only parses arguments (CLI11) and hands off to
// src/app/; errors become the contract's exit codes (2 bad input, 3 diverged, 1 internal).
#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>
#include <string>

#include "app/cmd_data.h"
#include "app/commands.h"
#include "config/config.h"
#include "core/error.h"

using namespace onestep;

// `onestep --version`: what this binary was built with (the backends and transports are optional at build time).
static std::string build_features() {
  std::string s = "onestep; backends: cpu";
#ifdef ONESTEP_HAVE_CUDA
  s += ", cuda";
#endif
  s += "; pipeline transports: inproc";
#ifdef ONESTEP_HAVE_MPI
  s += ", mpi";
#endif
#ifdef ONESTEP_HAVE_NCCL
  s += ", nccl";
#endif
  return s;
}

int main(int argc, char** argv) {
  CLI::App app{"onestep: asynchronous pipeline-parallel LLM pretraining (PipeDream-2BW, delay-robust optimizers)"};
  app.set_version_flag("--version", build_features, "Print the backends and transports this binary was built with");
  app.require_subcommand(1);
  int rc = 0;

  std::string config, out, checkpoint, data, tokenizer, prompt, out_prefix;
  std::vector<std::string> sets, inputs;
  bool resume = false;
  int vocab_size = 0, bench_steps = 5;
  double val_fraction = 0.1;
  SampleOptions so;

  auto* train = app.add_subcommand("train", "Train a model from a TOML config");
  train->add_option("--config", config, "Config file (configs/*.toml)")->required()->check(CLI::ExistingFile);
  train->add_option("--set", sets, "Override a key: section.key=value (repeatable)");
  train->add_option("--out", out, "Run folder (default runs/<config name>)");
  train->add_flag("--resume", resume, "Continue from the newest complete checkpoint in the run folder");
  train->callback([&] { rc = cmd_train(config, sets, out, resume); });

  auto* eval = app.add_subcommand("eval", "Validation loss of a checkpoint");
  eval->add_option("--checkpoint", checkpoint, "Checkpoint folder, run folder or checkpoints/latest")->required();
  eval->add_option("--data", data, "Token-shard glob (default: the run's data.val)");
  eval->callback([&] { rc = cmd_eval(checkpoint, data); });

  auto* sample = app.add_subcommand("sample", "Generate text from a checkpoint");
  sample->add_option("--checkpoint", so.checkpoint, "Checkpoint folder, run folder or checkpoints/latest")->required();
  sample->add_option("--prompt", so.prompt, "Text to continue");
  sample->add_option("--tokens", so.tokens, "Tokens to generate")->capture_default_str();
  sample->add_option("--temperature", so.temperature, "Softmax temperature (0: greedy)")->capture_default_str();
  sample->add_option("--top-k", so.top_k, "Sample among the k most likely tokens (0: all)")->capture_default_str();
  sample->add_option("--seed", so.seed, "Sampling seed")->capture_default_str();
  sample->callback([&] { rc = cmd_sample(so); });

  auto* tok = app.add_subcommand("tokenizer", "Tokenizer tools");
  tok->require_subcommand(1);
  auto* tok_train = tok->add_subcommand("train", "Train a byte-level BPE vocabulary");
  tok_train->add_option("--input", inputs, "Text files")->required()->check(CLI::ExistingFile);
  tok_train->add_option("--vocab-size", vocab_size, "Vocabulary size (256 bytes + merges + <|endoftext|>)")->required();
  tok_train->add_option("--out", out, "Tokenizer file to write")->required();
  tok_train->callback([&] { cmd_tokenizer_train(inputs, vocab_size, out); });

  auto* tokenize = app.add_subcommand("tokenize", "Text files -> llm.c token shards with a document-level split");
  tokenize->add_option("--tokenizer", tokenizer, "Tokenizer file, or GPT-2's encoder.json")->required();
  tokenize->add_option("--input", inputs, "Text files (one document each)")->required()->check(CLI::ExistingFile);
  tokenize->add_option("--out", out_prefix, "Output prefix: PREFIX_train.bin, PREFIX_val.bin")->required();
  tokenize->add_option("--val-fraction", val_fraction, "Share of documents for validation")->capture_default_str();
  tokenize->callback([&] { cmd_tokenize(tokenizer, inputs, out_prefix, val_fraction); });

  auto* exp = app.add_subcommand("export", "Checkpoint -> Hugging Face Llama safetensors + config.json");
  exp->add_option("--checkpoint", checkpoint, "Checkpoint folder, run folder or checkpoints/latest")->required();
  exp->add_option("--out", out, "FILE.safetensors")->required();
  exp->callback([&] { rc = cmd_export(checkpoint, out); });

  auto* bench = app.add_subcommand("bench", "Training throughput vs the sgemm peak, and peak memory");
  bench->add_option("--config", config, "Config file (default: the small preset, micro-batch 8, 2 threads)");
  bench->add_option("--set", sets, "Override a key: section.key=value (repeatable)");
  bench->add_option("--steps", bench_steps, "Timed steps (after 2 warm-up steps)")->capture_default_str();
  bench->callback([&] { rc = cmd_bench(config, sets, bench_steps); });

  auto* sched = app.add_subcommand("schedule", "Print a pipeline schedule's per-stage action lists");
  std::string sname, format = "text";
  int stages = 2, micro = 4, lookahead = PipelineConfig{}.lookahead;
  int64_t steps = 1, sync_steps = 0;
  sched->add_option("--schedule", sname, "gpipe, 1f1b, 2bw, pipedream or sync_start")->required();
  sched->add_option("--stages", stages, "Pipeline stages p")->required();
  sched->add_option("--microbatches", micro, "Micro-batches per optimizer step m")->required();
  sched->add_option("--steps", steps, "Optimizer steps (batches)")->capture_default_str();
  sched->add_option("--sync-start-steps", sync_steps, "K of sync_start")->capture_default_str();
  sched->add_option("--lookahead", lookahead,
                    "Extra warm-up forwards of every stage but the last (pipeline.lookahead; 0: textbook 1F1B)")
      ->capture_default_str();
  sched->add_option("--format", format,
                    "text, csv, trace (Chrome trace JSON of the simulated timeline) or summary (simulated step time, "
                    "idle, memory as JSON)")
      ->capture_default_str();
  ScheduleCosts costs;
  sched->add_option("--forward-ms", costs.forward_ms, "Simulated forward cost per micro-batch (one, or one per stage)")
      ->delimiter(',');
  sched->add_option("--backward-ms", costs.backward_ms, "Simulated backward cost per micro-batch")->delimiter(',');
  sched->add_option("--step-ms", costs.step_ms, "Simulated optimizer step cost")->delimiter(',');
  sched->add_option("--link-latency-ms", costs.link_latency_ms, "Latency of one activation/gradient message");
  sched->add_option("--link-gbps", costs.link_gbps, "Link bandwidth in Gbit/s (0: infinite)");
  sched->add_option("--activation-bytes", costs.activation_bytes, "Bytes of one micro-batch's activation message");
  sched->callback([&] { rc = cmd_schedule(sname, stages, micro, steps, sync_steps, lookahead, format, costs); });

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);  // prints the message
    return static_cast<int>(ExitCode::bad_input);
  } catch (const Error& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "error: %s\n", e.what());
    return static_cast<int>(e.code());
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "internal error: %s\n", e.what());
    return static_cast<int>(ExitCode::internal);
  }
  return rc;
}
