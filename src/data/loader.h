// Deterministic batches from token shards. A training micro-batch is a pure function of
// (seed, step, micro-batch index): resuming a run, or splitting it into pipeline stages, sees the same data,
// and the "data cursor" of a checkpoint is simply the step.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace onestep {

class TokenDataset {
 public:
  // Loads every shard matching `glob` (sorted), checking each token against vocab_size. `field` names the
  // config key in errors ("data.train").
  TokenDataset(const std::string& glob, const std::string& field, int vocab_size);
  int64_t size() const { return static_cast<int64_t>(tokens_.size()); }
  const int32_t* data() const { return tokens_.data(); }
  const std::vector<std::string>& files() const { return files_; }

 private:
  std::vector<int32_t> tokens_;
  std::vector<std::string> files_;
};

// B windows of T+1 tokens at random offsets drawn from CounterRng(seed, data, step, micro):
// inputs[b*T + t] = window[t], targets[b*T + t] = window[t + 1].
void sample_train_batch(const TokenDataset& d, uint64_t seed, int64_t step, int micro, int B, int T,
                        int32_t* inputs, int32_t* targets);

// Validation windows: the k-th window is tokens [k*T, k*T + T] (non-overlapping, in order).
int64_t eval_windows_available(const TokenDataset& d, int T);
// Fills B windows starting at window index `first` (windows past the end get targets -1, i.e. ignored).
void eval_batch(const TokenDataset& d, int64_t first, int B, int T, int32_t* inputs, int32_t* targets);

}  // namespace onestep
