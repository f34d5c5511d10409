// The single list of optimizer names known to the config (PAPER.md §3) and which are implemented.
#pragma once
#include <string>
#include <vector>

namespace onestep {

struct OptimName {
  std::string name;
  bool implemented;
};
const std::vector<OptimName>& optim_names();

}  // namespace onestep
