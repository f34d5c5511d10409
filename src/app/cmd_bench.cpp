// `onestep bench`: training throughput against the sgemm peak measured in the same run, and peak resident
// memory against the bytes of the tensors the trainer allocates.
#include <cblas.h>
#include <sys/resource.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <string>
#include <utility>
#include <vector>
#include <nlohmann/json.hpp>

#include "app/commands.h"
#include "config/config.h"
#include "core/error.h"
#include "core/rng.h"
#include "core/threads.h"
#include "core/timer.h"
#include "kernels/op_profile.h"
#include "train/backend.h"
#include "train/stage_state.h"
#ifdef ONESTEP_HAVE_CUDA
#include "gpu/gpu_info.h"
#endif

namespace onestep {
namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Square sgemm GFLOP/s, the best of `reps` runs: the machine's practical peak for our matmuls (the best run
// rather than the median, so that noise from a shared machine lowers our fraction, never raises it).
double sgemm_peak_gflops(int n, int reps) {
  std::vector<float> a(static_cast<size_t>(n) * n, 0.5f), b(a.size(), 0.25f), c(a.size(), 0.f);
  std::vector<double> rates;
  for (int r = 0; r < reps + 1; ++r) {
    Stopwatch sw;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1.f, a.data(), n, b.data(), n, 0.f, c.data(), n);
    if (r > 0) rates.push_back(2.0 * n * n * n / sw.seconds() / 1e9);  // the first run warms up
  }
  return *std::max_element(rates.begin(), rates.end());
}

double peak_rss_mib() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss / 1024.0;
}

#ifdef ONESTEP_HAVE_CUDA
// Square products of growing size up to 8192, where an H100 is saturated; a device on which one size's runs
// take over a second (the CPU emulation of CUDA, tests/cuda_emu) stops there rather than spend minutes.
double gpu_sgemm_peak_gflops() {
  double best = 0;
  for (int n = 1024; n <= 8192; n *= 2) {
    Stopwatch sw;
    best = std::max(best, 1e3 * cublas_sgemm_tflops(n, n < 8192 ? 3 : 12));
    if (sw.seconds() > 1.0) break;
  }
  return best;
}
// MFU against the GPU's dense bf16 peak (issue #5's yardstick), and the memory the driver reports in use.
void add_gpu_report(nlohmann::json& j, double achieved_gflops) {
  const GpuInfo g = gpu_info();
  const double used = gpu_memory_used_mib();
  const double buffers = device_memory::memory_stats().peak / 1048576.0, scratch = gpu_scratch_peak_mib();
  std::printf("  GPU %s (sm_%d%d), %d SMs, %.0f MiB; in use after the steps %.0f MiB\n", g.name.c_str(), g.cc_major,
              g.cc_minor, g.sm_count, g.memory_mib, used);
  std::printf("  peak GPU memory of the training     %8.1f MiB = %.1f buffers + %.1f stream-ordered scratch "
              "(each its own peak)\n", buffers + scratch, buffers, scratch);
  j["gpu"] = g.name, j["gpu_arch"] = "sm_" + std::to_string(g.cc_major) + std::to_string(g.cc_minor);
  j["gpu_memory_used_mib"] = used;
  j["gpu_peak_mib"] = buffers + scratch, j["gpu_buffer_peak_mib"] = buffers, j["gpu_scratch_peak_mib"] = scratch;
  if (g.bf16_dense_tflops > 0) {
    const double mfu = achieved_gflops / (g.bf16_dense_tflops * 1e3);
    std::printf("  MFU against the dense bf16 peak (%.1f TFLOP/s)  %.2f%%\n", g.bf16_dense_tflops, 100 * mfu);
    j["bf16_peak_tflops"] = g.bf16_dense_tflops, j["mfu_bf16"] = mfu;
  }
}
// The peaks count from here: the sgemm measurement's own buffers are gone.
void reset_gpu_peaks() {
  device_memory::reset_peak();
  gpu_scratch_peak_mib(true);
}
#else
void reset_gpu_peaks() {}
double gpu_sgemm_peak_gflops() { return 0; }  // unreachable: backend_for(cuda) refused already
void add_gpu_report(nlohmann::json&, double) {}
#endif

// The profiled step's time by kernel, largest first (an op's parts, "op: part", indented below it), then its
// optimizer part (gradient norm, clipping, the optimizer's update and correction, timed on its own); the rest
// (clearing the gradient, rounding the weights, host work between calls) is what neither accounts for.
void print_op_profile(const std::map<std::string, OpTotal>& ops, const std::map<std::string, OpTotal>& gaps,
                      double step_s, double optimizer_s, nlohmann::json& j) {
  auto largest_first = [](const auto& a, const auto& b) { return a.second.seconds > b.second.seconds; };
  std::vector<std::pair<std::string, OpTotal>> rows, parts;
  for (const auto& op : ops) (is_op_part(op.first) ? parts : rows).push_back(op);
  std::sort(rows.begin(), rows.end(), largest_first);
  std::printf("  the median profiled step, %.3f s, by kernel:\n", step_s);
  auto line = [&](const std::string& name, const OpTotal& t) {
    std::printf("    %-24s %6lld calls %10.2f ms %5.1f%%\n", name.c_str(), static_cast<long long>(t.calls),
                1e3 * t.seconds, 100 * t.seconds / step_s);
  };
  double covered = 0;
  nlohmann::json op_ms = nlohmann::json::object(), part_ms = nlohmann::json::object();
  for (const auto& [name, t] : rows) {
    line(name, t);
    for (const auto& [part, pt] : parts)
      if (part.rfind(name + ": ", 0) == 0) line("  " + part.substr(name.size() + 2), pt);
    covered += t.seconds;
    op_ms[name] = 1e3 * t.seconds;
  }
  for (const auto& [part, pt] : parts) part_ms[part] = 1e3 * pt.seconds;
  const double rest = std::max(0.0, step_s - covered - optimizer_s);
  std::printf("    %-24s %6s       %10.2f ms %5.1f%%\n", "(optimizer step)", "", 1e3 * optimizer_s,
              100 * optimizer_s / step_s);
  std::printf("    %-24s %6s       %10.2f ms %5.1f%%\n", "(the rest)", "", 1e3 * rest, 100 * rest / step_s);
  // Of the rest, the device's time between consecutive ops (GPU only), largest first by the op that followed.
  std::vector<std::pair<std::string, OpTotal>> by_gap(gaps.begin(), gaps.end());
  std::sort(by_gap.begin(), by_gap.end(), largest_first);
  double gap_s = 0;
  nlohmann::json gap_ms = nlohmann::json::object();
  for (const auto& [name, t] : by_gap) gap_s += t.seconds, gap_ms[name] = 1e3 * t.seconds;
  if (!by_gap.empty()) {
    std::printf("      of which between ops %10.2f ms; the most before:", 1e3 * gap_s);
    for (size_t i = 0; i < std::min<size_t>(3, by_gap.size()); ++i)
      std::printf("%s %s %.2f ms", i ? "," : "", by_gap[i].first.c_str(), 1e3 * by_gap[i].second.seconds);
    std::printf("\n");
  }
  j["profiled_step_s"] = step_s, j["op_ms"] = op_ms, j["part_ms"] = part_ms, j["optimizer_ms"] = 1e3 * optimizer_s;
  j["gap_ms"] = gap_ms;
}

}  // namespace

int cmd_bench(const std::string& config_path, const std::vector<std::string>& overrides, int steps) {
  if (steps < 1) bad_input("--steps", "expected at least 1");
  std::vector<std::string> sets = {"model.preset=small", "train.micro_batch_size=8", "train.threads=2",
                                   "train.micro_batches=1", "optim.name=adamw"};
  sets.insert(sets.end(), overrides.begin(), overrides.end());
  const RunConfig c = config_path.empty() ? parse_config("", "<bench defaults>", sets)
                                          : load_config(config_path, overrides);
  set_num_threads(c.train.threads);
  const int B = c.train.micro_batch_size, T = c.model.seq_len, M = c.train.micro_batches;
  const ModelConfig& m = c.model;

  const Device device = parse_device(c.train.device);
  const Backend& be = backend_for(device);
  use_precision(device, c.train.precision);
  // The practical matmul peak of the device the step runs on, measured in the same run.
  const double peak = device == Device::cpu ? sgemm_peak_gflops(2048, 12) : gpu_sgemm_peak_gflops();
  if (device == Device::cuda) reset_gpu_peaks();
  StageState s(m, whole_model(m), c.optim, 0, c.delay.correction == "ef", device);
  s.init_weights(1);
  auto acts = be.make_activations(s.stage, B, T);
  auto scratch = be.make_scratch(s.stage, B, T);
  std::vector<int32_t> in(static_cast<size_t>(B) * T), tgt(in.size());
  CounterRng rng(1, RngStream::test, 0);
  for (auto& x : in) x = static_cast<int32_t>(rng.below(m.vocab_size));
  for (auto& x : tgt) x = static_cast<int32_t>(rng.below(m.vocab_size));

  const std::unique_ptr<RoundedWeights> rounded = be.make_rounded_weights(static_cast<int64_t>(s.weights.size()));
  // Seconds of one training step as the trainer runs it, queued work included; with optimizer_s, the optimizer's
  // part is timed on its own (one more wait for the device, before it).
  auto timed_step = [&](double* optimizer_s = nullptr) {
    be.synchronize();
    Stopwatch sw;
    be.fill_zero(s.grad.data(), static_cast<int64_t>(s.grad.size()));
    if (rounded) rounded->round(s.weights.data());
    for (int mb = 0; mb < M; ++mb) {
      be.forward(s.stage, s.weights.data(), *acts, in.data(), nullptr, tgt.data());
      be.backward(s.stage, s.weights.data(), s.grad.data(), *acts, *scratch, nullptr, 1.0f / M);
    }
    if (rounded) rounded->forget();
    reduce_tied_embedding_local(s);
    if (optimizer_s) be.synchronize();
    const double before_optimizer = sw.seconds();
    // The gradient norm for clipping, as the trainer's step computes it.
    optimizer_step(s, 1.0, clip_scale(c.optim.clip, std::sqrt(unique_grad_sum_squares(s))), c.delay);
    be.synchronize();
    if (optimizer_s) *optimizer_s = sw.seconds() - before_optimizer;
    return sw.seconds();
  };
  std::vector<double> secs;
  for (int i = 0; i < steps + 2; ++i) {
    const double t = timed_step();
    if (i >= 2) secs.push_back(t);  // two warm-up steps
    std::fprintf(stderr, "\rbench step %d/%d", i + 1, steps + 2);
  }
  std::fprintf(stderr, "\n");
  const double step_s = median(secs);
  // Up to 3 more steps with every kernel call of the model timed (not counted above: timing adds a little); the
  // median one by step time is reported whole, so that one slow step on a shared machine does not make the table.
  struct Profiled {
    double step_s = 0, optimizer_s = 0;
    std::map<std::string, OpTotal> ops, gaps;
  };
  std::vector<Profiled> profiled(static_cast<size_t>(std::min(steps, 3)));
  for (Profiled& p : profiled) {
    const auto profiler = be.make_op_profiler();
    {
      const ActiveOpProfiler active(profiler.get());
      p.step_s = timed_step(&p.optimizer_s);
    }
    p.ops = profiler->totals();
    p.gaps = profiler->gaps_before();
  }
  std::sort(profiled.begin(), profiled.end(), [](const Profiled& a, const Profiled& b) { return a.step_s < b.step_s; });
  const Profiled& mid = profiled[profiled.size() / 2];
  const double tokens = static_cast<double>(M) * B * T;
  // FLOPs per token (issue #2): 6 x non-embedding parameters + 6 x vocab x d_model (head)
  // + 12 x layers x d_model x seq (attention scores and values, forward + backward).
  const double emb = static_cast<double>(m.vocab_size) * m.d_model;
  const double non_emb = static_cast<double>(count_params(m)) - emb * (m.tie_embeddings ? 1 : 2);
  const double flops_per_token = 6 * non_emb + 6 * emb + 12.0 * m.n_layers * m.d_model * T;
  const double achieved = flops_per_token * tokens / step_s / 1e9;

  int64_t tensor_bytes = acts->bytes() + scratch->bytes();
  for (const auto* v : {&s.weights, &s.grad, &s.update, &s.prev_update}) tensor_bytes += v->bytes();
  for (const auto& b : s.optimizer->state_buffers()) tensor_bytes += shape_numel(b.shape) * static_cast<int64_t>(sizeof(float));
  const double tensor_mib = tensor_bytes / 1048576.0, rss = peak_rss_mib();

  std::printf("preset %s, optimizer %s, %d x %d x %d tokens/step, device %s (%s), %d threads\n", m.preset.c_str(),
              c.optim.name.c_str(), M, B, T, device_name(device), c.train.precision.c_str(), num_threads());
  std::printf("  %s sgemm peak (best of 12)        %8.1f GFLOP/s\n", device == Device::cpu ? "CPU" : "GPU", peak);
  std::printf("  training step (median of %d)        %8.3f s\n", steps, step_s);
  std::printf("  throughput                          %8.0f tokens/s\n", tokens / step_s);
  std::printf("  model FLOPs/token                   %8.3f MFLOP\n", flops_per_token / 1e6);
  std::printf("  achieved                            %8.1f GFLOP/s = %.1f%% of sgemm peak\n", achieved,
              100 * achieved / peak);
  std::printf("  allocated tensors                   %8.1f MiB\n", tensor_mib);
  nlohmann::json j = {{"preset", m.preset}, {"device", device_name(device)}, {"precision", c.train.precision}, {"tokens_per_s", tokens / step_s},
                      {"step_s", step_s}, {"sgemm_peak_gflops", peak}, {"achieved_gflops", achieved},
                      {"frac_of_peak", achieved / peak}, {"tensor_mib", tensor_mib}, {"tokens_per_step", tokens},
                      {"threads", num_threads()}};
  print_op_profile(mid.ops, mid.gaps, mid.step_s, mid.optimizer_s, j);
  j["profiled_steps"] = profiled.size();
  if (device == Device::cpu) {
    std::printf("  peak resident memory                %8.1f MiB = %.1f%% of the tensors\n", rss, 100 * rss / tensor_mib);
    j["peak_rss_mib"] = rss;
  } else {
    add_gpu_report(j, achieved);
  }
  std::printf("%s\n", j.dump().c_str());
  return 0;
}

}  // namespace onestep
