// Training-level check of the model + optimizer: one batch of random targets is memorised.
#include <gtest/gtest.h>

#include <random>

#include "model/stage.h"
#include "optim/optimizer.h"

using namespace onestep;

TEST(StageTraining, OverfitsOneBatch) {
  ModelConfig c;
  c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.rope_theta = 100.0f;
  c.vocab_size = 32, c.d_model = 32, c.ffn_hidden = 64, c.seq_len = 16;
  Stage s(c, whole_model(c));
  std::vector<float> w(s.params().total()), g(w.size()), u(w.size());
  s.init_weights(w.data(), 2);
  OptimConfig oc;
  oc.name = "adamw", oc.lr = 1e-2, oc.weight_decay = 0.0;
  resolve_optim_defaults(oc, "test");
  auto opt = make_optimizer(oc, s.params());
  const int B = 2, T = c.seq_len;
  std::mt19937 gen(4);
  std::vector<int32_t> tokens(B * T), targets(B * T);
  for (auto& t : tokens) t = static_cast<int32_t>(gen() % c.vocab_size);
  for (auto& t : targets) t = static_cast<int32_t>(gen() % c.vocab_size);
  auto a = s.make_activations(B, T);
  auto scratch = s.make_scratch(B, T);
  double first = 0, last = 0;
  for (int step = 0; step < 300; ++step) {
    std::fill(g.begin(), g.end(), 0.f);
    last = s.forward(w.data(), *a, tokens.data(), nullptr, targets.data());
    if (step == 0) first = last;
    s.backward(w.data(), g.data(), *a, *scratch, nullptr, 1.f);
    opt->compute_update(u.data(), w.data(), g.data(), 1.0);
    for (size_t i = 0; i < w.size(); ++i) w[i] -= u[i];
  }
  EXPECT_GT(first, 3.0);
  EXPECT_LT(last, 0.05) << "random targets of one batch must be memorised";
}
