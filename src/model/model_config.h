// Shape of a Llama-style decoder and the contract's presets.
#pragma once
#include <string>

namespace onestep {

struct ModelConfig {
  std::string preset = "tiny";
  int vocab_size = 4096;
  int d_model = 128;
  int n_layers = 4;
  int n_heads = 4;
  int n_kv_heads = 4;
  int ffn_hidden = 344;
  int seq_len = 128;
  float rope_theta = 10000.0f;
  float norm_eps = 1e-5f;
  bool tie_embeddings = true;

  int head_dim() const { return d_model / n_heads; }
  int kv_dim() const { return n_kv_heads * head_dim(); }
};

// Throws Error(bad_input) naming the preset when it does not exist.
ModelConfig model_preset(const std::string& name);
// Checks divisibility and ranges; `where` names the config file in the message.
void validate_model_config(const ModelConfig& c, const std::string& where);
// Parameter counts (all, and without the embedding / untied head).
long long count_params(const ModelConfig& c);

}  // namespace onestep
