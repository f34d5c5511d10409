#include <cstdio>

#include "app/commands.h"
#include "core/threads.h"
#include "data/loader.h"
#include "model/stage.h"
#include "train/checkpoint.h"
#include "train/evaluate.h"

namespace onestep {

int cmd_eval(const std::string& checkpoint, const std::string& data_glob) {
  const std::string dir = resolve_checkpoint_dir(checkpoint);
  const RunConfig c = checkpoint_config(dir);
  set_num_threads(c.train.threads);
  Stage stage(c.model, whole_model(c.model));
  std::vector<float> w(static_cast<size_t>(stage.params().total()), 0.f);
  load_weights(dir, stage, w.data());
  const std::string glob = data_glob.empty() ? c.data.val : data_glob;
  const TokenDataset val(glob, data_glob.empty() ? "data.val" : "--data", c.model.vocab_size);
  const double loss = evaluate_loss(stage, w.data(), val, c.train.eval_tokens, c.train.micro_batch_size, c.model.seq_len);
  std::printf("{\"checkpoint\": \"%s\", \"data\": \"%s\", \"val_loss\": %.6f}\n", dir.c_str(), glob.c_str(), loss);
  return 0;
}

}  // namespace onestep
