// A pipeline stage: a contiguous slice of the Llama-style decoder. Stage 0 owns the token embedding, the
// last stage owns the final RMSNorm, the output head and the loss; a single-device run is one stage that
// owns everything. Forward and backward are written out op by op (kernels/cpu/ops.h).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "core/bf16.h"
#include "core/buffer.h"
#include "core/error.h"
#include "model/model_config.h"
#include "kernels/cpu/cpu_ops.h"
#include "model/params.h"

namespace onestep {

// The decoder's blocks as a sequence of units, four per block: unit 4l is the attention half of block l
// (input norm, q/k/v/o projections), 4l+1 the MLP's gate part (post-attention norm, gate projection), 4l+2 its
// up part (up projection, SwiGLU), 4l+3 its down part (down projection). A stage holds the units
// [first_unit, end_unit), so a pipeline can balance its stages more finely than whole blocks allow (the finest
// step is one C x F matrix). What crosses a cut placed before a unit (boundary_width() floats per token):
//   attention or gate part: the residual stream [N, C];
//   up part:   the stream, the norm's output n [N, C] and the gate's output [N, F]  (2C + F);
//   down part: the stream and the SwiGLU output h [N, F]                              (C + F).
inline constexpr int kUnitsPerBlock = 4;
struct StageSpec {
  int first_unit = 0;
  int end_unit = 0;
  bool has_embedding = true;
  bool has_head = true;
  // Whole blocks [first_layer, end_layer).
  static StageSpec blocks(int first_layer, int end_layer, bool has_embedding, bool has_head) {
    return StageSpec{kUnitsPerBlock * first_layer, kUnitsPerBlock * end_layer, has_embedding, has_head};
  }
};
inline int model_units(const ModelConfig& c) { return kUnitsPerBlock * c.n_layers; }
// Floats per token crossing a cut placed before `unit` (C, 2C + F or C + F; see above).
int boundary_width(const ModelConfig& c, int unit);
StageSpec whole_model(const ModelConfig& c);
std::string describe_units(int first_unit, int end_unit);  // "blocks [0, 4) + attention, MLP gate of block 4"

// How the operands of a block's products are stored: the norms' outputs (ln1, ln2, lnf), q, k, v, attention's
// output (att), the gate and up projections and SwiGLU's output (h); everything the matmuls and attention multiply,
// and the head's logits, whose gradient (written over them) the head's backward products multiply. The residual
// stream (x, x_mid), the statistics (rstd, lse), the per-row losses and the other gradients stay fp32. fp32, or bf16
// in bf16 precision on the GPU, where the products round their operands to bf16 anyway: half the memory and
// traffic, and no rounding pass before each product (the logits, N x vocab, are the largest buffer of all).
// Backend::operand_storage() picks it; the ops object that computes on the activations names it (Ops::Operand:
// float or bf16).
enum class OperandStorage { fp32, bf16 };
template <class T>
constexpr OperandStorage storage_of() {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16>, "operands are float or bf16");
  return std::is_same_v<T, float> ? OperandStorage::fp32 : OperandStorage::bf16;
}
inline size_t element_bytes(OperandStorage s) { return s == OperandStorage::fp32 ? 4 : 2; }

// A Buffer of matmul operands in either storage, read as the ops object's Operand type (checked).
class OperandBuffer {
 public:
  explicit OperandBuffer(Device d) : bytes_(d) {}
  void zeros(size_t n, OperandStorage s) { storage_ = s, bytes_.zeros(n * element_bytes(s)); }
  template <class T>
  T* as() {
    check<T>();
    return reinterpret_cast<T*>(bytes_.data());
  }
  template <class T>
  const T* as() const {
    check<T>();
    return reinterpret_cast<const T*>(bytes_.data());
  }
  OperandStorage storage() const { return storage_; }
  int64_t bytes() const { return bytes_.bytes(); }

 private:
  template <class T>
  void check() const {
    if (storage_of<T>() != storage_)
      internal_error("activations stored in " + std::string(storage_ == OperandStorage::fp32 ? "fp32" : "bf16") +
                     " read as the other type (made for one precision, used with another)");
  }
  Buffer<std::byte> bytes_;
  OperandStorage storage_ = OperandStorage::fp32;
};

// Activation memory of one micro-batch of B sequences of length T on one stage (explicit, like llm.c), on the
// device the stage computes on. Buffers are per block slice of the stage (x) or per attention / MLP half it
// holds (the rest).
struct Activations {
  explicit Activations(Device d = Device::cpu)
      : x(d), ln1(d), q(d), k(d), v(d), att(d), rstd1(d), lse(d), x_mid(d), ln2(d), gate(d), up(d), h(d), rstd2(d),
        lnf(d), logits(d), rstdf(d), losses(d), d_input(d), boundary(d), tokens(d), targets(d) {}
  int B = 0, T = 0;
  OperandStorage operands = OperandStorage::fp32;  // of the OperandBuffers below
  Buffer<float> x;  // residual stream at each block slice's input, (slices+1) x [N, C]; the last is the output
  OperandBuffer ln1, q, k, v, att;            // per attention half
  Buffer<float> rstd1, lse, x_mid;            // per attention half (x_mid: the stream after it)
  OperandBuffer ln2, gate, up, h;             // per MLP half
  Buffer<float> rstd2;                        // per MLP half
  OperandBuffer lnf, logits;                  // head (last stage only); logits become dlogits in backward
  Buffer<float> rstdf, losses;                // head
  Buffer<float> d_input;  // dLoss/d(input boundary) after backward (stages without the embedding)
  Buffer<float> boundary;  // the output of a stage that ends inside an MLP (wider than the stream)
  Buffer<int32_t> tokens, targets;  // copies kept for the backward (embedding / loss)
  int64_t valid_targets = 0;
  Device device() const { return x.device(); }
  int64_t bytes() const;
};

// Scratch gradients of one block, shared by all blocks of a stage (backward runs one block at a time). The
// gradients whose only reader is a matmul, which rounds them to bf16 in bf16 precision anyway, are stored as
// operands (OperandStorage): those of the q and k projections' outputs (after RoPE's backward) and of the gate and
// up projections' outputs. Accumulating into a zeroed bf16 buffer rounds once, exactly as the product would.
struct BackwardScratch {
  explicit BackwardScratch(Device d = Device::cpu)
      : dres(d), dln(d), datt(d), dq(d), dk(d), dv(d), dh(d), dq_pre(d), dk_pre(d), dgate(d), dup(d) {}
  OperandStorage operands = OperandStorage::fp32;  // of the OperandBuffers below
  Buffer<float> dres, dln, datt, dq, dk, dv, dh;
  OperandBuffer dq_pre, dk_pre, dgate, dup;
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

  // Buffers on `device` (the CUDA ones need a build with ONESTEP_CUDA).
  std::unique_ptr<Activations> make_activations(int B, int T, Device device = Device::cpu,
                                               OperandStorage operands = OperandStorage::fp32) const;
  std::unique_ptr<BackwardScratch> make_scratch(int B, int T, Device device = Device::cpu,
                                               OperandStorage operands = OperandStorage::fp32) const;

  // Floats per token this stage receives / sends (0 at the model's ends): boundary_width of its cuts.
  int input_width() const { return spec_.has_embedding ? 0 : boundary_width(cfg_, spec_.first_unit); }
  int output_width() const { return spec_.has_head ? 0 : boundary_width(cfg_, spec_.end_unit); }

  // Forward of one micro-batch. The embedding stage reads `tokens` [B*T]; others read `in_hidden`
  // [B*T, input_width()].
  // The head stage computes logits and, when `targets` is non-null, returns the mean loss over targets >= 0.
  // Other stages leave their output [B*T, output_width()] in output(acts) and return 0.
  double forward(const float* w, Activations& a, const int32_t* tokens, const float* in_hidden,
                 const int32_t* targets) const {
    return forward_on(CpuOps{}, w, a, tokens, in_hidden, targets);
  }
  const float* output(const Activations& a) const;

  // Backward of the micro-batch last run through forward(a). Accumulates loss_scale * dLoss/dw into grad.
  // The head stage starts from its loss (mean over the micro-batch's targets); the others from dout_hidden
  // [B*T, output_width()]. Stages without the embedding leave dLoss/d(input) [B*T, input_width()] in a.d_input.
  void backward(const float* w, float* grad, Activations& a, BackwardScratch& s, const float* dout_hidden,
                float loss_scale) const {
    backward_on(CpuOps{}, w, grad, a, s, dout_hidden, loss_scale);
  }

  // The same on any backend (CpuOps, CudaOps; model/stage_compute.h): w, grad, in_hidden, dout_hidden and the
  // buffers of a and s live on ops' device; tokens and targets are HOST arrays (copied to a's device).
  template <class Ops>
  double forward_on(const Ops& ops, const float* w, Activations& a, const int32_t* tokens, const float* in_hidden,
                    const int32_t* targets) const;
  template <class Ops>
  void backward_on(const Ops& ops, const float* w, float* grad, Activations& a, BackwardScratch& s,
                   const float* dout_hidden, float loss_scale) const;

 private:
  // One block's slice on this stage: all four units, or fewer at a cut. Offsets into the weights are -1 for an
  // absent unit (ln2/gate: the gate part; up; down); attn / mlp index the per-half activation buffers (-1 when
  // the slice holds no unit of that half).
  struct BlockOffsets {
    int64_t ln1 = -1, q = -1, k = -1, v = -1, o = -1, ln2 = -1, gate = -1, up = -1, down = -1;
    int attn = -1, mlp = -1;
  };
  int attn_halves_ = 0, mlp_halves_ = 0;
  ModelConfig cfg_;
  StageSpec spec_;
  ParamTable params_;
  int64_t embed_ = -1, final_norm_ = -1, head_ = -1;
  std::vector<BlockOffsets> blocks_;
};

}  // namespace onestep
