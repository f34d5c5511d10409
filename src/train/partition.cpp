#include "train/partition.h"

#include <algorithm>
#include <cstdio>
#include <limits>
#include <memory>
#include <sstream>

#include "core/error.h"
#include "core/timer.h"

namespace onestep {

double ModelCosts::stage(const StageSpec& s) const {
  double v = (s.has_embedding ? embedding() : 0.0) + (s.has_head ? head() : 0.0);
  for (int u = s.first_unit; u < s.end_unit; ++u) v += unit(u);
  return v;
}

namespace {
// Blocks are alike: each unit of a kind (model/stage.h: attention half, MLP gate, up, down part) costs the same.
ModelCosts uniform_costs(const ModelConfig& c, double embedding, const double (&unit)[kUnitsPerBlock], double head) {
  ModelCosts m;
  m.pieces.push_back(embedding);
  for (int u = 0; u < model_units(c); ++u) m.pieces.push_back(unit[u % kUnitsPerBlock]);
  m.pieces.push_back(head);
  return m;
}

// Median seconds of forward + backward of one micro-batch through a stage holding only `spec`.
double time_piece(const ModelConfig& c, StageSpec spec, int B, int reps) {
  const Stage st(c, spec);
  const int T = c.seq_len, N = B * T;
  const size_t width = static_cast<size_t>(2 * c.d_model + c.ffn_hidden);  // wide enough for any cut
  std::vector<float> w(st.params().total()), g(w.size(), 0.f), in(static_cast<size_t>(N) * width, 0.01f);
  st.init_weights(w.data(), 1);
  std::vector<int32_t> tokens(N);
  for (int i = 0; i < N; ++i) tokens[i] = i % c.vocab_size;
  auto acts = st.make_activations(B, T);
  auto scratch = st.make_scratch(B, T);
  std::vector<double> times;
  for (int r = 0; r <= reps; ++r) {  // the first is a warm-up
    Stopwatch clock;
    st.forward(w.data(), *acts, tokens.data(), in.data(), spec.has_head ? tokens.data() : nullptr);
    st.backward(w.data(), g.data(), *acts, *scratch, in.data(), 1.f);
    if (r > 0) times.push_back(clock.seconds());
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}
}  // namespace

ModelCosts parameter_costs(const ModelConfig& c) {
  const double C = c.d_model, F = c.ffn_hidden;
  return uniform_costs(c, 0.0, {C + 2 * C * C + 2 * C * c.kv_dim(), C + C * F, C * F, C * F},
                       C + static_cast<double>(c.vocab_size) * C);
}

ModelCosts measured_costs(const ModelConfig& c, int B, int reps) {
  const int U = model_units(c);
  auto unit = [&](int u) { return time_piece(c, StageSpec{u, u + 1, false, false}, B, reps); };
  return uniform_costs(c, time_piece(c, StageSpec{0, 0, true, false}, B, reps), {unit(0), unit(1), unit(2), unit(3)},
                       time_piece(c, StageSpec{U, U, false, true}, B, reps));
}

ModelCosts balance_costs(const ModelConfig& c, const std::string& balance, int micro_batch_size) {
  return balance == "measured" ? measured_costs(c, micro_batch_size) : parameter_costs(c);
}

std::vector<StageSpec> partition_model(const ModelConfig& c, int p, const ModelCosts& costs) {
  const int L = c.n_layers, U = model_units(c);
  if (p < 1 || p > L)
    bad_input("pipeline.stages", std::to_string(p) + " stages for " + std::to_string(L) + " layers; expected 1.." + std::to_string(L));
  if (static_cast<int>(costs.pieces.size()) != U + 2) internal_error("partition: cost vector of the wrong length");
  // best[k][i]: the smallest possible maximum stage cost splitting units [0, i) into k stages.
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<std::vector<double>> best(p + 1, std::vector<double>(U + 1, inf));
  std::vector<std::vector<int>> cut(p + 1, std::vector<int>(U + 1, 0));
  best[0][0] = 0;
  for (int k = 1; k <= p; ++k)
    for (int i = k; i <= U; ++i)
      for (int j = k - 1; j < i; ++j) {
        const double v = std::max(best[k - 1][j], costs.stage(StageSpec{j, i, k == 1, k == p && i == U}));
        if (v < best[k][i]) best[k][i] = v, cut[k][i] = j;
      }
  std::vector<StageSpec> specs(p);
  for (int k = p, i = U; k >= 1; --k) {
    const int j = cut[k][i];
    specs[k - 1] = StageSpec{j, i, k == 1, k == p};
    i = j;
  }
  return specs;
}

std::vector<StageSpec> partition_model(const ModelConfig& c, int p) { return partition_model(c, p, parameter_costs(c)); }

std::string describe_partition(const ModelConfig& c, const std::vector<StageSpec>& specs, const ModelCosts& costs) {
  std::vector<double> stage_cost;
  for (const StageSpec& s : specs) stage_cost.push_back(costs.stage(s));
  const double heaviest = *std::max_element(stage_cost.begin(), stage_cost.end());
  std::ostringstream os;
  for (size_t s = 0; s < specs.size(); ++s) {
    const Stage st(c, specs[s]);
    char load[64];
    std::snprintf(load, sizeof load, ", %.1f%% of the heaviest stage's cost", 100.0 * stage_cost[s] / heaviest);
    os << "  stage " << s << ": " << (specs[s].has_embedding ? "embedding + " : "")
       << describe_units(specs[s].first_unit, specs[s].end_unit) << (specs[s].has_head ? " + norm, head, loss" : "")
       << ", " << st.params().total() / 1e6 << "M parameters" << (specs.size() > 1 ? load : "") << "\n";
  }
  return os.str();
}

}  // namespace onestep
