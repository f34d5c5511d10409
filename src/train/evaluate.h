#pragma once
#include "data/loader.h"
#include "model/stage.h"
#include "train/backend.h"

namespace onestep {

// Mean next-token loss of a whole-model stage over the first ceil(max_tokens / T) validation windows
// (all windows when fewer exist), in batches of B.
double evaluate_loss(const Stage& stage, const float* weights, const TokenDataset& val, int64_t max_tokens, int B,
                     int T, const Backend& backend = backend_for(Device::cpu));

}  // namespace onestep
