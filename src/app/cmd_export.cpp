// Export to Hugging Face Llama: the parameter table already uses HF names and the [out, in] layout, so the
// weights are written as they are, plus a LlamaConfig config.json beside the file.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "app/commands.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "model/stage.h"
#include "train/checkpoint.h"

namespace fs = std::filesystem;

namespace onestep {

nlohmann::json llama_config_json(const ModelConfig& m) {
  return {{"architectures", {"LlamaForCausalLM"}},
          {"model_type", "llama"},
          {"vocab_size", m.vocab_size},
          {"hidden_size", m.d_model},
          {"intermediate_size", m.ffn_hidden},
          {"num_hidden_layers", m.n_layers},
          {"num_attention_heads", m.n_heads},
          {"num_key_value_heads", m.n_kv_heads},
          {"head_dim", m.head_dim()},
          {"max_position_embeddings", m.seq_len},
          {"rms_norm_eps", m.norm_eps},
          {"rope_theta", m.rope_theta},
          {"tie_word_embeddings", m.tie_embeddings},
          {"hidden_act", "silu"},
          {"attention_bias", false},
          {"mlp_bias", false},
          {"torch_dtype", "float32"}};
}

int cmd_export(const std::string& checkpoint, const std::string& out) {
  if (fs::path(out).extension() != ".safetensors") bad_input("--out", "expected a FILE.safetensors path; got '" + out + "'");
  const std::string dir = resolve_checkpoint_dir(checkpoint);
  const RunConfig c = checkpoint_config(dir);
  Stage stage(c.model, whole_model(c.model));
  std::vector<float> w(static_cast<size_t>(stage.params().total()), 0.f);
  load_weights(dir, stage, w.data());
  std::vector<TensorRef> tensors;
  for (const auto& p : stage.params().all()) {
    if (p.name == "lm_head.weight" && c.model.tie_embeddings) continue;  // tied: HF reads the embedding
    tensors.push_back({p.name, p.shape, w.data() + p.offset});
  }
  if (!fs::path(out).parent_path().empty()) fs::create_directories(fs::path(out).parent_path());
  write_safetensors(out, tensors, {{"format", "pt"}});
  const fs::path cfg = fs::path(out).parent_path() / "config.json";
  std::ofstream(cfg) << llama_config_json(c.model).dump(2) << "\n";
  std::printf("exported %zu tensors to %s and %s\n", tensors.size(), out.c_str(), cfg.string().c_str());
  return 0;
}

}  // namespace onestep
