#include "train/partition.h"

#include <algorithm>
#include <limits>
#include <sstream>

#include "core/error.h"

namespace onestep {

std::vector<StageSpec> partition_model(const ModelConfig& c, int p) {
  const int L = c.n_layers;
  if (p < 1 || p > L)
    bad_input("pipeline.stages", std::to_string(p) + " stages for " + std::to_string(L) + " layers; expected 1.." + std::to_string(L));
  const double C = c.d_model, block = 2 * C * C + 2 * C * c.kv_dim() + 3 * C * c.ffn_hidden;
  const double head = static_cast<double>(c.vocab_size) * C;
  auto cost = [&](int first, int end, bool last) { return (end - first) * block + (last ? head : 0.0); };
  // best[k][i]: the smallest possible maximum stage cost splitting layers [0, i) into k stages.
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<std::vector<double>> best(p + 1, std::vector<double>(L + 1, inf));
  std::vector<std::vector<int>> cut(p + 1, std::vector<int>(L + 1, 0));
  best[0][0] = 0;
  for (int k = 1; k <= p; ++k)
    for (int i = k; i <= L; ++i)
      for (int j = k - 1; j < i; ++j) {
        const double v = std::max(best[k - 1][j], cost(j, i, k == p && i == L));
        if (v < best[k][i]) best[k][i] = v, cut[k][i] = j;
      }
  std::vector<StageSpec> specs(p);
  for (int k = p, i = L; k >= 1; --k) {
    const int j = cut[k][i];
    specs[k - 1] = StageSpec{j, i, k == 1, k == p};
    i = j;
  }
  return specs;
}

std::string describe_partition(const ModelConfig& c, const std::vector<StageSpec>& specs) {
  std::ostringstream os;
  for (size_t s = 0; s < specs.size(); ++s) {
    const Stage st(c, specs[s]);
    os << "  stage " << s << ": " << (specs[s].has_embedding ? "embedding + " : "") << "blocks ["
       << specs[s].first_layer << ", " << specs[s].end_layer << ")" << (specs[s].has_head ? " + norm, head, loss" : "")
       << ", " << st.params().total() / 1e6 << "M parameters\n";
  }
  return os.str();
}

}  // namespace onestep
