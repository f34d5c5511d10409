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
// Muon and NorMuon: orthogonalised updates for the hidden matrices, an AdamW group for the rest.
inline bool is_muon_family(const std::string& name) { return name == "muon" || name == "normuon"; }

}  // namespace onestep
