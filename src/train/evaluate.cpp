#include "train/evaluate.h"

#include <algorithm>

#include "core/error.h"

namespace onestep {

double evaluate_loss(const Stage& stage, const float* weights, const TokenDataset& val, int64_t max_tokens, int B,
                     int T, const Backend& backend) {
  const int64_t available = eval_windows_available(val, T);
  if (available == 0)
    bad_input(val.files().empty() ? "data.val" : val.files()[0],
              "holds " + std::to_string(val.size()) + " tokens; need more than seq_len (" + std::to_string(T) + ")");
  const int64_t windows = std::min(available, std::max<int64_t>(1, (max_tokens + T - 1) / T));
  auto acts = backend.make_activations(stage, B, T);
  std::vector<int32_t> in(static_cast<size_t>(B) * T), tgt(in.size());
  double total = 0.0;
  int64_t count = 0;
  for (int64_t first = 0; first < windows; first += B) {
    eval_batch(val, first, B, T, in.data(), tgt.data());
    // Windows past `windows` are masked so every evaluation sees exactly the same tokens.
    for (int b = 0; b < B; ++b)
      if (first + b >= windows)
        for (int t = 0; t < T; ++t) tgt[b * T + t] = -1;
    const double mean = backend.forward(stage, weights, *acts, in.data(), nullptr, tgt.data());
    total += mean * static_cast<double>(acts->valid_targets);
    count += acts->valid_targets;
  }
  return total / static_cast<double>(count);
}

}  // namespace onestep
