// Trainer-level guarantees: bit-for-bit resume, the one-step delay emulator's update rule and startup
// convention, EF with c = 0 equal to plain delayed training, and refusing a folder that holds another run.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "core/error.h"
#include "data/loader.h"
#include "data/shards.h"
#include "io/safetensors.h"
#include "kernels/cpu/ops.h"
#include "../temp_dir_test.h"
#include "learnable_data.h"
#include "train/checkpoint.h"
#include "train/stage_state.h"
#include "train/trainer.h"

namespace fs = std::filesystem;
using namespace onestep;

namespace {

class TrainerTest : public test::TempDirTest {
 protected:
  void SetUp() override {
    TempDirTest::SetUp();
    test::write_learnable_shards(dir_);
  }

  RunConfig config(std::vector<std::string> extra = {}) const {
    std::vector<std::string> sets = test::tiny_run_sets(dir_);
    sets.insert(sets.end(), extra.begin(), extra.end());
    return parse_config("", "test.toml", sets);
  }

  static std::vector<float> final_weights(const std::string& run) {
    const std::string ck = latest_checkpoint(run);
    SafetensorsReader r(ck + "/state.safetensors");
    std::vector<float> all;
    for (const auto& n : r.names()) {
      if (n.rfind("weights.", 0) != 0) continue;
      int64_t numel = 1;
      for (auto d : r.shape(n)) numel *= d;
      std::vector<float> t(numel);
      r.read_into(n, t.data(), r.shape(n));
      all.insert(all.end(), t.begin(), t.end());
    }
    return all;
  }
  // Metrics without the wall-clock fields.
  static std::vector<nlohmann::json> metrics(const std::string& run) {
    std::vector<nlohmann::json> out;
    std::ifstream in(run + "/metrics.jsonl");
    for (std::string line; std::getline(in, line);) {
      auto j = nlohmann::json::parse(line);
      j.erase("tok_per_s"), j.erase("elapsed_s");
      out.push_back(j);
    }
    return out;
  }
  std::string run(const std::string& name) const { return (dir_ / name).string(); }
  void check_rule(bool predict);
};

}  // namespace

// Bit-for-bit resume holds for a fixed thread count (train.threads): the kernels split work statically and
// reduce in a fixed order, and batches are a pure function of (seed, step, micro-batch).
TEST_F(TrainerTest, ResumeIsBitForBit) {
  for (std::string delay : {"none", "one_step"}) {
    std::vector<std::string> extra = {"delay.emulate=" + delay};
    if (delay == "one_step") extra.push_back("delay.correction=ef");
    const RunConfig c = config(extra);
    const std::string a = run("a_" + delay), b = run("b_" + delay);
    run_training(c, {a, false, -1});
    run_training(c, {b, false, 4});  // interrupted after step 4 (eval at 3, not at 4)
    EXPECT_EQ(latest_checkpoint(b), b + "/checkpoints/step_00000004");
    run_training(c, {b, true, -1});
    EXPECT_EQ(final_weights(a), final_weights(b)) << delay;
    const auto ma = metrics(a), mb = metrics(b);
    ASSERT_EQ(ma.size(), 7u);  // step 0 (initial eval) + 6 steps
    EXPECT_EQ(ma, mb) << delay;
  }
}

TEST_F(TrainerTest, LossDecreases) {
  const TrainResult r = run_training(config({"train.steps=30", "train.eval_every=0"}), {run("x"), false, -1});
  EXPECT_LT(r.final_val_loss, r.first_val_loss - 1.0);
  EXPECT_TRUE(fs::exists(run("x") + "/checkpoints/latest"));
  EXPECT_TRUE(fs::exists(run("x") + "/config.toml"));
}

// PAPER.md §1: under 2BW's rule batches 0 and 1 are both computed on W(0), batch 2 on W(1). Reproduced here by
// hand from the model and optimizer, independently of the trainer's stale-copy bookkeeping.
TEST_F(TrainerTest, OneStepDelayFollowsThePapersRule) { check_rule(false); }
// Weight prediction: the gradient of step t is computed on W(t-1) + (W(t-1) - W(t-2)) (versions below 0 are W(0)).
TEST_F(TrainerTest, WeightPredictionExtrapolatesTheLastChange) { check_rule(true); }

void TrainerTest::check_rule(bool predict) {
  std::vector<std::string> sets = {"delay.emulate=one_step", "train.steps=3", "optim.clip=0"};
  if (predict) sets.push_back("delay.correction=weight_prediction");
  const RunConfig c = config(sets);
  const std::string out = run(predict ? "wp" : "d");
  run_training(c, {out, false, -1});

  StageState s(c.model, whole_model(c.model), c.optim, false, false);
  s.stage.init_weights(s.weights.data(), static_cast<uint64_t>(c.train.seed));
  const int B = c.train.micro_batch_size, T = c.model.seq_len, M = c.train.micro_batches;
  TokenDataset data(c.data.train, "data.train", c.model.vocab_size);
  auto acts = s.stage.make_activations(B, T);
  auto scratch = s.stage.make_scratch(B, T);
  auto grad_at = [&](const std::vector<float>& w, int64_t step) {
    std::vector<float> g(w.size(), 0.f);
    std::vector<int32_t> in(B * T), tg(B * T);
    for (int mb = 0; mb < M; ++mb) {
      sample_train_batch(data, c.train.seed, step, mb, B, T, in.data(), tg.data());
      s.stage.forward(w.data(), *acts, in.data(), nullptr, tg.data());
      s.stage.backward(w.data(), g.data(), *acts, *scratch, nullptr, 1.0f / M);
    }
    return g;
  };
  std::vector<std::vector<float>> W = {s.weights.to_host()};
  for (int64_t t = 0; t < 3; ++t) {
    std::vector<float> stale = W[std::max<int64_t>(t - 1, 0)];
    if (predict) {
      const std::vector<float>& before = W[std::max<int64_t>(t - 2, 0)];
      for (size_t i = 0; i < stale.size(); ++i) stale[i] = stale[i] + (stale[i] - before[i]);
    }
    s.grad = grad_at(stale, t);
    reduce_tied_embedding_local(s);
    s.weights = W[t];
    optimizer_step(s, lr_scale_at(t, 3, c.optim.warmup_frac, c.optim.min_lr_frac), 1.0f, c.delay);
    W.push_back(s.weights.to_host());
  }
  EXPECT_EQ(final_weights(out), [&] {
    // Same order as the checkpoint: parameters in table order without the padding.
    std::vector<float> out;
    for (const auto& p : s.stage.params().all()) out.insert(out.end(), W[3].begin() + p.offset, W[3].begin() + p.offset + p.numel);
    return out;
  }());
}

// The tied embedding's two copies (input side, output side) stay identical through training.
TEST_F(TrainerTest, TiedCopiesStayIdentical) {
  const RunConfig c = config({"optim.name=muon"});
  run_training(c, {run("t"), false, -1});
  SafetensorsReader r(latest_checkpoint(run("t")) + "/state.safetensors");
  const std::vector<int64_t> shape = {64, 32};
  std::vector<float> e(64 * 32), h(64 * 32), e0(64 * 32);
  r.read_into("weights.model.embed_tokens.weight", e.data(), shape);
  r.read_into("weights.lm_head.weight", h.data(), shape);
  EXPECT_EQ(e, h);
  StageState init(c.model, whole_model(c.model), c.optim, false, false);
  init.stage.init_weights(init.weights.data(), static_cast<uint64_t>(c.train.seed));
  const ParamInfo& p = init.stage.params().at("model.embed_tokens.weight");
  EXPECT_NE(e, std::vector<float>(init.weights.begin() + p.offset, init.weights.begin() + p.offset + p.numel))
      << "the embedding must have trained";
}

TEST_F(TrainerTest, EfWithZeroCoefficientIsPlainDelay) {
  run_training(config({"delay.emulate=one_step"}), {run("plain"), false, -1});
  run_training(config({"delay.emulate=one_step", "delay.correction=ef", "delay.ef_coef=0"}), {run("ef0"), false, -1});
  run_training(config({"delay.emulate=one_step", "delay.correction=ef", "delay.ef_coef=1"}), {run("ef1"), false, -1});
  EXPECT_EQ(final_weights(run("plain")), final_weights(run("ef0")));
  EXPECT_NE(final_weights(run("plain")), final_weights(run("ef1")));
}

TEST_F(TrainerTest, RefusesAFolderHoldingAnotherRun) {
  const RunConfig c = config({"train.steps=2"});
  run_training(c, {run("r"), false, -1});
  const auto before = fs::last_write_time(run("r") + "/metrics.jsonl");
  const std::string metrics_before = [&] { std::ifstream in(run("r") + "/metrics.jsonl"); std::stringstream ss; ss << in.rdbuf(); return ss.str(); }();
  try {
    run_training(c, {run("r"), false, -1});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::bad_input);
    EXPECT_NE(std::string(e.what()).find(run("r")), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("--resume"), std::string::npos);
  }
  EXPECT_EQ(fs::last_write_time(run("r") + "/metrics.jsonl"), before);
  std::ifstream in(run("r") + "/metrics.jsonl");
  std::stringstream ss;
  ss << in.rdbuf();
  EXPECT_EQ(ss.str(), metrics_before);
  // Resuming with another model shape is refused too.
  RunConfig other = config({"train.steps=2", "model.d_model=64"});
  EXPECT_THROW(run_training(other, {run("r"), true, -1}), Error);
}

TEST_F(TrainerTest, CheckpointOfAnotherShapeIsRejected) {
  const RunConfig c = config({"train.steps=1"});
  run_training(c, {run("s"), false, -1});
  const RunConfig other = config({"model.ffn_hidden=40"});
  StageState st(other.model, whole_model(other.model), other.optim, false, false);
  try {
    load_checkpoint(latest_checkpoint(run("s")), {&st});
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::bad_input);
    EXPECT_NE(std::string(e.what()).find("state.safetensors"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("gate_proj"), std::string::npos);
  }
}

// A checkpoint trained in another matmul precision (here: one written by a bf16 GPU run) is refused on resume
// with the precision it was trained in, before anything in the run folder changes.
TEST_F(TrainerTest, CheckpointOfAnotherPrecisionIsRejectedOnResume) {
  run_training(config({"train.steps=2"}), {run("p"), false, -1});
  const std::string ckpt_config = latest_checkpoint(run("p")) + "/config.toml";
  std::string text = [&] { std::ifstream in(ckpt_config); std::stringstream ss; ss << in.rdbuf(); return ss.str(); }();
  for (auto [key, value] : {std::pair<std::string, std::string>{"precision", "bf16"}, {"device", "cuda"}}) {
    const size_t at = text.find("\n" + key + " = ");  // the whole line: the quoting is the writer's choice
    ASSERT_NE(at, std::string::npos) << key << " in:\n" << text;
    text.replace(at + 1, text.find('\n', at + 1) - at - 1, key + " = \"" + value + "\"");
  }
  std::ofstream(ckpt_config) << text;
  const auto metrics_before = metrics(run("p"));
  try {
    run_training(config({"train.steps=4"}), {run("p"), true, -1});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::bad_input);
    const std::string msg = e.what();
    for (const char* part : {"config.toml", "train.precision", "trained in bf16", "asks for fp32",
                             "--set train.precision=bf16"})
      EXPECT_NE(msg.find(part), std::string::npos) << part << " in: " << msg;
  }
  EXPECT_EQ(metrics(run("p")), metrics_before);
}

// A run stopped before its first checkpoint (the folder holds only its config.toml) resumes as a fresh start.
TEST_F(TrainerTest, ResumeWithoutACheckpointStartsFresh) {
  const RunConfig c = config({"train.steps=2"});
  fs::create_directories(run("q"));
  std::ofstream(run("q") + "/config.toml") << to_toml(c);
  run_training(c, {run("q"), true, -1});
  EXPECT_EQ(latest_checkpoint(run("q")), run("q") + "/checkpoints/step_00000002");
}
