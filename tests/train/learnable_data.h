// Shared by the trainer tests (tests/train) and the GPU trainer test (tests/cuda): a small learnable corpus and
// the matching tiny model settings.
#pragma once
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "data/shards.h"

namespace onestep::test {

// A noisy repeating sequence over a 64-token vocabulary, token i = (i * stride) % 64 with one in `noise_every`
// replaced at random: dir/train_0.bin (20k tokens), dir/val_0.bin (val_tokens, noise-free).
inline void write_learnable_shards(const std::filesystem::path& dir, uint32_t seed = 1, int noise_every = 5,
                                   int stride = 7, int val_tokens = 2000) {
  std::mt19937 g(seed);
  std::vector<int32_t> train, val;
  for (int i = 0; i < 20000; ++i)
    train.push_back(g() % noise_every == 0 ? static_cast<int32_t>(g() % 64) : (i * stride) % 64);
  for (int i = 0; i < val_tokens; ++i) val.push_back((i * stride) % 64);
  write_shard((dir / "train_0.bin").string(), train, 64);
  write_shard((dir / "val_0.bin").string(), val, 64);
}

// --set overrides of a 2-layer model (GQA) on those shards: 6 steps of 2 x 2 x 16 tokens, AdamW.
inline std::vector<std::string> tiny_run_sets(const std::filesystem::path& dir) {
  return {"model.vocab_size=64", "model.d_model=32", "model.n_layers=2", "model.n_heads=4", "model.n_kv_heads=2",
          "model.ffn_hidden=48", "model.seq_len=16", "train.steps=6", "train.micro_batch_size=2",
          "train.micro_batches=2", "train.eval_every=3", "train.eval_tokens=64", "train.ckpt_every=0",
          "train.log_every=1", "train.threads=2", "optim.name=adamw", "optim.lr=0.01",
          "data.train=" + (dir / "train_*.bin").string(), "data.val=" + (dir / "val_*.bin").string()};
}

}  // namespace onestep::test
