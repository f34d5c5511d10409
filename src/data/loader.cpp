#include "data/loader.h"

#include "core/error.h"
#include "core/rng.h"
#include "data/shards.h"

namespace onestep {

TokenDataset::TokenDataset(const std::string& glob, const std::string& field, int vocab_size) {
  files_ = expand_glob(glob, field);
  for (const auto& f : files_) {
    std::vector<int32_t> t = read_shard(f, vocab_size);
    tokens_.insert(tokens_.end(), t.begin(), t.end());
  }
}

void sample_train_batch(const TokenDataset& d, uint64_t seed, int64_t step, int micro, int B, int T,
                        int32_t* inputs, int32_t* targets) {
  const int64_t span = d.size() - T;  // a window of T+1 tokens starts in [0, span)
  if (span <= 0)
    bad_input(d.files().empty() ? "data.train" : d.files()[0],
              "holds " + std::to_string(d.size()) + " tokens; need more than seq_len (" + std::to_string(T) + ")");
  CounterRng rng(seed, RngStream::data, (static_cast<uint64_t>(step) << 20) | static_cast<uint64_t>(micro));
  for (int b = 0; b < B; ++b) {
    const int32_t* w = d.data() + rng.below(static_cast<uint64_t>(span));
    for (int t = 0; t < T; ++t) {
      inputs[b * T + t] = w[t];
      targets[b * T + t] = w[t + 1];
    }
  }
}

int64_t eval_windows_available(const TokenDataset& d, int T) { return d.size() > T ? (d.size() - 1) / T : 0; }

void eval_batch(const TokenDataset& d, int64_t first, int B, int T, int32_t* inputs, int32_t* targets) {
  const int64_t n = eval_windows_available(d, T);
  for (int b = 0; b < B; ++b) {
    const int64_t k = first + b;
    for (int t = 0; t < T; ++t) {
      inputs[b * T + t] = k < n ? d.data()[k * T + t] : 0;
      targets[b * T + t] = k < n ? d.data()[k * T + t + 1] : -1;
    }
  }
}

}  // namespace onestep
