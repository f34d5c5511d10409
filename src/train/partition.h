// Splitting the model into p contiguous stages, balanced by compute: a block costs its parameter count
// (~ its matmul FLOPs per token), the head costs vocab x d_model, the embedding (a lookup) nothing.
#pragma once
#include <string>
#include <vector>

#include "model/stage.h"

namespace onestep {

std::vector<StageSpec> partition_model(const ModelConfig& c, int stages);
std::string describe_partition(const ModelConfig& c, const std::vector<StageSpec>& specs);

}  // namespace onestep
