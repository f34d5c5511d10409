#include <cstdio>
#include <filesystem>

#include "app/commands.h"
#include "config/config.h"
#include "train/trainer.h"

namespace onestep {

int cmd_train(const std::string& config_path, const std::vector<std::string>& overrides, std::string out, bool resume) {
  const RunConfig config = load_config(config_path, overrides);
  if (out.empty()) out = "runs/" + std::filesystem::path(config_path).stem().string();
  const TrainResult r = run_training(config, TrainOptions{out, resume});
  if (!r.writer) return 0;  // another MPI rank reports
  std::printf("done: %lld steps, val_loss %.4f -> %.4f, final train_loss %.4f\n", static_cast<long long>(r.steps_done),
              r.first_val_loss, r.final_val_loss, r.final_train_loss);
  std::printf("run folder: %s (config.toml, metrics.jsonl, plots/), checkpoint: %s\n", out.c_str(),
              r.checkpoint_dir.c_str());
  return 0;
}

}  // namespace onestep
