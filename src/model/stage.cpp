#include "model/stage.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>

#include "core/error.h"
#include "core/rng.h"
#include "model/stage_compute.h"

namespace onestep {

StageSpec whole_model(const ModelConfig& c) { return StageSpec::blocks(0, c.n_layers, true, true); }

int boundary_width(const ModelConfig& c, int unit) {
  switch (unit % kUnitsPerBlock) {
    case 2: return 2 * c.d_model + c.ffn_hidden;  // before the up part: stream, norm output, gate output
    case 3: return c.d_model + c.ffn_hidden;      // before the down part: stream, SwiGLU output
    default: return c.d_model;                    // the stream alone
  }
}

std::string describe_units(int first, int end) {
  if (first >= end) return "no blocks";
  static const char* kind_names[kUnitsPerBlock] = {"attention", "MLP gate", "MLP up", "MLP down"};
  std::string out;
  auto join = [&](const std::string& part) { out += (out.empty() ? "" : " + ") + part; };
  int whole_from = -1;  // start of the current run of whole blocks
  auto flush_whole = [&](int end_block) {
    if (whole_from >= 0) join("blocks [" + std::to_string(whole_from) + ", " + std::to_string(end_block) + ")");
    whole_from = -1;
  };
  for (int l = first / kUnitsPerBlock; l * kUnitsPerBlock < end; ++l) {
    const int lo = std::max(first, l * kUnitsPerBlock), hi = std::min(end, (l + 1) * kUnitsPerBlock);
    if (hi - lo == kUnitsPerBlock) {
      if (whole_from < 0) whole_from = l;
      continue;
    }
    flush_whole(l);
    std::string kinds;
    if (lo % kUnitsPerBlock == 1 && hi - lo == kUnitsPerBlock - 1) kinds = "MLP";
    if (kinds.empty())
      for (int u = lo; u < hi; ++u) kinds += (u > lo ? ", " : "") + std::string(kind_names[u % kUnitsPerBlock]);
    join(kinds + " of block " + std::to_string(l));
  }
  flush_whole((end + kUnitsPerBlock - 1) / kUnitsPerBlock);
  return out;
}

namespace {
template <class... V>
int64_t sum_bytes(const V&... v) {
  return (v.bytes() + ...);
}
uint64_t name_hash(const std::string& s) {  // FNV-1a: stable across platforms, unlike std::hash
  uint64_t h = 1469598103934665603ULL;
  for (unsigned char ch : s) h = (h ^ ch) * 1099511628211ULL;
  return h;
}
}  // namespace

int64_t Activations::bytes() const {
  return sum_bytes(x, ln1, rstd1, q, k, v, att, lse, x_mid, ln2, rstd2, gate, up, h, lnf, rstdf, logits, losses,
                   d_input, boundary);
}
int64_t BackwardScratch::bytes() const {
  return sum_bytes(dres, dln, datt, dq, dk, dv, dh, dq_pre, dk_pre, dgate, dup);
}

Stage::Stage(const ModelConfig& config, StageSpec spec) : cfg_(config), spec_(spec) {
  if (spec.first_unit < 0 || spec.end_unit > model_units(cfg_) || spec.first_unit > spec.end_unit)
    internal_error("bad stage unit range");
  const int64_t C = cfg_.d_model, V = cfg_.vocab_size, KVd = cfg_.kv_dim(), F = cfg_.ffn_hidden;
  if (spec_.has_embedding) embed_ = params_.add("model.embed_tokens.weight", {V, C}, ParamRole::embedding);
  for (int u = spec_.first_unit; u < spec_.end_unit; ++u) {
    const int l = u / kUnitsPerBlock, kind = u % kUnitsPerBlock;
    const std::string p = "model.layers." + std::to_string(l) + ".";
    if (kind == 0 || u == spec_.first_unit) blocks_.emplace_back();  // a new block slice
    BlockOffsets& b = blocks_.back();
    if (kind == 0) {
      b.attn = attn_halves_++;
      b.ln1 = params_.add(p + "input_layernorm.weight", {C}, ParamRole::norm);
      b.q = params_.add(p + "self_attn.q_proj.weight", {C, C}, ParamRole::matrix);
      b.k = params_.add(p + "self_attn.k_proj.weight", {KVd, C}, ParamRole::matrix);
      b.v = params_.add(p + "self_attn.v_proj.weight", {KVd, C}, ParamRole::matrix);
      b.o = params_.add(p + "self_attn.o_proj.weight", {C, C}, ParamRole::matrix);
      continue;
    }
    if (b.mlp < 0) b.mlp = mlp_halves_++;
    if (kind == 1) {
      b.ln2 = params_.add(p + "post_attention_layernorm.weight", {C}, ParamRole::norm);
      b.gate = params_.add(p + "mlp.gate_proj.weight", {F, C}, ParamRole::matrix);
    } else if (kind == 2) {
      b.up = params_.add(p + "mlp.up_proj.weight", {F, C}, ParamRole::matrix);
    } else {
      b.down = params_.add(p + "mlp.down_proj.weight", {C, F}, ParamRole::matrix);
    }
  }
  if (spec_.has_head) {
    final_norm_ = params_.add("model.norm.weight", {C}, ParamRole::norm);
    head_ = params_.add("lm_head.weight", {V, C}, ParamRole::head);  // a tied copy when tie_embeddings
  }
}

void Stage::init_weights(float* w, uint64_t seed) const {
  std::memset(w, 0, sizeof(float) * params_.total());
  const float out_scale = 1.0f / std::sqrt(2.0f * cfg_.n_layers);
  for (const auto& p : params_.all()) {
    float* dst = w + p.offset;
    if (p.role == ParamRole::norm) {
      for (int64_t i = 0; i < p.numel; ++i) dst[i] = 1.0f;
      continue;
    }
    // A tied head copy starts equal to the embedding: same name-derived stream.
    const std::string& key = (p.name == "lm_head.weight" && cfg_.tie_embeddings) ? "model.embed_tokens.weight" : p.name;
    CounterRng rng(seed, RngStream::init, name_hash(key));
    const bool is_out = p.name.find("o_proj") != std::string::npos || p.name.find("down_proj") != std::string::npos;
    const float std = 0.02f * (is_out ? out_scale : 1.0f);
    for (int64_t i = 0; i < p.numel; ++i) dst[i] = std * rng.normal();
  }
}

std::unique_ptr<Activations> Stage::make_activations(int B, int T, Device device, OperandStorage operands) const {
  auto a = std::make_unique<Activations>(device);
  a->B = B, a->T = T, a->operands = operands;
  const size_t N = static_cast<size_t>(B) * T, C = cfg_.d_model, KVd = cfg_.kv_dim(), F = cfg_.ffn_hidden;
  const size_t L = blocks_.size(), H = cfg_.n_heads, LA = attn_halves_, LM = mlp_halves_;
  a->x.zeros((L + 1) * N * C);
  a->ln1.zeros(LA * N * C, operands), a->rstd1.zeros(LA * N);
  a->q.zeros(LA * N * C, operands), a->k.zeros(LA * N * KVd, operands), a->v.zeros(LA * N * KVd, operands);
  a->att.zeros(LA * N * C, operands), a->lse.zeros(LA * B * H * T);
  a->x_mid.zeros(LA * N * C);
  a->ln2.zeros(LM * N * C, operands), a->rstd2.zeros(LM * N);
  a->gate.zeros(LM * N * F, operands), a->up.zeros(LM * N * F, operands), a->h.zeros(LM * N * F, operands);
  if (spec_.has_head) {
    a->lnf.zeros(N * C, operands), a->rstdf.zeros(N);
    a->logits.zeros(N * cfg_.vocab_size, operands), a->losses.zeros(N);
  }
  if (!spec_.has_embedding) a->d_input.zeros(N * input_width());
  if (output_width() > static_cast<int>(C)) a->boundary.zeros(N * output_width());
  return a;
}

std::unique_ptr<BackwardScratch> Stage::make_scratch(int B, int T, Device device, OperandStorage operands) const {
  auto s = std::make_unique<BackwardScratch>(device);
  s->operands = operands;
  const size_t N = static_cast<size_t>(B) * T, C = cfg_.d_model, KVd = cfg_.kv_dim(), F = cfg_.ffn_hidden;
  s->dres.zeros(N * C), s->dln.zeros(N * C), s->datt.zeros(N * C);
  s->dq.zeros(N * C), s->dk.zeros(N * KVd), s->dv.zeros(N * KVd);
  s->dq_pre.zeros(N * C, operands), s->dk_pre.zeros(N * KVd, operands);
  s->dgate.zeros(N * F, operands), s->dup.zeros(N * F, operands), s->dh.zeros(N * F);
  return s;
}

const float* Stage::output(const Activations& a) const {
  if (!a.boundary.empty()) return a.boundary.data();  // the stage ends inside an MLP
  const size_t N = static_cast<size_t>(a.B) * a.T;
  return a.x.data() + blocks_.size() * N * cfg_.d_model;
}

template double Stage::forward_on<CpuOps>(const CpuOps&, const float*, Activations&, const int32_t*, const float*,
                                           const int32_t*) const;
template void Stage::backward_on<CpuOps>(const CpuOps&, const float*, float*, Activations&, BackwardScratch&,
                                         const float*, float) const;

}  // namespace onestep
