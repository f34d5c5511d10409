// Micro-benchmark of one optimizer step (optimizer_step: clip scale, the update, the apply, the older version's
// copy) on stage 0 of a preset split in two: the cost a pipeline stage pays once per batch, next to m
// micro-batches of compute. Reports parameters per second. `small`: the embedding and half the blocks, about 19M
// parameters; muon_tiny and soap_tiny: the `tiny` preset's, 14 matrices of 128 columns.
// And Muon's Newton–Schulz alone on the presets' matrix shapes.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <vector>

#include "config/config.h"
#include "core/rng.h"
#include "optim/newton_schulz.h"
#include "train/partition.h"
#include "train/stage_state.h"

namespace {
using namespace onestep;

void BM_OptimizerStep(benchmark::State& state, const char* optimizer, const char* correction,
                      const char* preset = "small") {
  const ModelConfig model = model_preset(preset);
  const StageSpec spec = partition_model(model, 2)[0];
  OptimConfig optim;
  optim.name = optimizer;
  DelayConfig delay;
  delay.correction = correction;
  StageState s(model, spec, optim, 1, delay.correction == "ef");
  s.init_weights(1);
  for (size_t i = 0; i < s.grad.size(); ++i) s.grad[i] = 1e-3f * static_cast<float>(i % 97);
  optimizer_step(s, 1.0, 0.5f, delay);  // not timed: SOAP's first step is its eigendecomposition
  for (auto _ : state) optimizer_step(s, 1.0, 0.5f, delay);
  const double n = static_cast<double>(s.weights.size());
  state.counters["params"] = n;
  state.counters["params/s"] = benchmark::Counter(n, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK_CAPTURE(BM_OptimizerStep, adamw, "adamw", "none")->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_OptimizerStep, adamw_ef, "adamw", "ef")->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_OptimizerStep, muon, "muon", "none")->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_OptimizerStep, muon_tiny, "muon", "none", "tiny")->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_OptimizerStep, soap_tiny, "soap", "none", "tiny")->Unit(benchmark::kMillisecond)->UseRealTime();

// One Newton–Schulz orthogonalisation (5 steps) of a rows x cols matrix: the presets' Muon shapes
// (tiny 128 x 128 and 344 x 128, small 512 x 512 and 1376 x 512). Reports GFLOP/s of its 15 products.
void BM_NewtonSchulz(benchmark::State& state) {
  const int rows = static_cast<int>(state.range(0)), cols = static_cast<int>(state.range(1));
  std::vector<float> g(static_cast<size_t>(rows) * cols), out(g.size());
  CounterRng rng(1, RngStream::test, 0);
  for (float& v : g) v = 1e-3f * rng.normal();  // full rank, like a real momentum
  NewtonSchulzWorkspace ws;
  ws.reserve(rows, cols);
  for (auto _ : state) newton_schulz(out.data(), g.data(), rows, cols, 5, 1e-7f, ws);
  const double r = std::min(rows, cols), c = std::max(rows, cols);
  state.counters["GFLOP/s"] =
      benchmark::Counter(5 * (4 * r * r * c + 2 * r * r * r) * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_NewtonSchulz)->Args({128, 128})->Args({344, 128})->Args({512, 512})->Args({1376, 512})
    ->Unit(benchmark::kMillisecond)->UseRealTime();
}  // namespace
