#include <cstdio>
#include <filesystem>
#include <string>

#include "app/commands.h"
#include "config/config.h"
#include "train/trainer.h"

namespace onestep {

int cmd_train(const std::string& config_path, const std::vector<std::string>& overrides, std::string out, bool resume) {
  const RunConfig config = load_config(config_path, overrides);
  if (out.empty()) out = "runs/" + std::filesystem::path(config_path).stem().string();
  const TrainResult r = run_training(config, TrainOptions{out, resume});
  if (!r.writer) return 0;  // another MPI rank reports
  // The validation loss from this session's first evaluation (step 0, or later when resumed) to its last.
  std::string val;
  if (r.first_val_step >= 0) {
    char buf[96];
    std::snprintf(buf, sizeof buf, ", val_loss %.4f%s -> %.4f", r.first_val_loss,
                  r.first_val_step > 0 ? (" (step " + std::to_string(r.first_val_step) + ")").c_str() : "",
                  r.final_val_loss);
    val = buf;
  }
  std::printf("done: %lld steps%s, final train_loss %.4f\n", static_cast<long long>(r.steps_done), val.c_str(),
              r.final_train_loss);
  std::printf("run folder: %s (config.toml, metrics.jsonl, plots/), checkpoint: %s\n", out.c_str(),
              r.checkpoint_dir.c_str());
  return 0;
}

}  // namespace onestep
