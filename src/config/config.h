// The run configuration: TOML file + `--set section.key=value` overrides, validated, printable.
// Every key of CONTRACT.md's "Config" section lives here; unknown keys, wrong types and out-of-range
// values are bad_input errors that name the file and the key.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/model_config.h"
#include "optim/optim_config.h"

namespace onestep {

struct DataConfig {
  std::string train;      // glob of token shards
  std::string val;        // glob of token shards
  std::string tokenizer;  // our .tok file, or GPT-2's encoder.json
};

struct TrainConfig {
  int64_t steps = 1000;
  int micro_batch_size = 8;   // sequences per micro-batch
  int micro_batches = 1;      // m: micro-batches per optimizer step
  int64_t seed = 1;
  int64_t eval_every = 100;   // 0: only the final evaluation
  int64_t eval_tokens = 65536;
  int64_t ckpt_every = 0;     // 0: only the final checkpoint
  int keep_ckpts = 2;
  int64_t log_every = 10;
  int threads = 0;            // 0: all cores
  std::string device = "cpu";  // cpu cuda: where the model, weights and optimizer state live (core/buffer.h)
  std::string precision = "fp32";  // fp32, tf32, bf16 (cuda only: tensor-core products; bf16 also stores their operands in bf16)
};

struct PipelineConfig {
  int stages = 1;
  std::string schedule = "none";  // none gpipe 1f1b 2bw pipedream sync_start
  int64_t sync_start_steps = 0;
  int lookahead = 1;  // extra warm-up forwards per stage but the last (pipeline/schedule.h): slack against jitter
  std::string transport = "inproc";  // inproc (threads) | mpi (a rank per stage) | nccl (a rank per GPU)
  bool trace = false;                // write DIR/trace.json: the real run's timeline (Chrome trace format)
  std::string balance = "params";    // params measured: what the partition balances (train/partition.h)
};

struct DelayConfig {
  std::string emulate = "none";     // none one_step per_stage
  // none; ef (error feedback on the update, PAPER.md §2); dc_asgd (g + lambda g*g*(w_now - w_stale), after
  // clipping); weight_prediction (gradients computed on W(v) + lag (W(v) - W(v-1)), SpecTrain-style; delay
  // emulators only)
  std::string correction = "none";
  double ef_coef = 1.0;
  double dc_lambda = 0.1;
  bool ef_adamw_params = true;  // Muon-family runs: also correct the AdamW-handled parameters (PAPER.md §2)
};

struct RunConfig {
  ModelConfig model;
  DataConfig data;
  TrainConfig train;
  OptimConfig optim;
  PipelineConfig pipeline;
  DelayConfig delay;
  std::string source = "<defaults>";  // the file it came from, for messages
};

// Parses FILE, applies the preset named by model.preset (file or override), then the file's other keys,
// then the overrides ("section.key=value"; the value is read as a TOML value, else as a bare string),
// then validates. Throws bad_input naming the file (or "--set") and the key.
RunConfig load_config(const std::string& path, const std::vector<std::string>& overrides = {});
// Parses a config from TOML text (tests, checkpoints); `where` names it in messages.
RunConfig parse_config(const std::string& toml_text, const std::string& where,
                       const std::vector<std::string>& overrides = {});
// The fully resolved config as TOML (every key, in a stable order). parse_config(to_toml(c)) == c.
std::string to_toml(const RunConfig& c);
void validate_run_config(const RunConfig& c, const std::string& where);

}  // namespace onestep
