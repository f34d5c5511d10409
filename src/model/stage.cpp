#include "model/stage.h"

#include <cmath>
#include <cstring>
#include <functional>

#include "core/error.h"
#include "core/rng.h"
#include "kernels/cpu/ops.h"

namespace onestep {

StageSpec whole_model(const ModelConfig& c) { return StageSpec::blocks(0, c.n_layers, true, true); }

std::string describe_units(int first, int end) {
  if (first >= end) return "no blocks";
  std::string out;
  auto join = [&](const std::string& part) { out += (out.empty() ? "" : " + ") + part; };
  if (first % 2 == 1) join("MLP of block " + std::to_string(first / 2)), ++first;
  const int whole_end = end / 2;  // blocks [first/2, whole_end) are whole
  if (first / 2 < whole_end) join("blocks [" + std::to_string(first / 2) + ", " + std::to_string(whole_end) + ")");
  if (end % 2 == 1 && end - 1 >= first) join("attention of block " + std::to_string(end / 2));
  return out;
}

namespace {
int64_t vec_bytes(const std::vector<float>& v) { return static_cast<int64_t>(v.size() * sizeof(float)); }
template <class... V>
int64_t sum_bytes(const V&... v) {
  return (vec_bytes(v) + ...);
}
uint64_t name_hash(const std::string& s) {  // FNV-1a: stable across platforms, unlike std::hash
  uint64_t h = 1469598103934665603ULL;
  for (unsigned char ch : s) h = (h ^ ch) * 1099511628211ULL;
  return h;
}
}  // namespace

int64_t Activations::bytes() const {
  return sum_bytes(x, ln1, rstd1, q, k, v, att, lse, x_mid, ln2, rstd2, gate, up, h, lnf, rstdf, logits, losses,
                   d_input);
}
int64_t BackwardScratch::bytes() const {
  return sum_bytes(dres, dln, datt, dq, dk, dv, dq_pre, dk_pre, dgate, dup, dh);
}

Stage::Stage(const ModelConfig& config, StageSpec spec) : cfg_(config), spec_(spec) {
  if (spec.first_unit < 0 || spec.end_unit > 2 * cfg_.n_layers || spec.first_unit > spec.end_unit)
    internal_error("bad stage unit range");
  const int64_t C = cfg_.d_model, V = cfg_.vocab_size, KVd = cfg_.kv_dim(), F = cfg_.ffn_hidden;
  if (spec_.has_embedding) embed_ = params_.add("model.embed_tokens.weight", {V, C}, ParamRole::embedding);
  for (int u = spec_.first_unit; u < spec_.end_unit; ++u) {
    const int l = u / 2;
    const std::string p = "model.layers." + std::to_string(l) + ".";
    if (u % 2 == 0 || u == spec_.first_unit) blocks_.emplace_back();  // a new block slice
    BlockOffsets& b = blocks_.back();
    if (u % 2 == 0) {
      b.attn = attn_halves_++;
      b.ln1 = params_.add(p + "input_layernorm.weight", {C}, ParamRole::norm);
      b.q = params_.add(p + "self_attn.q_proj.weight", {C, C}, ParamRole::matrix);
      b.k = params_.add(p + "self_attn.k_proj.weight", {KVd, C}, ParamRole::matrix);
      b.v = params_.add(p + "self_attn.v_proj.weight", {KVd, C}, ParamRole::matrix);
      b.o = params_.add(p + "self_attn.o_proj.weight", {C, C}, ParamRole::matrix);
    } else {
      b.mlp = mlp_halves_++;
      b.ln2 = params_.add(p + "post_attention_layernorm.weight", {C}, ParamRole::norm);
      b.gate = params_.add(p + "mlp.gate_proj.weight", {F, C}, ParamRole::matrix);
      b.up = params_.add(p + "mlp.up_proj.weight", {F, C}, ParamRole::matrix);
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

std::unique_ptr<Activations> Stage::make_activations(int B, int T) const {
  auto a = std::make_unique<Activations>();
  a->B = B, a->T = T;
  const size_t N = static_cast<size_t>(B) * T, C = cfg_.d_model, KVd = cfg_.kv_dim(), F = cfg_.ffn_hidden;
  const size_t L = blocks_.size(), H = cfg_.n_heads, LA = attn_halves_, LM = mlp_halves_;
  a->x.assign((L + 1) * N * C, 0.f);
  a->ln1.assign(LA * N * C, 0.f), a->rstd1.assign(LA * N, 0.f);
  a->q.assign(LA * N * C, 0.f), a->k.assign(LA * N * KVd, 0.f), a->v.assign(LA * N * KVd, 0.f);
  a->att.assign(LA * N * C, 0.f), a->lse.assign(LA * B * H * T, 0.f);
  a->x_mid.assign(LA * N * C, 0.f);
  a->ln2.assign(LM * N * C, 0.f), a->rstd2.assign(LM * N, 0.f);
  a->gate.assign(LM * N * F, 0.f), a->up.assign(LM * N * F, 0.f), a->h.assign(LM * N * F, 0.f);
  if (spec_.has_head) {
    a->lnf.assign(N * C, 0.f), a->rstdf.assign(N, 0.f);
    a->logits.assign(N * cfg_.vocab_size, 0.f), a->losses.assign(N, 0.f);
  }
  if (!spec_.has_embedding) a->d_input.assign(N * C, 0.f);
  return a;
}

std::unique_ptr<BackwardScratch> Stage::make_scratch(int B, int T) const {
  auto s = std::make_unique<BackwardScratch>();
  const size_t N = static_cast<size_t>(B) * T, C = cfg_.d_model, KVd = cfg_.kv_dim(), F = cfg_.ffn_hidden;
  s->dres.assign(N * C, 0.f), s->dln.assign(N * C, 0.f), s->datt.assign(N * C, 0.f);
  s->dq.assign(N * C, 0.f), s->dk.assign(N * KVd, 0.f), s->dv.assign(N * KVd, 0.f);
  s->dq_pre.assign(N * C, 0.f), s->dk_pre.assign(N * KVd, 0.f);
  s->dgate.assign(N * F, 0.f), s->dup.assign(N * F, 0.f), s->dh.assign(N * F, 0.f);
  return s;
}

const float* Stage::output(const Activations& a) const {
  const size_t N = static_cast<size_t>(a.B) * a.T;
  return a.x.data() + blocks_.size() * N * cfg_.d_model;
}

double Stage::forward(const float* w, Activations& a, const int32_t* tokens, const float* in_hidden,
                      const int32_t* targets) const {
  using namespace cpu;
  const int B = a.B, T = a.T, N = B * T, C = cfg_.d_model, F = cfg_.ffn_hidden;
  const int H = cfg_.n_heads, KV = cfg_.n_kv_heads, D = cfg_.head_dim(), KVd = cfg_.kv_dim();
  const size_t NC = static_cast<size_t>(N) * C, NKV = static_cast<size_t>(N) * KVd, NF = static_cast<size_t>(N) * F;
  if (spec_.has_embedding) {
    a.tokens.assign(tokens, tokens + N);
    embedding_forward(a.x.data(), tokens, w + embed_, N, C);
  }
  else std::memcpy(a.x.data(), in_hidden, sizeof(float) * NC);

  for (size_t l = 0; l < blocks_.size(); ++l) {
    const BlockOffsets& b = blocks_[l];
    const float* x = a.x.data() + l * NC;
    float* x_next = a.x.data() + (l + 1) * NC;
    const float* mid = x;  // the stream between the two halves
    if (b.attn >= 0) {
      // Attention half: x_mid = x + o_proj(attention(rope(q_proj(n)), rope(k_proj(n)), v_proj(n))), n = rmsnorm(x).
      const size_t i = b.attn;
      float *ln1 = a.ln1.data() + i * NC, *q = a.q.data() + i * NC, *k = a.k.data() + i * NKV;
      float *v = a.v.data() + i * NKV, *att = a.att.data() + i * NC, *x_mid = a.x_mid.data() + i * NC;
      rmsnorm_forward(ln1, a.rstd1.data() + i * N, x, w + b.ln1, N, C, cfg_.norm_eps);
      matmul_forward(q, ln1, w + b.q, N, C, C);
      matmul_forward(k, ln1, w + b.k, N, C, KVd);
      matmul_forward(v, ln1, w + b.v, N, C, KVd);
      rope_forward(q, q, B, T, H, D, cfg_.rope_theta);
      rope_forward(k, k, B, T, KV, D, cfg_.rope_theta);
      attention_forward(att, a.lse.data() + i * B * H * T, q, k, v, B, T, H, KV, D);
      matmul_forward(x_mid, att, w + b.o, N, C, C);
      add_inplace(x_mid, x, NC);
      mid = x_mid;
    }
    if (b.mlp >= 0) {
      // MLP half: x_next = x_mid + down(silu(gate(n)) * up(n)), n = rmsnorm(x_mid).
      const size_t i = b.mlp;
      float *ln2 = a.ln2.data() + i * NC, *gate = a.gate.data() + i * NF, *up = a.up.data() + i * NF;
      float* h = a.h.data() + i * NF;
      rmsnorm_forward(ln2, a.rstd2.data() + i * N, mid, w + b.ln2, N, C, cfg_.norm_eps);
      matmul_forward(gate, ln2, w + b.gate, N, C, F);
      matmul_forward(up, ln2, w + b.up, N, C, F);
      swiglu_forward(h, gate, up, N, F);
      matmul_forward(x_next, h, w + b.down, N, F, C);
      add_inplace(x_next, mid, NC);
    } else {
      std::memcpy(x_next, mid, sizeof(float) * NC);  // the stage ends after an attention half
    }
  }
  if (!spec_.has_head) return 0.0;
  rmsnorm_forward(a.lnf.data(), a.rstdf.data(), output(a), w + final_norm_, N, C, cfg_.norm_eps);
  matmul_forward(a.logits.data(), a.lnf.data(), w + head_, N, C, cfg_.vocab_size);
  if (!targets) return 0.0;
  a.targets.assign(targets, targets + N);
  a.valid_targets = 0;
  for (int i = 0; i < N; ++i) a.valid_targets += targets[i] >= 0;
  return cross_entropy_forward(a.losses.data(), a.logits.data(), targets, N, cfg_.vocab_size);
}

void Stage::backward(const float* w, float* grad, Activations& a, BackwardScratch& s, const float* dout_hidden,
                     float loss_scale) const {
  using namespace cpu;
  const int B = a.B, T = a.T, N = B * T, C = cfg_.d_model, F = cfg_.ffn_hidden, V = cfg_.vocab_size;
  const int H = cfg_.n_heads, KV = cfg_.n_kv_heads, D = cfg_.head_dim(), KVd = cfg_.kv_dim();
  const size_t NC = static_cast<size_t>(N) * C, NKV = static_cast<size_t>(N) * KVd, NF = static_cast<size_t>(N) * F;
  float* dres = s.dres.data();  // dLoss/d(residual stream), walked from the top block down

  if (spec_.has_head) {
    // The logits buffer becomes dlogits (fused classifier); each valid target weighs loss_scale / count.
    const float scale = a.valid_targets > 0 ? loss_scale / static_cast<float>(a.valid_targets) : 0.f;
    cross_entropy_backward(a.logits.data(), a.logits.data(), a.targets.data(), N, V, scale);
    fill_zero(s.dln.data(), NC);
    matmul_backward(s.dln.data(), grad + head_, a.logits.data(), a.lnf.data(), w + head_, N, C, V);
    fill_zero(dres, NC);
    rmsnorm_backward(dres, grad + final_norm_, s.dln.data(), output(a), w + final_norm_, a.rstdf.data(), N, C);
  } else {
    std::memcpy(dres, dout_hidden, sizeof(float) * NC);
  }

  for (size_t l = blocks_.size(); l-- > 0;) {
    const BlockOffsets& b = blocks_[l];
    const float* x = a.x.data() + l * NC;
    const float* mid = b.attn >= 0 ? a.x_mid.data() + b.attn * NC : x;
    if (b.mlp >= 0) {
      // MLP half (dres holds dLoss/dx_next; the residual passes it straight through to x_mid).
      const size_t i = b.mlp;
      const float *ln2 = a.ln2.data() + i * NC, *gate = a.gate.data() + i * NF, *up = a.up.data() + i * NF;
      const float* h = a.h.data() + i * NF;
      fill_zero(s.dh.data(), NF);
      matmul_backward(s.dh.data(), grad + b.down, dres, h, w + b.down, N, F, C);
      fill_zero(s.dgate.data(), NF), fill_zero(s.dup.data(), NF);
      swiglu_backward(s.dgate.data(), s.dup.data(), s.dh.data(), gate, up, N, F);
      fill_zero(s.dln.data(), NC);
      matmul_backward(s.dln.data(), grad + b.gate, s.dgate.data(), ln2, w + b.gate, N, C, F);
      matmul_backward(s.dln.data(), grad + b.up, s.dup.data(), ln2, w + b.up, N, C, F);
      rmsnorm_backward(dres, grad + b.ln2, s.dln.data(), mid, w + b.ln2, a.rstd2.data() + i * N, N, C);
    }
    if (b.attn >= 0) {
      // Attention half (dres now holds dLoss/dx_mid).
      const size_t i = b.attn;
      const float *ln1 = a.ln1.data() + i * NC, *q = a.q.data() + i * NC, *k = a.k.data() + i * NKV;
      const float *v = a.v.data() + i * NKV, *att = a.att.data() + i * NC;
      fill_zero(s.datt.data(), NC);
      matmul_backward(s.datt.data(), grad + b.o, dres, att, w + b.o, N, C, C);
      fill_zero(s.dq.data(), NC), fill_zero(s.dk.data(), NKV), fill_zero(s.dv.data(), NKV);
      attention_backward(s.dq.data(), s.dk.data(), s.dv.data(), s.datt.data(), q, k, v, att,
                         a.lse.data() + i * B * H * T, B, T, H, KV, D);
      fill_zero(s.dq_pre.data(), NC), fill_zero(s.dk_pre.data(), NKV);
      rope_backward(s.dq_pre.data(), s.dq.data(), B, T, H, D, cfg_.rope_theta);
      rope_backward(s.dk_pre.data(), s.dk.data(), B, T, KV, D, cfg_.rope_theta);
      fill_zero(s.dln.data(), NC);
      matmul_backward(s.dln.data(), grad + b.q, s.dq_pre.data(), ln1, w + b.q, N, C, C);
      matmul_backward(s.dln.data(), grad + b.k, s.dk_pre.data(), ln1, w + b.k, N, C, KVd);
      matmul_backward(s.dln.data(), grad + b.v, s.dv.data(), ln1, w + b.v, N, C, KVd);
      rmsnorm_backward(dres, grad + b.ln1, s.dln.data(), x, w + b.ln1, a.rstd1.data() + i * N, N, C);
    }
  }
  if (spec_.has_embedding) embedding_backward(grad + embed_, dres, a.tokens.data(), N, C);
  else std::memcpy(a.d_input.data(), dres, sizeof(float) * NC);
}

}  // namespace onestep
