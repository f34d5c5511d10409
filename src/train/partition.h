// Splitting the model into p contiguous stages with the smallest possible maximum stage cost. The pieces are
// the embedding, the 4L units (attention half, MLP gate, up and down parts of each block; model/stage.h) and the
// head; a cut may fall inside a block. Costs come from parameter counts or from timing the pieces on this
// machine (pipeline.balance).
#pragma once
#include <string>
#include <vector>

#include "model/stage.h"

namespace onestep {

// Cost of each piece, in any unit: [embedding, unit 0, ..., unit 4L-1, head] (4L + 2 entries).
struct ModelCosts {
  std::vector<double> pieces;
  double embedding() const { return pieces.front(); }
  double unit(int u) const { return pieces[1 + u]; }
  double head() const { return pieces.back(); }
  double stage(const StageSpec& s) const;  // the pieces a stage holds, summed
};

// Parameter counts: ~ the matmul FLOPs per token; the embedding (a lookup) costs nothing.
ModelCosts parameter_costs(const ModelConfig& c);
// Seconds of one micro-batch's forward + backward of each piece on the calling thread's thread count
// (median of `reps` after a warm-up). Blocks are alike, so one unit of each kind is timed.
ModelCosts measured_costs(const ModelConfig& c, int micro_batch_size, int reps = 3);

// pipeline.balance: "params" -> parameter_costs, "measured" -> measured_costs.
ModelCosts balance_costs(const ModelConfig& c, const std::string& balance, int micro_batch_size);

// Errors (exit 2) when stages is not in 1..n_layers. Each stage gets at least one unit.
std::vector<StageSpec> partition_model(const ModelConfig& c, int stages, const ModelCosts& costs);
std::vector<StageSpec> partition_model(const ModelConfig& c, int stages);  // by parameter_costs
std::string describe_partition(const ModelConfig& c, const std::vector<StageSpec>& specs, const ModelCosts& costs);

}  // namespace onestep
