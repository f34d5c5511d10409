// Micro-benchmark of one optimizer step on stage 0 of the `small` preset split in two (embedding + half the
// blocks, about 19M parameters): the cost a pipeline stage pays once per batch, next to m micro-batches of
// compute. Reports nanoseconds per parameter; the step is memory-bound, so this is its roofline check.
#include <benchmark/benchmark.h>

#include "config/config.h"
#include "train/partition.h"
#include "train/stage_state.h"

namespace {
using namespace onestep;

ModelConfig small_model() {  // configs/small.toml
  ModelConfig m = model_preset("small");
  return m;
}

void BM_OptimizerStep(benchmark::State& state, const char* optimizer, const char* correction) {
  const ModelConfig model = small_model();
  const StageSpec spec = partition_model(model, 2)[0];
  OptimConfig optim;
  optim.name = optimizer;
  DelayConfig delay;
  delay.correction = correction;
  StageState s(model, spec, optim, 1, delay.correction == "ef");
  s.init_weights(1);
  for (size_t i = 0; i < s.grad.size(); ++i) s.grad[i] = 1e-3f * static_cast<float>(i % 97);
  for (auto _ : state) optimizer_step(s, 1.0, 0.5f, delay);
  const double n = static_cast<double>(s.weights.size());
  state.counters["params"] = n;
  state.counters["ns/param"] = benchmark::Counter(n * 1e-9, benchmark::Counter::kIsIterationInvariantRate |
                                                                benchmark::Counter::kInvert);
}
BENCHMARK_CAPTURE(BM_OptimizerStep, adamw, "adamw", "none")->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_OptimizerStep, adamw_ef, "adamw", "ef")->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_OptimizerStep, muon, "muon", "none")->Unit(benchmark::kMillisecond)->UseRealTime();
}  // namespace
