// Whole-model checks on micro models: gradients against finite differences, the initial loss, overfitting
// one batch, and that a model cut into stages computes exactly what the whole model computes.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "core/threads.h"
#include "kernels/op_profile.h"
#include "model/stage.h"
#include "model/stage_compute.h"
#include "cpu_bf16_ops.h"

using namespace onestep;

namespace {

ModelConfig micro_config() {
  ModelConfig c;
  c.vocab_size = 23, c.d_model = 16, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.ffn_hidden = 24;
  c.seq_len = 7, c.rope_theta = 100.0f;
  return c;
}

struct Batch {
  std::vector<int32_t> tokens, targets;
};
Batch random_batch(const ModelConfig& c, int B, int T, unsigned seed) {
  std::mt19937 g(seed);
  Batch b;
  for (int i = 0; i < B * T; ++i) {
    b.tokens.push_back(static_cast<int32_t>(g() % c.vocab_size));
    b.targets.push_back(static_cast<int32_t>(g() % c.vocab_size));
  }
  b.targets[3] = -1;  // an ignored position must not contribute
  return b;
}

double loss_at(const Stage& s, const std::vector<float>& w, const Batch& b, int B, int T) {
  auto a = s.make_activations(B, T);
  return s.forward(w.data(), *a, b.tokens.data(), nullptr, b.targets.data());
}

}  // namespace

// For every parameter tensor, the directional derivative along a random direction supported on that tensor
// matches a central finite difference of the loss. Large-ish init so that every path carries signal.
TEST(StageGradient, EveryTensorMatchesFiniteDifferences) {
  set_num_threads(1);
  for (bool tied : {true, false}) {
    ModelConfig c = micro_config();
    c.tie_embeddings = tied;
    Stage s(c, whole_model(c));
    const int B = 2, T = c.seq_len;
    std::vector<float> w(s.params().total(), 0.f), g(w.size(), 0.f);
    std::mt19937 gen(7);
    std::normal_distribution<float> nd(0.f, 0.3f);
    for (const auto& p : s.params().all())
      for (int64_t i = 0; i < p.numel; ++i) w[p.offset + i] = (p.role == ParamRole::norm ? 1.f : 0.f) + nd(gen);
    Batch b = random_batch(c, B, T, 3);
    auto a = s.make_activations(B, T);
    auto scratch = s.make_scratch(B, T);
    s.forward(w.data(), *a, b.tokens.data(), nullptr, b.targets.data());
    s.backward(w.data(), g.data(), *a, *scratch, nullptr, 1.0f);
    for (const auto& p : s.params().all()) {
      std::vector<float> dir(p.numel);
      double analytic = 0;
      for (int64_t i = 0; i < p.numel; ++i) {
        dir[i] = nd(gen);
        analytic += static_cast<double>(dir[i]) * g[p.offset + i];
      }
      const float eps = 2e-3f;
      std::vector<float> wp = w, wm = w;
      for (int64_t i = 0; i < p.numel; ++i) wp[p.offset + i] += eps * dir[i], wm[p.offset + i] -= eps * dir[i];
      const double numeric = (loss_at(s, wp, b, B, T) - loss_at(s, wm, b, B, T)) / (2.0 * eps);
      EXPECT_NEAR(analytic, numeric, 2e-3 + 2e-2 * std::fabs(numeric)) << p.name << (tied ? " (tied)" : " (untied)");
    }
  }
}

TEST(StageInit, InitialLossIsNearLogVocab) {
  ModelConfig c = model_preset("tiny");
  Stage s(c, whole_model(c));
  std::vector<float> w(s.params().total());
  s.init_weights(w.data(), 1);
  const int B = 2, T = c.seq_len;
  Batch b = random_batch(c, B, T, 11);
  EXPECT_NEAR(loss_at(s, w, b, B, T), std::log(static_cast<double>(c.vocab_size)), 0.1);
}

TEST(StageInit, IndependentOfPartition) {
  ModelConfig c = micro_config();
  Stage whole(c, whole_model(c));
  Stage tail(c, StageSpec{7, 8, false, true});  // the MLP down part of block 1 + head
  std::vector<float> ww(whole.params().total()), wt(tail.params().total());
  whole.init_weights(ww.data(), 5);
  tail.init_weights(wt.data(), 5);
  for (const auto& p : tail.params().all()) {
    const ParamInfo& q = whole.params().at(p.name);
    for (int64_t i = 0; i < p.numel; ++i) ASSERT_EQ(wt[p.offset + i], ww[q.offset + i]) << p.name;
  }
  // The tied head copy starts equal to the embedding.
  const ParamInfo& e = whole.params().at("model.embed_tokens.weight");
  const ParamInfo& h = whole.params().at("lm_head.weight");
  for (int64_t i = 0; i < e.numel; ++i) ASSERT_EQ(ww[e.offset + i], ww[h.offset + i]);
}

// Two stages chained by hand give the whole model's loss and every gradient bit for bit on one thread, for
// every cut: between blocks, between the attention half and the MLP, and inside the MLP, where the norm's and
// the gate's outputs (before the up part) or SwiGLU's output (before the down part) cross with the stream (the
// tied embedding's two copies included:
// their sum is formed by the trainer's explicit reduction). `ops` computes, storing the matmul operands as `storage`.
template <class Ops>
void expect_every_cut_equals_whole(const Ops& ops, OperandStorage storage) {
  set_num_threads(1);
  ModelConfig c = micro_config();
  const int B = 2, T = c.seq_len;
  Stage whole(c, whole_model(c));
  std::vector<float> ww(whole.params().total());
  whole.init_weights(ww.data(), 9);
  Batch b = random_batch(c, B, T, 5);
  auto aw = whole.make_activations(B, T, Device::cpu, storage);
  auto sw = whole.make_scratch(B, T, Device::cpu, storage);
  std::vector<float> gw(ww.size(), 0.f);
  const double lw = whole.forward_on(ops, ww.data(), *aw, b.tokens.data(), nullptr, b.targets.data());
  whole.backward_on(ops, ww.data(), gw.data(), *aw, *sw, nullptr, 1.f);
  for (int cut = 1; cut < model_units(c); ++cut) {
    SCOPED_TRACE("cut after unit " + std::to_string(cut));
    Stage s0(c, StageSpec{0, cut, true, false}), s1(c, StageSpec{cut, model_units(c), false, true});
    EXPECT_EQ(s0.output_width(), s1.input_width());
    EXPECT_EQ(s0.params().size() + s1.params().size(), whole.params().size());
    std::vector<float> w0(s0.params().total()), w1(s1.params().total());
    s0.init_weights(w0.data(), 9), s1.init_weights(w1.data(), 9);
    std::vector<float> g0(w0.size(), 0.f), g1(w1.size(), 0.f);
    auto a0 = s0.make_activations(B, T, Device::cpu, storage), a1 = s1.make_activations(B, T, Device::cpu, storage);
    auto ss0 = s0.make_scratch(B, T, Device::cpu, storage), ss1 = s1.make_scratch(B, T, Device::cpu, storage);
    s0.forward_on(ops, w0.data(), *a0, b.tokens.data(), nullptr, nullptr);
    const double l1 = s1.forward_on(ops, w1.data(), *a1, nullptr, s0.output(*a0), b.targets.data());
    EXPECT_EQ(lw, l1);
    s1.backward_on(ops, w1.data(), g1.data(), *a1, *ss1, nullptr, 1.f);
    s0.backward_on(ops, w0.data(), g0.data(), *a0, *ss0, a1->d_input.data(), 1.f);
    int compared = 0;
    for (const auto* st : {&s0, &s1}) {
      const auto& g = st == &s0 ? g0 : g1;
      for (const auto& p : st->params().all()) {
        const ParamInfo& q = whole.params().at(p.name);
        for (int64_t i = 0; i < p.numel; ++i) ASSERT_EQ(g[p.offset + i], gw[q.offset + i]) << p.name;
        ++compared;
      }
    }
    EXPECT_EQ(compared, static_cast<int>(whole.params().size()));
  }
}

TEST(StageSplit, TwoStagesEqualTheWholeModelAtEveryCut) {
  expect_every_cut_equals_whole(CpuOps{}, OperandStorage::fp32);
}

// bf16 operand storage (the GPU's bf16 precision), run on the CPU through test::CpuBf16Ops: what crosses a cut is
// fp32 (widened exactly from bf16 and narrowed back exactly), so the split still equals the whole bit for bit.
TEST(StageBf16Operands, TwoStagesEqualTheWholeModelAtEveryCut) {
  expect_every_cut_equals_whole(test::CpuBf16Ops{}, OperandStorage::bf16);
}

// The products' operands and the logits are stored as bf16 (half the bytes), hold the rounding of what fp32 storage holds (first
// block's norm output, computed from the same exact embedding), and the whole model's loss and gradients follow
// the fp32 model's to bf16 accuracy, without equalling them.
TEST(StageBf16Operands, StoreRoundedOperandsAndTrackFp32) {
  set_num_threads(1);
  const ModelConfig c = micro_config();
  const int B = 2, T = c.seq_len, N = B * T;
  Stage s(c, whole_model(c));
  std::vector<float> w(s.params().total());
  s.init_weights(w.data(), 4);
  const Batch b = random_batch(c, B, T, 6);
  auto a32 = s.make_activations(B, T), a16 = s.make_activations(B, T, Device::cpu, OperandStorage::bf16);
  auto sc32 = s.make_scratch(B, T), sc16 = s.make_scratch(B, T, Device::cpu, OperandStorage::bf16);
  EXPECT_EQ(sc16->bytes(), sc32->bytes() - (sc32->dq_pre.bytes() + sc32->dk_pre.bytes() + sc32->dgate.bytes() +
                                            sc32->dup.bytes()) / 2);
  const Activations& f = *a32;
  const int64_t operand_bytes = f.ln1.bytes() + f.q.bytes() + f.k.bytes() + f.v.bytes() + f.att.bytes() +
                                f.ln2.bytes() + f.gate.bytes() + f.up.bytes() + f.h.bytes() + f.lnf.bytes() +
                                f.logits.bytes();
  EXPECT_EQ(a16->bytes(), a32->bytes() - operand_bytes / 2);

  std::vector<float> g32(w.size(), 0.f), g16(w.size(), 0.f);
  const double l32 = s.forward(w.data(), *a32, b.tokens.data(), nullptr, b.targets.data());
  const double l16 = s.forward_on(test::CpuBf16Ops{}, w.data(), *a16, b.tokens.data(), nullptr, b.targets.data());
  const float* ln1_32 = a32->ln1.as<float>();
  const bf16* ln1_16 = a16->ln1.as<bf16>();
  for (int i = 0; i < N * c.d_model; ++i) ASSERT_EQ(ln1_16[i].bits, to_bf16(ln1_32[i]).bits) << i;

  EXPECT_NE(l16, l32);
  EXPECT_NEAR(l16, l32, 1e-2 * l32);
  s.backward(w.data(), g32.data(), *a32, *sc32, nullptr, 1.f);
  s.backward_on(test::CpuBf16Ops{}, w.data(), g16.data(), *a16, *sc16, nullptr, 1.f);
  for (const auto& p : s.params().all()) {
    double err = 0, norm = 0;
    for (int64_t i = p.offset; i < p.offset + p.numel; ++i)
      err += (g16[i] - g32[i]) * double(g16[i] - g32[i]), norm += g32[i] * double(g32[i]);
    EXPECT_GT(err, 0.0) << p.name << ": bf16 storage changed nothing";
    EXPECT_LT(std::sqrt(err), 3e-2 * std::sqrt(norm)) << p.name;
  }
}

// Activations made for one storage and computed on with the other's ops: an internal error, never a reinterpretation.
TEST(StageBf16Operands, MismatchedStorageIsRefused) {
  const ModelConfig c = micro_config();
  Stage s(c, whole_model(c));
  std::vector<float> w(s.params().total());
  s.init_weights(w.data(), 4);
  const Batch b = random_batch(c, 1, c.seq_len, 6);
  auto a16 = s.make_activations(1, c.seq_len, Device::cpu, OperandStorage::bf16);
  auto a32 = s.make_activations(1, c.seq_len);
  EXPECT_THROW(s.forward(w.data(), *a16, b.tokens.data(), nullptr, b.targets.data()), Error);
  EXPECT_THROW(s.forward_on(test::CpuBf16Ops{}, w.data(), *a32, b.tokens.data(), nullptr, b.targets.data()), Error);
}

TEST(StageSpec, DescribesCutsInsideBlocks) {
  EXPECT_EQ(describe_units(0, 16), "blocks [0, 4)");
  EXPECT_EQ(describe_units(0, 17), "blocks [0, 4) + attention of block 4");
  EXPECT_EQ(describe_units(0, 18), "blocks [0, 4) + attention, MLP gate of block 4");
  EXPECT_EQ(describe_units(0, 19), "blocks [0, 4) + attention, MLP gate, MLP up of block 4");
  EXPECT_EQ(describe_units(17, 32), "MLP of block 4 + blocks [5, 8)");
  EXPECT_EQ(describe_units(18, 32), "MLP up, MLP down of block 4 + blocks [5, 8)");
  EXPECT_EQ(describe_units(19, 32), "MLP down of block 4 + blocks [5, 8)");
  EXPECT_EQ(describe_units(1, 6), "MLP of block 0 + attention, MLP gate of block 1");
  EXPECT_EQ(describe_units(4, 5), "attention of block 1");
  EXPECT_EQ(describe_units(7, 8), "MLP down of block 1");
  EXPECT_EQ(describe_units(4, 4), "no blocks");
}

// The op profiler (kernels/op_profile.h) sees every kernel call of a step under its name, the calls counted by
// the model's structure; nothing is recorded once it is no longer active, and the step computes the same loss.
TEST(OpProfile, CountsEveryKernelCallOfAStep) {
  set_num_threads(1);
  const ModelConfig c = micro_config();
  Stage s(c, whole_model(c));
  const int B = 2, T = c.seq_len;
  std::vector<float> w(s.params().total(), 0.f), g(w.size(), 0.f);
  s.init_weights(w.data(), 5);
  const Batch b = random_batch(c, B, T, 3);
  auto a = s.make_activations(B, T);
  auto scratch = s.make_scratch(B, T);
  const double plain = s.forward(w.data(), *a, b.tokens.data(), nullptr, b.targets.data());

  const auto profiler = make_host_op_profiler();
  double loss = 0;
  {
    const ActiveOpProfiler active(profiler.get());
    loss = s.forward(w.data(), *a, b.tokens.data(), nullptr, b.targets.data());
    s.backward(w.data(), g.data(), *a, *scratch, nullptr, 1.0f);
  }
  EXPECT_EQ(loss, plain);
  s.forward(w.data(), *a, b.tokens.data(), nullptr, b.targets.data());  // not profiled any more
  const auto ops = profiler->totals();
  const int64_t L = c.n_layers;
  auto calls = [&](const char* op) { return ops.count(op) ? ops.at(op).calls : int64_t{-1}; };
  EXPECT_EQ(calls("matmul_forward"), 7 * L + 1);  // q, k, v, o, gate, up, down per layer; the (tied) head
  EXPECT_EQ(calls("matmul_backward"), 7 * L + 1);
  EXPECT_EQ(calls("attention_forward"), L);
  EXPECT_EQ(calls("attention_backward"), L);
  EXPECT_EQ(calls("rmsnorm_forward"), 2 * L + 1);  // two per layer and the final norm
  EXPECT_EQ(calls("embedding_forward"), 1);
  EXPECT_EQ(calls("cross_entropy_forward"), 1);
  for (const auto& [name, t] : ops) EXPECT_GE(t.seconds, 0.0) << name;
}
