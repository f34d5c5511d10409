// The bodies of the subcommands; src/main.cpp only parses arguments and calls these.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace onestep {

struct SampleOptions {
  std::string checkpoint, prompt = "";
  int tokens = 100, top_k = 40;
  double temperature = 0.8;
  uint64_t seed = 1;
};

int cmd_train(const std::string& config, const std::vector<std::string>& overrides, std::string out, bool resume);
int cmd_eval(const std::string& checkpoint, const std::string& data_glob);
int cmd_sample(const SampleOptions& o);
int cmd_export(const std::string& checkpoint, const std::string& out);
// Per-action costs for the simulator (one value for all stages, or one per stage).
struct ScheduleCosts {
  std::vector<double> forward_ms, backward_ms, step_ms;
  double link_latency_ms = 0, link_gbps = 0, activation_bytes = 0;
};
int cmd_schedule(const std::string& name, int stages, int micro, int64_t steps, int64_t sync_start_steps,
                 int lookahead, const std::string& format, const ScheduleCosts& costs);
int cmd_bench(const std::string& config, const std::vector<std::string>& overrides, int steps);

}  // namespace onestep
