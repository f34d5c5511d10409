// Checkpoints: DIR/checkpoints/step_NNNNNNNN/ holds
//   state.safetensors  every live tensor: "weights.<param>", "stale.<param>" (one-step delay),
//                      "prev_update.<param>" (EF), "optim.<optimizer state buffer>"
//   state.json         step, optimizer step count, data cursor, RNG description, format version
//   config.toml        the resolved run config
// The folder is written under a temporary name and renamed; DIR/checkpoints/latest (a small file naming the
// newest complete folder) is replaced atomically afterwards. Only the newest `keep` folders are kept.
#pragma once
#include <string>
#include <vector>

#include "config/config.h"
#include "train/stage_state.h"

namespace onestep {

void save_checkpoint(const std::string& run_dir, int64_t step, const RunConfig& config,
                     const std::vector<StageState*>& stages, int keep);

// The same in parts, for one process per stage (MPI): every rank writes its stages' tensors into the
// temporary folder as state.<part>.safetensors, then one rank finishes (metadata, rename, `latest`, retention).
// Readers take each tensor from whichever state*.safetensors file of the folder holds it.
std::string checkpoint_tmp_dir(const std::string& run_dir, int64_t step);  // creates nothing
void write_checkpoint_part(const std::string& tmp_dir, const std::string& part, const std::vector<StageState*>& stages);
void finish_checkpoint(const std::string& run_dir, int64_t step, const RunConfig& config, int64_t optimizer_steps,
                       bool has_prev_update, int stages, int keep);

// Accepts a step folder, a run folder (uses its checkpoints/latest), or the `latest` file itself.
// bad_input naming the path when no complete checkpoint is found there.
std::string resolve_checkpoint_dir(const std::string& path);
// "" when the run folder has no checkpoint yet.
std::string latest_checkpoint(const std::string& run_dir);

RunConfig checkpoint_config(const std::string& ckpt_dir);
// Restores every stage's tensors (shapes checked against the model: a checkpoint of another shape is a
// bad_input naming the file and the tensor). Returns the step to continue from.
int64_t load_checkpoint(const std::string& ckpt_dir, const std::vector<StageState*>& stages);

}  // namespace onestep

namespace onestep {
// Reads only the model weights ("weights.<param>") of a checkpoint into a stage's flat buffer.
void load_weights(const std::string& ckpt_dir, const Stage& stage, float* weights);
}  // namespace onestep
