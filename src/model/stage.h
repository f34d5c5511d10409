// A pipeline stage: a contiguous slice of the Llama-style decoder. Stage 0 owns the token embedding, the
// last stage owns the final RMSNorm, the output head and the loss; a single-device run is one stage that
// owns everything. Forward and backward are written out op by op (kernels/cpu/ops.h).
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "model/model_config.h"
#include "model/params.h"

namespace onestep {

struct StageSpec {
  int first_layer = 0;   // blocks [first_layer, end_layer)
  int end_layer = 0;
  bool has_embedding = true;
  bool has_head = true;
};
StageSpec whole_model(const ModelConfig& c);

// Activation memory of one micro-batch of B sequences of length T on one stage (explicit, like llm.c).
struct Activations {
  int B = 0, T = 0;
  std::vector<float> x;        // residual stream at each block input, (L+1) x [N, C]; the last is the block output
  std::vector<float> ln1, rstd1, q, k, v, att, lse, x_mid, ln2, rstd2, gate, up, h;  // per block
  std::vector<float> lnf, rstdf, logits, losses;  // head (last stage only); logits become dlogits in backward
  std::vector<float> d_input;  // dLoss/d(input hidden) after backward (stages without the embedding)
  std::vector<int32_t> tokens, targets;  // copies kept for the backward (embedding / loss)
  int64_t valid_targets = 0;
  int64_t bytes() const;
};

// Scratch gradients of one block, shared by all blocks of a stage (backward runs one block at a time).
struct BackwardScratch {
  std::vector<float> dres, dln, datt, dq, dk, dv, dq_pre, dk_pre, dgate, dup, dh;
  int64_t bytes() const;
};

class Stage {
 public:
  Stage(const ModelConfig& config, StageSpec spec);

  const ModelConfig& config() const { return cfg_; }
  const StageSpec& spec() const { return spec_; }
  const ParamTable& params() const { return params_; }
  // A tied embedding is held as two copies, "model.embed_tokens.weight" on the input side and
  // "lm_head.weight" on the output side, even when one stage holds both: their gradients are summed by an
  // explicit reduction before every optimizer step (train/stage_state.h), so both copies stay identical
  // and a single-device run adds the two contributions in exactly the order a pipeline does.
  bool holds_tied_copy() const { return spec_.has_head && cfg_.tie_embeddings; }

  // Deterministic initialisation: each parameter's values depend only on (seed, parameter name), so any
  // partition of the model starts from the same weights. Matrices and embedding ~ N(0, 0.02), output
  // projections (o_proj, down_proj) scaled by 1/sqrt(2 n_layers), norms = 1.
  void init_weights(float* w, uint64_t seed) const;

  std::unique_ptr<Activations> make_activations(int B, int T) const;
  std::unique_ptr<BackwardScratch> make_scratch(int B, int T) const;

  // Forward of one micro-batch. The embedding stage reads `tokens` [B*T]; others read `in_hidden` [B*T, C].
  // The head stage computes logits and, when `targets` is non-null, returns the mean loss over targets >= 0.
  // Other stages leave their output in output(acts) and return 0.
  double forward(const float* w, Activations& a, const int32_t* tokens, const float* in_hidden,
                 const int32_t* targets) const;
  const float* output(const Activations& a) const;

  // Backward of the micro-batch last run through forward(a). Accumulates loss_scale * dLoss/dw into grad.
  // The head stage starts from its loss (mean over the micro-batch's targets); the others from dout_hidden.
  // Stages without the embedding leave dLoss/d(input) in a.d_input.
  void backward(const float* w, float* grad, Activations& a, BackwardScratch& s, const float* dout_hidden,
                float loss_scale) const;

 private:
  struct BlockOffsets {
    int64_t ln1, q, k, v, o, ln2, gate, up, down;
  };
  ModelConfig cfg_;
  StageSpec spec_;
  ParamTable params_;
  int64_t embed_ = -1, final_norm_ = -1, head_ = -1;
  std::vector<BlockOffsets> blocks_;
};

}  // namespace onestep
