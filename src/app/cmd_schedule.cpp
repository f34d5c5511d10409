// `onestep schedule`: a schedule's per-stage action lists, validated, as text, CSV, or a Chrome trace of
// its simulated timeline (unit costs: forward 1 ms, backward 2 ms), with the bubble model beside it.
#include <cstdio>

#include "app/commands.h"
#include "core/error.h"
#include "pipeline/schedule.h"
#include "pipeline/simulator.h"

namespace onestep {

int cmd_schedule(const std::string& name, int stages, int micro, int64_t steps, int64_t sync_start_steps,
                 const std::string& format) {
  if (format != "text" && format != "csv" && format != "trace")
    bad_input("--format", "expected text, csv or trace; got '" + format + "'");
  if (stages < 1) bad_input("--stages", "expected at least 1");
  if (micro < 1) bad_input("--microbatches", "expected at least 1");
  if (steps < 1) bad_input("--steps", "expected at least 1");
  const pipeline::Schedule s = pipeline::make_schedule(name, stages, micro, steps, sync_start_steps);
  pipeline::validate(s);
  if (format == "csv") {
    std::printf("%s", pipeline::to_csv(s).c_str());
    return 0;
  }
  const pipeline::SimResult r = pipeline::simulate(s, pipeline::uniform_costs(1e-3, 2e-3));
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
