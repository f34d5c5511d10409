// Every executable schedule against its single-device emulation of the same update rule:
//   gpipe, 1f1b       == one device with gradient accumulation over the same m micro-batches
//   2bw               == the one_step delay emulator (with clipping active, the tied embedding, EF)
// "Equal" is bit for bit: threads = 1 per stage and per device (BLAS splits work by thread count), micro-batch
// gradients accumulate in micro-batch order on both sides, the global grad norm is summed in parameter-table
// order from per-parameter sums, and the tied pair's gradient is summed as embedding + head on both sides.
#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <random>

#include <fstream>
#include <nlohmann/json.hpp>

#include "../temp_dir_test.h"
#include "learnable_data.h"
#include "pipeline/schedule.h"
#include "io/safetensors.h"
#include "train/checkpoint.h"
#include "train/partition.h"
#include "train/trainer.h"

namespace fs = std::filesystem;
using namespace onestep;

namespace {

class PipelineEquivalence : public test::TempDirTest {
 protected:
  void SetUp() override {
    TempDirTest::SetUp();
    test::write_learnable_shards(dir_, /*seed=*/2, /*noise_every=*/4, /*stride=*/5, /*val_tokens=*/1000);
  }

  RunConfig config(std::vector<std::string> extra) const {
    std::vector<std::string> sets = {
        "model.vocab_size=64", "model.d_model=32", "model.n_layers=4", "model.n_heads=4", "model.n_kv_heads=2",
        "model.ffn_hidden=40", "model.seq_len=8", "train.steps=5", "train.micro_batch_size=2",
        "train.eval_every=0", "train.eval_tokens=32", "train.log_every=100", "train.threads=1",
        "optim.name=adamw", "optim.lr=0.02", "optim.clip=0.5",
        "data.train=" + (dir_ / "train_0.bin").string(), "data.val=" + (dir_ / "val_0.bin").string()};
    sets.insert(sets.end(), extra.begin(), extra.end());
    return parse_config("", "test.toml", sets);
  }

  // All tensors of the run's final checkpoint by name ("weights.*", "stale.*", "optim.*", ...).
  std::map<std::string, std::vector<float>> train(const std::string& name, std::vector<std::string> extra) {
    const std::string out = (dir_ / name).string();
    run_training(config(std::move(extra)), {out, false, -1});
    SafetensorsReader r(latest_checkpoint(out) + "/state.safetensors");
    std::map<std::string, std::vector<float>> t;
    for (const auto& n : r.names()) {
      int64_t numel = 1;
      for (auto d : r.shape(n)) numel *= d;
      t[n].resize(numel);
      r.read_into(n, t[n].data(), r.shape(n));
    }
    return t;
  }

  static void expect_same(const std::map<std::string, std::vector<float>>& a,
                          const std::map<std::string, std::vector<float>>& b, const std::string& what) {
    int weights = 0;
    for (const auto& [name, v] : a) {
      const bool weight = name.rfind("weights.", 0) == 0, older = name.rfind("stale", 0) == 0;
      if (!weight && !older) continue;
      auto it = b.find(name);
      // Older versions are compared where both sides keep them (a PipeDream stage keeps only its own lag's).
      if (older && it == b.end()) continue;
      ASSERT_NE(it, b.end()) << what << ": " << name << " missing";
      EXPECT_EQ(v, it->second) << what << ": " << name;
      weights += name.rfind("weights.", 0) == 0;
    }
    EXPECT_EQ(weights, 4 * 9 + 3) << what;  // every block tensor + embedding, final norm, head
  }
};

}  // namespace

// The split at p = 3 cuts inside an MLP (SwiGLU's output crosses with the stream), so the tests below also
// cover the executor's wider messages there.
TEST_F(PipelineEquivalence, ThreeStageSplitCutsInsideAnMlp) {
  const RunConfig c = config({});
  const auto specs = partition_model(c.model, 3);
  bool inside = false;
  for (const auto& s : specs) inside = inside || Stage(c.model, s).output_width() > c.model.d_model;
  EXPECT_TRUE(inside) << describe_partition(c.model, specs, parameter_costs(c.model));
}

TEST_F(PipelineEquivalence, FlushedSchedulesEqualGradientAccumulation) {
  for (int m : {2, 4}) {
    const std::string M = "train.micro_batches=" + std::to_string(m);
    const auto reference = train("ref" + std::to_string(m), {M});
    for (const std::string sched : {"gpipe", "1f1b"})
      for (int p : {2, 3, 4}) {
        const std::string tag = sched + "_p" + std::to_string(p) + "_m" + std::to_string(m);
        expect_same(reference, train(tag, {M, "pipeline.schedule=" + sched, "pipeline.stages=" + std::to_string(p)}), tag);
      }
  }
}

TEST_F(PipelineEquivalence, TwoBWEqualsTheOneStepEmulator) {
  for (const std::string opt : {"adamw", "muon"})
    for (const std::string corr : {"none", "ef", "dc_asgd"})
      for (int p : {2, 3}) {
        const std::vector<std::string> common = {"optim.name=" + opt, "delay.correction=" + corr,
                                                 "train.micro_batches=4"};
        auto emu = common;
        emu.push_back("delay.emulate=one_step");
        auto pipe = common;
        pipe.push_back("pipeline.schedule=2bw");
        pipe.push_back("pipeline.stages=" + std::to_string(p));
        const std::string tag = opt + "_" + corr + "_p" + std::to_string(p);
        expect_same(train("emu_" + tag, emu), train("2bw_" + tag, pipe), tag);
      }
}

// pipeline.lookahead reorders the actions (stages run further ahead) but not the arithmetic: the textbook
// order (0), the default (1) and a deeper one (2) all equal their emulators.
TEST_F(PipelineEquivalence, LookaheadChangesTheOrderNotTheWeights) {
  const std::vector<std::string> common = {"train.micro_batches=4"};
  auto emu = common;
  emu.push_back("delay.emulate=one_step");
  const auto one_step = train("la_emu", emu), reference = train("la_ref", common);
  for (int lookahead : {0, 1, 2}) {
    const std::string L = "pipeline.lookahead=" + std::to_string(lookahead);
    auto twobw = common, flushed = common;
    twobw.insert(twobw.end(), {"pipeline.stages=3", "pipeline.schedule=2bw", L});
    flushed.insert(flushed.end(), {"pipeline.stages=3", "pipeline.schedule=1f1b", L});
    expect_same(one_step, train("la_2bw_" + std::to_string(lookahead), twobw), "2bw " + L);
    expect_same(reference, train("la_1f1b_" + std::to_string(lookahead), flushed), "1f1b " + L);
  }
}

TEST_F(PipelineEquivalence, PipeDreamEqualsThePerStageEmulator) {
  for (int p : {2, 3, 4}) {
    const std::vector<std::string> common = {"optim.name=muon", "train.micro_batches=4", "train.steps=6",
                                             "pipeline.stages=" + std::to_string(p), "delay.correction=ef"};
    auto emu = common;
    emu.push_back("delay.emulate=per_stage");
    auto pipe = common;
    pipe.push_back("pipeline.schedule=pipedream");
    const std::string tag = "pipedream_p" + std::to_string(p);
    const auto e = train("emu_" + tag, emu), q = train("pipe_" + tag, pipe);
    expect_same(e, q, tag);
    // Stage 0 of a p-stage PipeDream reads W(t - (p-1)): the checkpoint keeps p-1 older versions of it.
    EXPECT_EQ(q.count("stale" + (p > 2 ? std::to_string(p - 1) : std::string()) + ".model.embed_tokens.weight"), p > 1 ? 1u : 0u) << tag;
  }
}

TEST_F(PipelineEquivalence, SyncStartEqualsSyncThenOneStep) {
  const std::vector<std::string> common = {"optim.name=adamw", "train.micro_batches=2", "train.steps=6",
                                           "pipeline.sync_start_steps=3"};
  auto emu = common;
  emu.push_back("delay.emulate=one_step");
  auto pipe = common;
  pipe.push_back("pipeline.schedule=sync_start");
  pipe.push_back("pipeline.stages=2");
  const auto sync_emu = train("emu_sync", emu);
  expect_same(sync_emu, train("pipe_sync", pipe), "sync_start");
  // And it is really different from 2BW from the start (the first 3 steps are synchronous).
  auto twobw = common;
  twobw.back() = "pipeline.sync_start_steps=0";
  twobw.push_back("delay.emulate=one_step");
  EXPECT_NE(sync_emu.at("weights.model.norm.weight"), train("emu_2bw", twobw).at("weights.model.norm.weight"));
}

// Every forward and backward of a real run read the weight version its schedule's rule names (the trace
// records the version each action read; the executor refuses a version that is not alive), and a micro-batch's
// forward and backward on a stage read the same one.
TEST_F(PipelineEquivalence, EveryActionReadsTheRulesVersion) {
  for (const std::string sched : {"gpipe", "1f1b", "2bw", "pipedream", "sync_start"}) {
    const int p = 3;
    std::vector<std::string> sets = {"pipeline.schedule=" + sched, "pipeline.stages=3", "train.micro_batches=3",
                                     "train.steps=5", "pipeline.trace=true", "train.ckpt_every=2",
                                     "pipeline.lookahead=2"};
    if (sched == "sync_start") sets.push_back("pipeline.sync_start_steps=2");
    train("trace_" + sched, sets);
    std::ifstream in((dir_ / ("trace_" + sched) / "trace.json").string());
    const nlohmann::json trace = nlohmann::json::parse(in);
    std::map<std::tuple<int, int64_t, int>, int64_t> fwd;
    int checked = 0;
    for (const auto& e : trace["traceEvents"]) {
      if (e["ph"] != "X") continue;
      const std::string cat = e["cat"];
      if (cat != "forward" && cat != "backward") continue;
      const int s = e["tid"];
      const int64_t g = e["args"]["batch"], v = e["args"]["version"];
      const int mb = e["args"]["micro"];
      EXPECT_EQ(v, pipeline::version_for(sched, g, s, p, sched == "sync_start" ? 2 : 0)) << sched << " " << e["name"];
      if (cat == "forward") fwd[{s, g, mb}] = v;
      else EXPECT_EQ(fwd.at({s, g, mb}), v) << sched << " backward " << e["name"];
      ++checked;
    }
    EXPECT_EQ(checked, 2 * p * 5 * 3) << sched;  // every forward and backward of every stage, batch, micro-batch
  }
}
