// The model on the GPU (Stage::forward_on / backward_on with CudaOps, src/gpu/stage_cuda.cpp) against the
// same model on the CPU (CpuOps): the whole model, and two stages cut inside a block's MLP chained
// through device memory, with grouped-query attention. Loss, every parameter gradient and the hidden-state
// gradient crossing the cut are compared.
//
// Tolerances: the loss to 1e-5 relative; gradients |gpu - cpu| <= 2e-3 |cpu| + 2e-4 max|cpu| per tensor. Each
// kernel alone agrees to 1e-4 (1e-3 for attention, test_cuda_kernels.cpp); a layer's backward chains about ten
// of them, and cuBLAS and OpenBLAS sum in different orders.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "kernels/cuda/cuda_ops.h"
#include "model/stage.h"

namespace {

using namespace onestep;
using namespace cuda_test;

ModelConfig gqa_config() {
  ModelConfig c;
  c.vocab_size = 97, c.d_model = 64, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.ffn_hidden = 96;
  c.seq_len = 24, c.rope_theta = 10000.0, c.norm_eps = 1e-5, c.tie_embeddings = true;
  return c;
}

std::vector<float> weights_of(const Stage& s) {
  std::vector<float> w(static_cast<size_t>(s.params().total()));
  s.init_weights(w.data(), 3);
  return w;
}

// One stage on both backends: forward (from tokens or an input hidden state), then backward (from its loss or
// an output gradient). The CPU side is the reference.
struct Pair {
  Pair(const ModelConfig& c, StageSpec spec, int B, int T)
      : stage(c, spec), w(weights_of(stage)), g(w.size(), 0.f), d_w(w), d_g(w.size()),
        a(stage.make_activations(B, T)), s(stage.make_scratch(B, T)),
        da(stage.make_activations(B, T, Device::cuda)), ds(stage.make_scratch(B, T, Device::cuda)) {}
  Stage stage;
  std::vector<float> w, g;
  Dev<float> d_w, d_g;
  std::unique_ptr<Activations> a;
  std::unique_ptr<BackwardScratch> s;
  std::unique_ptr<Activations> da;
  std::unique_ptr<BackwardScratch> ds;

  void compare_grads(const std::string& tag) const {
    const auto dg = d_g.host();
    for (const auto& p : stage.params().all())
      expect_close(std::vector<float>(dg.begin() + p.offset, dg.begin() + p.offset + p.numel),
                   std::vector<float>(g.begin() + p.offset, g.begin() + p.offset + p.numel), 2e-3, 2e-4,
                   "grad of " + p.name + tag);
  }
};

std::vector<int32_t> random_tokens(int n, int vocab, std::mt19937& rng) {
  std::uniform_int_distribution<int> d(0, vocab - 1);
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& x : t) x = d(rng);
  return t;
}

TEST(CudaStage, WholeModelMatchesTheCpu) {
  REQUIRE_GPU();
  const ModelConfig c = gqa_config();
  const int B = 2, T = c.seq_len;
  std::mt19937 rng(7);
  const auto tokens = random_tokens(B * T, c.vocab_size, rng);
  auto targets = random_tokens(B * T, c.vocab_size, rng);
  targets[5] = -1;  // an ignored position
  Pair m(c, whole_model(c), B, T);
  const double loss = m.stage.forward(m.w.data(), *m.a, tokens.data(), nullptr, targets.data());
  const CudaOps gpu;
  const double d_loss = m.stage.forward_on(gpu, m.d_w.get(), *m.da, tokens.data(), nullptr, targets.data());
  EXPECT_NEAR(d_loss, loss, 1e-5 * std::fabs(loss));
  EXPECT_EQ(m.da->valid_targets, m.a->valid_targets);
  m.stage.backward(m.w.data(), m.g.data(), *m.a, *m.s, nullptr, 0.5f);
  m.stage.backward_on(gpu, m.d_w.get(), m.d_g.get(), *m.da, *m.ds, nullptr, 0.5f);
  m.compare_grads(" (whole model)");
}

// Cuts inside block 1's MLP: before its up part (the stream, the norm's and the gate's outputs cross) and
// before its down part (the stream and SwiGLU's output h cross); stage 1 ends with the head. The boundary
// tensors and their gradients cross in device memory.
TEST(CudaStage, StagesCutInsideTheMlpMatchTheCpu) {
  REQUIRE_GPU();
  const ModelConfig c = gqa_config();
  for (const int cut : {6, 7}) {
    SCOPED_TRACE("cut before unit " + std::to_string(cut));
    const int B = 2, T = c.seq_len;
    std::mt19937 rng(8);
    const auto tokens = random_tokens(B * T, c.vocab_size, rng), targets = random_tokens(B * T, c.vocab_size, rng);
    Pair s0(c, StageSpec{0, cut, true, false}, B, T), s1(c, StageSpec{cut, 8, false, true}, B, T);
    ASSERT_EQ(s0.stage.output_width(), (cut == 6 ? 2 * c.d_model : c.d_model) + c.ffn_hidden);
    const CudaOps gpu;
    s0.stage.forward(s0.w.data(), *s0.a, tokens.data(), nullptr, nullptr);
    s0.stage.forward_on(gpu, s0.d_w.get(), *s0.da, tokens.data(), nullptr, nullptr);
    const double loss = s1.stage.forward(s1.w.data(), *s1.a, nullptr, s0.stage.output(*s0.a), targets.data());
    const double d_loss =
        s1.stage.forward_on(gpu, s1.d_w.get(), *s1.da, nullptr, s0.stage.output(*s0.da), targets.data());
    EXPECT_NEAR(d_loss, loss, 1e-5 * std::fabs(loss));
    s1.stage.backward(s1.w.data(), s1.g.data(), *s1.a, *s1.s, nullptr, 1.f);
    s1.stage.backward_on(gpu, s1.d_w.get(), s1.d_g.get(), *s1.da, *s1.ds, nullptr, 1.f);
    expect_close(s1.da->d_input.to_host(), s1.a->d_input.to_host(), 2e-3, 2e-4, "gradient crossing the cut");
    s0.stage.backward(s0.w.data(), s0.g.data(), *s0.a, *s0.s, s1.a->d_input.data(), 1.f);
    s0.stage.backward_on(gpu, s0.d_w.get(), s0.d_g.get(), *s0.da, *s0.ds, s1.da->d_input.data(), 1.f);
    s1.compare_grads(" (stage 1)");
    s0.compare_grads(" (stage 0)");
  }
}

}  // namespace
