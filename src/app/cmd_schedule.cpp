// `onestep schedule`: a schedule's per-stage action lists, validated, as text, CSV, or a Chrome trace of
// its simulated timeline (unit costs: forward 1 ms, backward 2 ms), with the bubble model beside it.
#include <cstdio>
#include <nlohmann/json.hpp>

#include "app/commands.h"
#include "core/error.h"
#include "pipeline/schedule.h"
#include "pipeline/simulator.h"

namespace onestep {

int cmd_schedule(const std::string& name, int stages, int micro, int64_t steps, int64_t sync_start_steps,
                 int lookahead, const std::string& format, const ScheduleCosts& costs) {
  if (format != "text" && format != "csv" && format != "trace" && format != "summary")
    bad_input("--format", "expected text, csv, trace or summary; got '" + format + "'");
  if (stages < 1) bad_input("--stages", "expected at least 1");
  if (micro < 1) bad_input("--microbatches", "expected at least 1");
  if (steps < 1) bad_input("--steps", "expected at least 1");
  const pipeline::Schedule s = pipeline::make_schedule(name, stages, micro, steps, sync_start_steps, lookahead);
  pipeline::validate(s);
  if (format == "csv") {
    std::printf("%s", pipeline::to_csv(s).c_str());
    return 0;
  }
  pipeline::Costs sim = pipeline::uniform_costs(1e-3, 2e-3);
  auto to_s = [](const std::vector<double>& ms) {
    std::vector<double> out;
    for (double v : ms) out.push_back(v * 1e-3);
    return out;
  };
  if (!costs.forward_ms.empty()) sim.forward = to_s(costs.forward_ms);
  if (!costs.backward_ms.empty()) sim.backward = to_s(costs.backward_ms);
  if (!costs.step_ms.empty()) sim.step = to_s(costs.step_ms);
  sim.latency_s = costs.link_latency_ms * 1e-3;
  if (costs.link_gbps > 0) sim.bandwidth_Bps = costs.link_gbps * 1e9 / 8;
  sim.act_bytes = costs.activation_bytes;
  const pipeline::SimResult r = pipeline::simulate(s, sim);
  if (format == "summary") {
    nlohmann::json j = {{"schedule", name}, {"stages", stages}, {"micro_batches", micro}, {"steps", steps},
                        {"makespan_s", r.makespan}, {"step_s", r.makespan / static_cast<double>(steps)},
                        {"busy_s", r.busy}, {"idle_s", r.idle}, {"peak_activations", r.peak_activations},
                        {"peak_versions", r.peak_versions}};
    std::printf("%s\n", j.dump().c_str());
    return 0;
  }
  if (format == "trace") {
    std::printf("%s\n", pipeline::to_chrome_trace(s, r).c_str());
    return 0;
  }
  std::printf("%s", pipeline::to_text(s).c_str());
  double busy = 0;
  for (double b : r.busy) busy += b;
  std::printf("# simulated with forward 1 ms, backward 2 ms: makespan %.1f ms, idle %.1f%% of stage time "
              "(flushed-schedule bubble model (p-1)/(m+p-1) = %.1f%%)\n",
              r.makespan * 1e3, 100.0 * (1.0 - busy / (r.makespan * stages)),
              100.0 * (stages - 1) / (micro + stages - 1));
  return 0;
}

}  // namespace onestep
