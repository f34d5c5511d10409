// The stage's forward and backward, written once against an ops object (kernels/kernel_ops.h) and
// instantiated per backend: CpuOps in model/stage.cpp, CudaOps in the CUDA backend (src/gpu). Included only
// by those two translation units. Ops::Operand (float or bf16) is the storage of the activations only matmuls
// read (model/stage.h: OperandStorage); ops.copy converts between it and the fp32 boundary tensors.
#pragma once
#include "model/stage.h"

namespace onestep {

template <class Ops>
double Stage::forward_on(const Ops& ops, const float* w, Activations& a, const int32_t* tokens, const float* in_hidden,
                      const int32_t* targets) const {
  const int B = a.B, T = a.T, N = B * T, C = cfg_.d_model, F = cfg_.ffn_hidden;
  const int H = cfg_.n_heads, KV = cfg_.n_kv_heads, D = cfg_.head_dim(), KVd = cfg_.kv_dim();
  const size_t NC = static_cast<size_t>(N) * C, NKV = static_cast<size_t>(N) * KVd, NF = static_cast<size_t>(N) * F;
  using Operand = typename Ops::Operand;
  if (spec_.has_embedding) {
    a.tokens.upload(tokens, N);
    ops.embedding_forward(a.x.data(), a.tokens.data(), w + embed_, N, C);
  }
  else ops.copy(a.x.data(), in_hidden, NC);

  for (size_t l = 0; l < blocks_.size(); ++l) {
    const BlockOffsets& b = blocks_[l];
    const float* x = a.x.data() + l * NC;
    float* x_next = a.x.data() + (l + 1) * NC;
    const float* mid = x;  // the stream between the two halves
    if (b.attn >= 0) {
      // Attention half: x_mid = x + o_proj(attention(rope(q_proj(n)), rope(k_proj(n)), v_proj(n))), n = rmsnorm(x).
      const size_t i = b.attn;
      Operand *ln1 = a.ln1.as<Operand>() + i * NC, *att = a.att.as<Operand>() + i * NC;
      Operand *q = a.q.as<Operand>() + i * NC, *k = a.k.as<Operand>() + i * NKV, *v = a.v.as<Operand>() + i * NKV;
      float* x_mid = a.x_mid.data() + i * NC;
      ops.rmsnorm_forward(ln1, a.rstd1.data() + i * N, x, w + b.ln1, N, C, cfg_.norm_eps);
      ops.matmul_forward(q, ln1, w + b.q, N, C, C);
      ops.matmul_forward(k, ln1, w + b.k, N, C, KVd);
      ops.matmul_forward(v, ln1, w + b.v, N, C, KVd);
      ops.rope_forward(q, q, B, T, H, D, cfg_.rope_theta);
      ops.rope_forward(k, k, B, T, KV, D, cfg_.rope_theta);
      ops.attention_forward(att, a.lse.data() + i * B * H * T, q, k, v, B, T, H, KV, D);
      ops.matmul_forward(x_mid, att, w + b.o, N, C, C);
      ops.add_inplace(x_mid, x, NC);
      mid = x_mid;
    }
    if (b.mlp >= 0) {
      // MLP: x_next = x_mid + down(h), h = silu(gate(n)) * up(n), n = rmsnorm(x_mid). Its gate, up and down parts
      // may sit on two stages (model/stage.h): what the later part needs then crosses the cut with the stream.
      const size_t i = b.mlp;
      Operand *ln2 = a.ln2.as<Operand>() + i * NC, *h = a.h.as<Operand>() + i * NF;
      Operand *gate = a.gate.as<Operand>() + i * NF, *up = a.up.as<Operand>() + i * NF;
      const bool has_gate = b.gate >= 0, has_up = b.up >= 0, has_down = b.down >= 0;
      if (has_gate) {
        ops.rmsnorm_forward(ln2, a.rstd2.data() + i * N, mid, w + b.ln2, N, C, cfg_.norm_eps);
        ops.matmul_forward(gate, ln2, w + b.gate, N, C, F);
      } else if (has_up) {  // the stage starts at the up part: n and the gate's output arrived with the stream
        ops.copy(ln2, in_hidden + NC, NC);
        ops.copy(gate, in_hidden + 2 * NC, NF);
      }
      if (has_up) {
        ops.matmul_forward(up, ln2, w + b.up, N, C, F);
        ops.swiglu_forward(h, gate, up, N, F);
      } else if (!has_gate) {
        ops.copy(h, in_hidden + NC, NF);  // the stage starts at the down part: h arrived with the stream
      }
      if (has_down) {
        ops.matmul_forward(x_next, h, w + b.down, N, F, C);
        ops.add_inplace(x_next, mid, NC);
      } else if (has_up) {  // the stage ends before the down part: the stream and h leave together
        ops.copy(a.boundary.data(), mid, NC);
        ops.copy(a.boundary.data() + NC, h, NF);
      } else {  // the stage ends after the gate part: the stream, n and the gate's output leave
        ops.copy(a.boundary.data(), mid, NC);
        ops.copy(a.boundary.data() + NC, ln2, NC);
        ops.copy(a.boundary.data() + 2 * NC, gate, NF);
      }
    } else {
      ops.copy(x_next, mid, NC);  // the stage ends after an attention half
    }
  }
  if (!spec_.has_head) return 0.0;
  Operand *lnf = a.lnf.as<Operand>(), *logits = a.logits.as<Operand>();
  ops.rmsnorm_forward(lnf, a.rstdf.data(), output(a), w + final_norm_, N, C, cfg_.norm_eps);
  ops.matmul_forward(logits, lnf, w + head_, N, C, cfg_.vocab_size);
  if (!targets) return 0.0;
  a.targets.upload(targets, N);
  a.valid_targets = 0;
  for (int i = 0; i < N; ++i) a.valid_targets += targets[i] >= 0;
  return ops.cross_entropy_forward(a.losses.data(), logits, a.targets.data(), N, cfg_.vocab_size);
}

template <class Ops>
void Stage::backward_on(const Ops& ops, const float* w, float* grad, Activations& a, BackwardScratch& s, const float* dout_hidden,
                     float loss_scale) const {
  const int B = a.B, T = a.T, N = B * T, C = cfg_.d_model, F = cfg_.ffn_hidden, V = cfg_.vocab_size;
  const int H = cfg_.n_heads, KV = cfg_.n_kv_heads, D = cfg_.head_dim(), KVd = cfg_.kv_dim();
  const size_t NC = static_cast<size_t>(N) * C, NKV = static_cast<size_t>(N) * KVd, NF = static_cast<size_t>(N) * F;
  using Operand = typename Ops::Operand;
  float* dres = s.dres.data();  // dLoss/d(residual stream), walked from the top block down

  if (spec_.has_head) {
    // The logits buffer becomes dlogits (fused classifier); each valid target weighs loss_scale / count.
    const float scale = a.valid_targets > 0 ? loss_scale / static_cast<float>(a.valid_targets) : 0.f;
    Operand* dlogits = a.logits.as<Operand>();
    ops.cross_entropy_backward(dlogits, dlogits, a.targets.data(), N, V, scale);
    ops.fill_zero(s.dln.data(), NC);
    ops.matmul_backward(s.dln.data(), grad + head_, dlogits, a.lnf.as<Operand>(), w + head_, N, C, V);
    ops.fill_zero(dres, NC);
    ops.rmsnorm_backward(dres, grad + final_norm_, s.dln.data(), output(a), w + final_norm_, a.rstdf.data(), N, C);
  } else {
    ops.copy(dres, dout_hidden, NC);
  }

  for (size_t l = blocks_.size(); l-- > 0;) {
    const BlockOffsets& b = blocks_[l];
    const float* x = a.x.data() + l * NC;
    const float* mid = b.attn >= 0 ? a.x_mid.data() + b.attn * NC : x;
    if (b.mlp >= 0) {
      // MLP (dres holds dLoss/dx_next; the residual passes it straight through to x_mid).
      const size_t i = b.mlp;
      const Operand *ln2 = a.ln2.as<Operand>() + i * NC, *h = a.h.as<Operand>() + i * NF;
      const Operand *gate = a.gate.as<Operand>() + i * NF, *up = a.up.as<Operand>() + i * NF;
      const bool has_gate = b.gate >= 0, has_up = b.up >= 0, has_down = b.down >= 0;
      if (has_down) {
        ops.fill_zero(s.dh.data(), NF);
        ops.matmul_backward(s.dh.data(), grad + b.down, dres, h, w + b.down, N, F, C);
      } else if (has_up) {
        ops.copy(s.dh.data(), dout_hidden + NC, NF);  // dLoss/dh arrived with dLoss/dx_next
      }
      Operand *dgate = s.dgate.as<Operand>(), *dup = s.dup.as<Operand>();
      if (has_up) {
        ops.fill_zero(dgate, NF), ops.fill_zero(dup, NF);
        ops.swiglu_backward(dgate, dup, s.dh.data(), gate, up, N, F);
        ops.fill_zero(s.dln.data(), NC);
        ops.matmul_backward(s.dln.data(), grad + b.up, dup, ln2, w + b.up, N, C, F);
      } else if (has_gate) {  // dLoss/dn (the up part's share) and dLoss/dgate arrived with dLoss/dx_next
        ops.copy(s.dln.data(), dout_hidden + NC, NC);
        ops.copy(dgate, dout_hidden + 2 * NC, NF);
      }
      if (has_gate) {
        ops.matmul_backward(s.dln.data(), grad + b.gate, dgate, ln2, w + b.gate, N, C, F);
        ops.rmsnorm_backward(dres, grad + b.ln2, s.dln.data(), mid, w + b.ln2, a.rstd2.data() + i * N, N, C);
      } else if (has_up) {  // the stage starts at the up part: dLoss/dn and dLoss/dgate go back
        ops.copy(a.d_input.data() + NC, s.dln.data(), NC);
        ops.copy(a.d_input.data() + 2 * NC, dgate, NF);
      } else {
        ops.copy(a.d_input.data() + NC, s.dh.data(), NF);  // the stage starts at the down part: dLoss/dh goes back
      }
    }
    if (b.attn >= 0) {
      // Attention half (dres now holds dLoss/dx_mid).
      const size_t i = b.attn;
      const Operand *ln1 = a.ln1.as<Operand>() + i * NC, *att = a.att.as<Operand>() + i * NC;
      const Operand *q = a.q.as<Operand>() + i * NC, *k = a.k.as<Operand>() + i * NKV, *v = a.v.as<Operand>() + i * NKV;
      ops.fill_zero(s.datt.data(), NC);
      ops.matmul_backward(s.datt.data(), grad + b.o, dres, att, w + b.o, N, C, C);
      ops.fill_zero(s.dq.data(), NC), ops.fill_zero(s.dk.data(), NKV), ops.fill_zero(s.dv.data(), NKV);
      ops.attention_backward(s.dq.data(), s.dk.data(), s.dv.data(), s.datt.data(), q, k, v, att,
                         a.lse.data() + i * B * H * T, B, T, H, KV, D);
      Operand *dq_pre = s.dq_pre.as<Operand>(), *dk_pre = s.dk_pre.as<Operand>();
      ops.fill_zero(dq_pre, NC), ops.fill_zero(dk_pre, NKV);
      ops.rope_backward(dq_pre, s.dq.data(), B, T, H, D, cfg_.rope_theta);
      ops.rope_backward(dk_pre, s.dk.data(), B, T, KV, D, cfg_.rope_theta);
      ops.fill_zero(s.dln.data(), NC);
      ops.matmul_backward(s.dln.data(), grad + b.q, dq_pre, ln1, w + b.q, N, C, C);
      ops.matmul_backward(s.dln.data(), grad + b.k, dk_pre, ln1, w + b.k, N, C, KVd);
      ops.matmul_backward(s.dln.data(), grad + b.v, s.dv.data(), ln1, w + b.v, N, C, KVd);
      ops.rmsnorm_backward(dres, grad + b.ln1, s.dln.data(), x, w + b.ln1, a.rstd1.data() + i * N, N, C);
    }
  }
  if (spec_.has_embedding) ops.embedding_backward(grad + embed_, dres, a.tokens.data(), N, C);
  else ops.copy(a.d_input.data(), dres, NC);
}

}  // namespace onestep
