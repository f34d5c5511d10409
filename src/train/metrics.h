// DIR/metrics.jsonl: one JSON object per line (CONTRACT.md "Run directory").
#pragma once
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

namespace onestep {

class MetricsLog {
 public:
  // Opens DIR/metrics.jsonl for appending. With resume_step >= 0 the lines of steps after it are dropped
  // first, so a resumed run's log is the same as an uninterrupted one.
  MetricsLog(const std::string& run_dir, int64_t resume_step);
  void write(const nlohmann::json& line);

 private:
  std::ofstream out_;
};

}  // namespace onestep
