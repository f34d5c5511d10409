// `onestep train` with train.device = "cuda" against the same run on the CPU: the same trainer code, only the
// backend differs (train/backend.h). Short runs of a 2-layer model on a learnable corpus; the per-step training
// losses and the validation losses must track the CPU's, and a GPU checkpoint must resume.
//
// Tolerance: 2e-3 relative on every logged loss over 6-8 steps. The kernels agree to 1e-4 (test_cuda_kernels),
// the model's gradients to ~1e-3 (test_cuda_stage); the optimizer carries the difference into the weights, but
// over a few steps at these learning rates it stays far below the loss changes being tracked (~0.1 per step).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "../temp_dir_test.h"
#include "../train/learnable_data.h"
#include "config/config.h"
#include "cuda_test_util.h"
#include "train/backend.h"
#include "train/checkpoint.h"
#include "train/trainer.h"
#ifdef ONESTEP_HAVE_NCCL
#include "nccl/nccl_transport.h"
#endif

namespace fs = std::filesystem;
using namespace onestep;

namespace {

struct Losses {
  std::vector<double> train, val;
};
Losses read_losses(const std::string& run) {
  Losses l;
  std::ifstream in(run + "/metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line);
    if (j.contains("train_loss") && j["train_loss"].is_number()) l.train.push_back(j["train_loss"]);
    if (j.contains("val_loss")) l.val.push_back(j["val_loss"]);
  }
  return l;
}

void expect_tracks(const std::vector<double>& got, const std::vector<double>& want, const std::string& what,
                   double rtol = 2e-3) {
  ASSERT_EQ(got.size(), want.size()) << what;
  ASSERT_FALSE(want.empty()) << what;
  for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(got[i], want[i], rtol * std::fabs(want[i])) << what << " #" << i;
}

class CudaTrainer : public test::TempDirTest {
 protected:
  void SetUp() override {
    TempDirTest::SetUp();
    test::write_learnable_shards(dir_);
  }
  RunConfig config(const std::vector<std::string>& extra) const {
    std::vector<std::string> sets = test::tiny_run_sets(dir_);
    sets.insert(sets.end(), extra.begin(), extra.end());
    return parse_config("", "test.toml", sets);
  }
  std::string run(const std::string& name) const { return (dir_ / name).string(); }
};

// Synchronous AdamW, the one-step delay emulator with Muon + EF (2BW's rule), and PipeDream's per-stage delay
// with NorMuon + DC-ASGD: every backend operation the trainer uses.
TEST_F(CudaTrainer, TracksTheCpuRun) {
  REQUIRE_GPU();
  const std::vector<std::vector<std::string>> cases = {
      {"optim.name=adamw"},
      {"optim.name=muon", "optim.lr=0.02", "delay.emulate=one_step", "delay.correction=ef"},
      {"optim.name=normuon", "optim.lr=0.02", "delay.emulate=per_stage", "pipeline.stages=2",
       "delay.correction=dc_asgd", "train.steps=8"},
  };
  int k = 0;
  for (const auto& extra : cases) {
    SCOPED_TRACE(extra.front());
    std::vector<std::string> gpu_sets = extra;
    gpu_sets.push_back("train.device=cuda");
    const std::string a = run("cpu" + std::to_string(k)), b = run("gpu" + std::to_string(k++));
    run_training(config(extra), {a, false, -1});
    run_training(config(gpu_sets), {b, false, -1});
    const Losses lc = read_losses(a), lg = read_losses(b);
    expect_tracks(lg.train, lc.train, "train_loss");
    expect_tracks(lg.val, lc.val, "val_loss");
  }
}

// TF32 and bf16 matmuls (train.precision) train the same model: losses within 1e-2 (TF32: 10-bit mantissa) and
// 3e-2 (bf16: 7-bit mantissa) of the fp32 CPU run's, relative. With AdamW, and with Muon, whose Newton–Schulz
// products then round their operands too (TF32, bf16).
TEST_F(CudaTrainer, Tf32AndBf16TrackTheFp32Run) {
  REQUIRE_GPU();
  for (const std::string optimizer : {"adamw", "muon"}) {
    SCOPED_TRACE(optimizer);
    const std::vector<std::string> opt = {"optim.name=" + optimizer, optimizer == "muon" ? "optim.lr=0.02" : "optim.lr=0.01"};
    run_training(config(opt), {run(optimizer + "fp32"), false, -1});
    for (const auto& [precision, tolerance] : {std::pair<std::string, double>{"tf32", 1e-2}, {"bf16", 3e-2}}) {
      std::vector<std::string> sets = opt;
      sets.insert(sets.end(), {"train.device=cuda", "train.precision=" + precision});
      run_training(config(sets), {run(optimizer + precision), false, -1});
      use_precision(Device::cuda, "fp32");  // process-wide: the tests after this one expect fp32
      expect_tracks(read_losses(run(optimizer + precision)).train, read_losses(run(optimizer + "fp32")).train,
                    precision + " train_loss", tolerance);
    }
  }
}

// bf16 products read each weight version rounded once (train/backend.h: RoundedWeights) instead of rounding the
// weight per product (ONESTEP_BF16_WEIGHTS=per_call): the same numbers, bit for bit at every step (every kernel is
// deterministic; before session 12 the embedding's backward added with atomics, and only the first step was
// compared exactly). Single device, and a 2-stage 2BW pipeline whose stages hold two versions each.
TEST_F(CudaTrainer, RoundingWeightsOnceChangesNothing) {
  REQUIRE_GPU();
  for (const std::vector<std::string>& extra :
       {std::vector<std::string>{}, {"pipeline.schedule=2bw", "pipeline.stages=2", "delay.correction=ef"}}) {
    SCOPED_TRACE(extra.empty() ? "single device" : "2bw pipeline");
    std::vector<std::string> sets = {"train.device=cuda", "train.precision=bf16"};
    sets.insert(sets.end(), extra.begin(), extra.end());
    const std::string once = run("once" + std::to_string(extra.size())), per_call = run("per_call" + std::to_string(extra.size()));
    run_training(config(sets), {once, false, -1});
    setenv("ONESTEP_BF16_WEIGHTS", "per_call", 1);
    run_training(config(sets), {per_call, false, -1});
    unsetenv("ONESTEP_BF16_WEIGHTS");
    use_precision(Device::cuda, "fp32");  // process-wide: the tests after this one expect fp32
    const Losses a = read_losses(once), b = read_losses(per_call);
    ASSERT_FALSE(a.train.empty());
    EXPECT_EQ(a.train, b.train) << "every step's loss, bit for bit";
  }
}

// A GPU run stopped after step 4 and resumed from its checkpoint ends where the uninterrupted GPU run does, bit for
// bit.
TEST_F(CudaTrainer, ResumesFromItsCheckpoint) {
  REQUIRE_GPU();
  const RunConfig c = config({"train.device=cuda", "delay.emulate=one_step", "delay.correction=ef"});
  run_training(c, {run("a"), false, -1});
  run_training(c, {run("b"), false, 4});
  EXPECT_EQ(latest_checkpoint(run("b")), run("b") + "/checkpoints/step_00000004");
  run_training(c, {run("b"), true, -1});
  EXPECT_EQ(read_losses(run("b")).train, read_losses(run("a")).train) << "train_loss after resume, bit for bit";
}

// Pipelines on one GPU (in-process transport, activations handed over device to device) against their
// single-device rules on the same GPU: 1F1B with flush = synchronous training, 2BW = the one-step emulator (with
// EF and clipping), PipeDream = the per-stage emulator. Same kernels on both sides, all deterministic: bit for bit,
// as on the CPU (until session 12 the embedding's backward added repeated tokens with atomics, and this allowed
// 1e-4).
TEST_F(CudaTrainer, PipelinesEqualTheirEmulators) {
  REQUIRE_GPU();
  struct Case {
    std::vector<std::string> pipeline, emulator;
  };
  const std::vector<Case> cases = {
      {{"pipeline.schedule=1f1b", "pipeline.stages=2"}, {}},
      {{"pipeline.schedule=2bw", "pipeline.stages=2", "delay.correction=ef", "optim.clip=0.5"},
       {"delay.emulate=one_step", "delay.correction=ef", "optim.clip=0.5"}},
      {{"pipeline.schedule=pipedream", "pipeline.stages=2", "optim.name=muon", "optim.lr=0.02"},
       {"delay.emulate=per_stage", "pipeline.stages=2", "optim.name=muon", "optim.lr=0.02"}},
  };
  int k = 0;
  for (const auto& cs : cases) {
    SCOPED_TRACE(cs.pipeline.front());
    auto with_gpu = [](std::vector<std::string> v) {
      v.push_back("train.device=cuda");
      return v;
    };
    const std::string a = run("pipe" + std::to_string(k)), b = run("emu" + std::to_string(k++));
    run_training(config(with_gpu(cs.pipeline)), {a, false, -1});
    run_training(config(with_gpu(cs.emulator)), {b, false, -1});
    const Losses lp = read_losses(a), le = read_losses(b);
    EXPECT_EQ(lp.train, le.train) << "train_loss, bit for bit";
    EXPECT_EQ(lp.val, le.val) << "val_loss, bit for bit";
  }
}

}  // namespace

#ifdef ONESTEP_HAVE_NCCL
// The nccl transport loads libnccl.so.2 at run time: every entry point it uses resolves (the loader checks each
// one) and the library reports its version. Needs no GPU.
TEST(CudaHost, NcclLibraryLoads) { EXPECT_GE(onestep::pipeline::nccl_version(), 21800) << "NCCL older than 2.18"; }

// What one GPU can check of the nccl transport: NCCL moves data on this GPU through the transport's entry points
// (a one-rank communicator sending to itself). Pipelines over NCCL need two GPUs.
TEST(CudaNccl, MovesDataOnThisGpu) {
  REQUIRE_GPU();
  std::vector<float> data(100003);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<float>(i) * 0.5f - 7.0f;
  EXPECT_EQ(onestep::pipeline::nccl_loopback(data), data);
}
#endif

// Buffers on the GPU are counted (onestep bench's peak GPU memory): in use while alive, the peak kept after.
TEST(CudaMemory, BuffersAreCounted) {
  REQUIRE_GPU();
  namespace dm = onestep::device_memory;
  dm::reset_peak();
  const dm::MemoryStats before = dm::memory_stats();
  {
    onestep::Buffer<float> a(onestep::Device::cuda), b(onestep::Device::cuda);
    a.zeros(1 << 20), b.zeros(3 << 20);
    EXPECT_EQ(dm::memory_stats().in_use - before.in_use, int64_t{4} << 22);
  }
  const dm::MemoryStats after = dm::memory_stats();
  EXPECT_EQ(after.in_use, before.in_use);
  EXPECT_EQ(after.peak - before.in_use, int64_t{4} << 22);
}
