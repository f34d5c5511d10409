#include "train/metrics.h"

#include <filesystem>
#include <sstream>
#include <vector>

#include "core/error.h"

namespace onestep {

MetricsLog::MetricsLog(const std::string& run_dir, int64_t resume_step) {
  const std::string path = (std::filesystem::path(run_dir) / "metrics.jsonl").string();
  if (resume_step >= 0 && std::filesystem::exists(path)) {
    std::vector<std::string> keep;
    std::ifstream in(path);
    for (std::string line; std::getline(in, line);) {
      if (line.empty()) continue;
      auto j = nlohmann::json::parse(line, nullptr, false);
      if (j.is_discarded() || !j.contains("step")) continue;  // a line cut by a crash
      if (j["step"].get<int64_t>() <= resume_step) keep.push_back(line);
    }
    in.close();
    std::ofstream rewrite(path, std::ios::trunc);
    for (const auto& l : keep) rewrite << l << "\n";
  }
  out_.open(path, std::ios::app);
  if (!out_) bad_input(path, "cannot open for writing");
}

void MetricsLog::write(const nlohmann::json& line) {
  out_ << line.dump() << "\n";
  out_.flush();
}

}  // namespace onestep
