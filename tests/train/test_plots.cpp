#include "train/plots.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include "../temp_dir_test.h"

namespace fs = std::filesystem;

namespace {

bool gnuplot_on_path() { return std::system("command -v gnuplot >/dev/null 2>&1") == 0; }

bool is_png(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  char sig[8] = {};
  in.read(sig, 8);
  return in.gcount() == 8 && std::string(sig, 8) == std::string("\x89PNG\r\n\x1a\n", 8);
}

std::string read_all(const fs::path& p) {
  std::ifstream in(p);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// A synthetic run: decaying loss, val every 10 steps, a 2-stage idle fraction, a null (NaN) loss at step 5.
void write_metrics(const fs::path& run, int steps, bool pipeline) {
  fs::create_directories(run);
  std::ofstream out(run / "metrics.jsonl");
  for (int s = 0; s < steps; ++s) {
    out << "{\"step\":" << s << ",\"tokens\":" << s * 4096 << ",\"train_loss\":";
    if (s == 5) out << "null";
    else out << 8.3 * std::exp(-s / 40.0) + 2.0;
    out << ",\"lr\":" << 1e-3 * std::min(1.0, (s + 1) / 10.0) << ",\"grad_norm\":1.5,\"tok_per_s\":"
        << 20000 + 100 * (s % 7) << ",\"elapsed_s\":" << s * 0.2;
    if (s % 10 == 9) out << ",\"val_loss\":" << 8.3 * std::exp(-s / 40.0) + 2.2;
    if (pipeline) out << ",\"stage_idle_frac\":[0.25,0.1],\"staleness\":1";
    out << "}\n";
  }
}

using PlotsTest = onestep::test::TempDirTest;

}  // namespace

TEST_F(PlotsTest, WritesPngsDataAndScripts) {
  if (!gnuplot_on_path()) GTEST_SKIP() << "gnuplot is not on PATH";
  const fs::path run = dir_ / "run_a";
  write_metrics(run, 60, /*pipeline=*/true);
  ASSERT_TRUE(onestep::write_plots(run.string()));
  for (const char* n : {"loss", "lr", "throughput"}) {
    EXPECT_TRUE(is_png(run / "plots" / (std::string(n) + ".png"))) << n;
    EXPECT_TRUE(fs::exists(run / "plots" / (std::string(n) + ".dat"))) << n;
    EXPECT_TRUE(fs::exists(run / "plots" / (std::string(n) + ".gp"))) << n;
  }
  const std::string dat = read_all(run / "plots" / "loss.dat");
  EXPECT_NE(dat.find("# step val_loss"), std::string::npos);
  EXPECT_NE(read_all(run / "plots" / "throughput.dat").find("idle_1"), std::string::npos);
  // The script redraws from its own folder.
  fs::remove(run / "plots" / "loss.png");
  ASSERT_EQ(std::system(("cd '" + (run / "plots").string() + "' && gnuplot loss.gp 2>/dev/null").c_str()), 0);
  EXPECT_TRUE(is_png(run / "plots" / "loss.png"));
}

TEST_F(PlotsTest, WithoutValLossOrPipeline) {
  if (!gnuplot_on_path()) GTEST_SKIP() << "gnuplot is not on PATH";
  const fs::path run = dir_ / "run with 'quote'";
  write_metrics(run, 8, /*pipeline=*/false);  // no val_loss before step 9
  ASSERT_TRUE(onestep::write_plots(run.string()));
  EXPECT_TRUE(is_png(run / "plots" / "loss.png"));
  EXPECT_TRUE(is_png(run / "plots" / "throughput.png"));
}

// Policy: a malformed line makes write_plots return false with a warning naming the file and line; it never
// throws, since plotting must not fail a training run.
TEST_F(PlotsTest, MalformedLineReturnsFalseAndNamesFileAndLine) {
  const fs::path run = dir_ / "bad";
  write_metrics(run, 5, false);
  { std::ofstream(run / "metrics.jsonl", std::ios::app) << "{\"step\": 5, \"train_loss\": 2.\n"; }
  ::testing::internal::CaptureStderr();
  bool ok = true;
  EXPECT_NO_THROW(ok = onestep::write_plots(run.string()));
  const std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_FALSE(ok);
  EXPECT_NE(err.find("metrics.jsonl: line 6"), std::string::npos) << err;
  EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << err;

  { std::ofstream(run / "metrics.jsonl") << "{\"step\": 0, \"train_loss\": \"high\"}\n"; }
  ::testing::internal::CaptureStderr();
  EXPECT_FALSE(onestep::write_plots(run.string()));
  const std::string err2 = ::testing::internal::GetCapturedStderr();
  EXPECT_NE(err2.find("line 1: train_loss: expected a number"), std::string::npos) << err2;
}

TEST_F(PlotsTest, MissingMetricsReturnsFalse) {
  ::testing::internal::CaptureStderr();
  EXPECT_FALSE(onestep::write_plots((dir_ / "nothing").string()));
  EXPECT_NE(::testing::internal::GetCapturedStderr().find("metrics.jsonl"), std::string::npos);
}

TEST_F(PlotsTest, NoGnuplotReturnsFalseWithWarning) {
  const fs::path run = dir_ / "run";
  write_metrics(run, 5, false);
  const char* old = std::getenv("PATH");
  const std::string saved = old ? old : "";
  ::setenv("PATH", (dir_ / "empty_bin").c_str(), 1);
  ::testing::internal::CaptureStderr();
  const bool ok = onestep::write_plots(run.string());
  const std::string err = ::testing::internal::GetCapturedStderr();
  ::setenv("PATH", saved.c_str(), 1);
  EXPECT_FALSE(ok);
  EXPECT_NE(err.find("gnuplot is not installed"), std::string::npos) << err;
}

TEST_F(PlotsTest, LossComparison) {
  if (!gnuplot_on_path()) GTEST_SKIP() << "gnuplot is not on PATH";
  write_metrics(dir_ / "a", 40, false);
  write_metrics(dir_ / "b", 30, true);
  const fs::path out = dir_ / "report" / "cmp_loss.png";
  ASSERT_TRUE(onestep::plot_loss_comparison({(dir_ / "a").string(), (dir_ / "b").string()}, {"muon_ef", "adamw's"},
                                            out.string(), "muon vs adamw"));
  EXPECT_TRUE(is_png(out));
  EXPECT_TRUE(fs::exists(dir_ / "report" / "cmp_loss.gp"));
  EXPECT_TRUE(fs::exists(dir_ / "report" / "cmp_loss.dat"));
  ::testing::internal::CaptureStderr();
  EXPECT_FALSE(onestep::plot_loss_comparison({(dir_ / "a").string()}, {"x", "y"}, out.string(), "t"));
  EXPECT_NE(::testing::internal::GetCapturedStderr().find("label"), std::string::npos);
}
