#include "model/model_config.h"

#include "core/error.h"

namespace onestep {

ModelConfig model_preset(const std::string& name) {
  ModelConfig c;
  c.preset = name;
  // vocab, d_model, layers, heads, kv heads, ffn, seq, rope theta, tied (CONTRACT.md "Presets").
  if (name == "tiny") {
    c.vocab_size = 4096, c.d_model = 128, c.n_layers = 4, c.n_heads = 4, c.n_kv_heads = 4, c.ffn_hidden = 344;
    c.seq_len = 128;
  } else if (name == "small") {
    c.vocab_size = 8192, c.d_model = 512, c.n_layers = 8, c.n_heads = 8, c.n_kv_heads = 8, c.ffn_hidden = 1376;
    c.seq_len = 256;
  } else if (name == "smollm2-135m") {
    c.vocab_size = 49152, c.d_model = 576, c.n_layers = 30, c.n_heads = 9, c.n_kv_heads = 3, c.ffn_hidden = 1536;
    c.seq_len = 2048, c.rope_theta = 100000.0f;
  } else if (name == "smollm2-360m") {
    c.vocab_size = 49152, c.d_model = 960, c.n_layers = 32, c.n_heads = 15, c.n_kv_heads = 5, c.ffn_hidden = 2560;
    c.seq_len = 2048, c.rope_theta = 100000.0f;
  } else {
    throw Error(ExitCode::bad_input,
                "unknown preset '" + name + "'; expected tiny, small, smollm2-135m or smollm2-360m");
  }
  return c;
}

void validate_model_config(const ModelConfig& c, const std::string& where) {
  auto need = [&](bool ok, const std::string& key, const std::string& expected) {
    if (!ok) bad_input(where, "model." + key + ": " + expected);
  };
  need(c.vocab_size >= 2, "vocab_size", "expected at least 2");
  need(c.d_model >= 1, "d_model", "expected at least 1");
  need(c.n_layers >= 1, "n_layers", "expected at least 1");
  need(c.n_heads >= 1, "n_heads", "expected at least 1");
  need(c.d_model % c.n_heads == 0, "n_heads",
       "must divide d_model (" + std::to_string(c.d_model) + "); got " + std::to_string(c.n_heads));
  need(c.head_dim() % 2 == 0, "n_heads", "head dimension d_model / n_heads must be even for RoPE");
  need(c.n_kv_heads >= 1 && c.n_heads % c.n_kv_heads == 0, "n_kv_heads",
       "must divide n_heads (" + std::to_string(c.n_heads) + "); got " + std::to_string(c.n_kv_heads));
  need(c.ffn_hidden >= 1, "ffn_hidden", "expected at least 1");
  need(c.seq_len >= 1, "seq_len", "expected at least 1");
  need(c.rope_theta > 0, "rope_theta", "expected a positive number");
  need(c.norm_eps > 0, "norm_eps", "expected a positive number");
}

long long count_params(const ModelConfig& c) {
  long long C = c.d_model, kv = c.kv_dim(), F = c.ffn_hidden, V = c.vocab_size;
  long long per_layer = 2 * C + C * C * 2 + 2 * C * kv + 3 * C * F;
  return V * C * (c.tie_embeddings ? 1 : 2) + c.n_layers * per_layer + C;
}

}  // namespace onestep
