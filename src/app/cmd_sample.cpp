#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>

#include "app/commands.h"
#include "core/error.h"
#include "core/rng.h"
#include "core/threads.h"
#include "data/tokenizer.h"
#include "model/stage.h"
#include "train/checkpoint.h"

namespace onestep {

// Draws a token from logits with temperature and top-k; randomness from (seed, position) only.
static int32_t draw(const float* logits, int V, double temperature, int top_k, CounterRng& rng) {
  if (temperature <= 0) return static_cast<int32_t>(std::max_element(logits, logits + V) - logits);
  std::vector<int32_t> ids(V);
  std::iota(ids.begin(), ids.end(), 0);
  const int k = (top_k <= 0 || top_k > V) ? V : top_k;
  std::partial_sort(ids.begin(), ids.begin() + k, ids.end(), [&](int a, int b) { return logits[a] > logits[b]; });
  std::vector<double> p(k);
  for (int i = 0; i < k; ++i) p[i] = std::exp((logits[ids[i]] - logits[ids[0]]) / temperature);
  double r = rng.uniform() * std::accumulate(p.begin(), p.end(), 0.0);
  for (int i = 0; i < k; ++i) {
    if ((r -= p[i]) <= 0) return ids[i];
  }
  return ids[k - 1];
}

int cmd_sample(const SampleOptions& o) {
  if (o.tokens < 0) bad_input("--tokens", "expected a count >= 0");
  if (!(o.temperature >= 0) || !std::isfinite(o.temperature)) bad_input("--temperature", "expected a finite number >= 0");
  const std::string dir = resolve_checkpoint_dir(o.checkpoint);
  const RunConfig c = checkpoint_config(dir);
  set_num_threads(c.train.threads);
  const Tokenizer tok = Tokenizer::load(c.data.tokenizer);
  Stage stage(c.model, whole_model(c.model));
  std::vector<float> w(static_cast<size_t>(stage.params().total()), 0.f);
  load_weights(dir, stage, w.data());

  std::vector<int32_t> ids = tok.encode(o.prompt);
  ids.insert(ids.begin(), tok.eot_token());  // documents start after an end-of-text token, as in training
  std::printf("%s", o.prompt.c_str());
  std::fflush(stdout);
  for (int i = 0; i < o.tokens; ++i) {
    // Recompute the window each token (no KV cache): simple, and cheap at the sizes sampled on a CPU.
    const int T = static_cast<int>(std::min<size_t>(ids.size(), static_cast<size_t>(c.model.seq_len)));
    auto acts = stage.make_activations(1, T);
    stage.forward(w.data(), *acts, ids.data() + ids.size() - T, nullptr, nullptr);
    CounterRng rng(o.seed, RngStream::sample, static_cast<uint64_t>(i));
    const int32_t next = draw(acts->logits.as<float>() + static_cast<size_t>(T - 1) * c.model.vocab_size,
                              c.model.vocab_size, o.temperature, o.top_k, rng);
    if (next == tok.eot_token()) break;
    ids.push_back(next);
    if (next < tok.vocab_size()) std::printf("%s", tok.token_bytes(next).c_str());
    std::fflush(stdout);
  }
  std::printf("\n");
  return 0;
}

}  // namespace onestep
