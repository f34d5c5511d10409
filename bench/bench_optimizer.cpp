// Micro-benchmark of one optimizer step (optimizer_step: clip scale, the update, the apply, the older version's
// copy) on stage 0 of the `small` preset split in two (embedding + half the blocks, about 19M parameters): the
// cost a pipeline stage pays once per batch, next to m micro-batches of compute. Reports parameters per second.
#include <benchmark/benchmark.h>

#include "config/config.h"
#include "train/partition.h"
#include "train/stage_state.h"

namespace {
using namespace onestep;

void BM_OptimizerStep(benchmark::State& state, const char* optimizer, const char* correction) {
  const ModelConfig model = model_preset("small");
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
  state.counters["params/s"] = benchmark::Counter(n, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK_CAPTURE(BM_OptimizerStep, adamw, "adamw", "none")->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_OptimizerStep, adamw_ef, "adamw", "ef")->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_OptimizerStep, muon, "muon", "none")->Unit(benchmark::kMillisecond)->UseRealTime();
}  // namespace
