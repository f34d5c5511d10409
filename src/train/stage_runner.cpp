#include "train/stage_runner.h"

#include <chrono>
#include <cmath>
#include <cstring>
#include <algorithm>

#include "core/error.h"
#include "kernels/cpu/ops.h"

namespace onestep {

using pipeline::Action;
using pipeline::MsgKind;
using pipeline::Op;
using pipeline::message_tag;

namespace {
double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
}  // namespace

StageRunner::StageRunner(StageState& state, pipeline::Transport& transport, const RunConfig& config,
                         const TokenDataset& train, int64_t newest_version, std::vector<Buffer<float>> older)
    : st_(state),
      tx_(transport),
      c_(config),
      train_(train),
      B_(config.train.micro_batch_size),
      T_(config.model.seq_len),
      M_(config.train.micro_batches),
      newest_(newest_version),
      t0_(now_s()) {
  for (size_t i = 0; i < older.size(); ++i)
    if (newest_ - 1 - static_cast<int64_t>(i) >= 0) history_[newest_ - 1 - static_cast<int64_t>(i)] = std::move(older[i]);
  scratch_ = st_.backend.make_scratch(st_.stage, B_, T_);
  const Stage whole(c_.model, whole_model(c_.model));
  n_global_params_ = static_cast<int>(whole.params().size());
  for (const auto& p : st_.stage.params().all()) {
    const auto& all = whole.params().all();
    int idx = -1;
    for (size_t i = 0; i < all.size(); ++i)
      if (all[i].name == p.name) idx = static_cast<int>(i);
    global_index_.push_back(idx);
  }
  tokens_.resize(static_cast<size_t>(B_) * T_), targets_.resize(tokens_.size());
}

const float* StageRunner::version(int64_t v) const {
  if (v == newest_) return st_.weights.data();
  auto it = history_.find(v);
  if (it == history_.end())
    internal_error("stage " + std::to_string(tx_.stage()) + ": weight version " + std::to_string(v) +
                   " is not alive (newest " + std::to_string(newest_) + ")");
  return it->second.data();
}

std::vector<Buffer<float>> StageRunner::older_versions(int n) const {
  std::vector<Buffer<float>> out;
  for (int k = 1; k <= n; ++k) {
    const int64_t v = std::max<int64_t>(newest_ - k, 0);
    out.emplace_back(st_.device()).zeros(st_.weights.size());
    st_.backend.copy(out.back().data(), version(v), static_cast<int64_t>(st_.weights.size()));
  }
  return out;
}

Activations& StageRunner::activations(int64_t batch, int micro) {
  auto& slot = acts_[{batch, micro}];
  peak_acts_in_flight_ = std::max(peak_acts_in_flight_, acts_.size());
  if (!slot) {
    if (free_acts_.empty()) {
      slot = st_.backend.make_activations(st_.stage, B_, T_);
    } else {
      slot = std::move(free_acts_.back());
      free_acts_.pop_back();
    }
  }
  return *slot;
}

void StageRunner::release(int64_t batch, int micro) {
  auto it = acts_.find({batch, micro});
  free_acts_.push_back(std::move(it->second));
  acts_.erase(it);
}

// Received activations and gradients reuse a few buffers instead of allocating one per message (on a GPU an
// allocation and a free per micro-batch would each synchronise the device).
Buffer<float>& StageRunner::message_buffer(MessageMap& m, std::pair<int64_t, int> key, int64_t n) {
  auto [it, fresh] = m.try_emplace(key, st_.device());
  if (fresh && !spare_messages_.empty()) {
    it->second = std::move(spare_messages_.back());
    spare_messages_.pop_back();
  }
  if (it->second.size() != static_cast<size_t>(n)) it->second.zeros(static_cast<size_t>(n));
  return it->second;
}

void StageRunner::recycle(MessageMap& m, std::pair<int64_t, int> key) {
  auto it = m.find(key);
  if (it == m.end()) return;  // nothing was received (the head stage's backward starts from its loss)
  spare_messages_.push_back(std::move(it->second));
  m.erase(it);
}

// The other end's tied-embedding gradient, received into a buffer kept for it (no allocation per step).
const float* StageRunner::recv_other_tied_copy(int other, uint32_t tag, int64_t n) {
  if (tied_recv_.size() != static_cast<size_t>(n)) tied_recv_ = Buffer<float>(st_.device()), tied_recv_.zeros(static_cast<size_t>(n));
  tx_.recv(other, tag, tied_recv_.data(), n);
  return tied_recv_.data();
}

void StageRunner::ensure_version(int64_t v) {
  while (newest_ < v) {
    if (pending_.empty())
      internal_error("stage " + std::to_string(tx_.stage()) + ": version " + std::to_string(v) +
                     " needed but no step is pending");
    complete_step();
  }
}

// Version v rounded once for this thread's products. The newest version moves from st_.weights to the history at
// each step and the optimizer then rewrites st_.weights, so a copy is dropped as soon as its version is no longer
// alive at the pointer it was made from; nothing reads a dropped copy.
void StageRunner::use_rounded(int64_t v) {
  if (!rounds_weights_) return;
  const auto alive = [&](int64_t u) { return u == newest_ || history_.count(u) > 0; };
  bool have = false;
  Rounded* spare = nullptr;
  for (Rounded& r : rounded_) {
    if (r.from && !(alive(r.version) && version(r.version) == r.from)) r.copy->forget(), r.from = nullptr;
    have = have || (r.from && r.version == v);
    if (!r.from && !spare) spare = &r;
  }
  if (have) return;
  if (!spare) {
    std::unique_ptr<RoundedWeights> copy = st_.backend.make_rounded_weights(static_cast<int64_t>(st_.weights.size()));
    if (!copy) {
      rounds_weights_ = false;
      return;
    }
    spare = &rounded_.emplace_back(Rounded{-1, nullptr, std::move(copy)});
  }
  spare->copy->round(version(v));
  spare->version = v, spare->from = version(v);
}

void StageRunner::forward(const Action& a) {
  ensure_version(a.version);
  use_rounded(a.version);
  const StageSpec& spec = st_.stage.spec();
  Activations& acts = activations(a.batch, a.micro);
  // Every stage derives the micro-batch from (seed, batch, micro): only the ends use it (tokens, targets).
  if (spec.has_embedding || spec.has_head)
    sample_train_batch(train_, static_cast<uint64_t>(c_.train.seed), a.batch, a.micro, B_, T_, tokens_.data(),
                       targets_.data());
  const float* in = spec.has_embedding ? nullptr : inputs_.at({a.batch, a.micro}).data();
  const double loss = st_.backend.forward(st_.stage, version(a.version), acts, tokens_.data(), in,
                                          spec.has_head ? targets_.data() : nullptr);
  if (spec.has_head) loss_sum_[a.batch] += loss;  // micro-batch order, as in the single-device trainer
  if (!spec.has_embedding) recycle(inputs_, {a.batch, a.micro});
}

void StageRunner::backward(const Action& a) {
  ensure_version(a.version);
  use_rounded(a.version);
  const size_t slot = grad_slot(a.batch);
  if (grad_batch_[slot] != a.batch) {
    st_.backend.fill_zero(grads_[slot].data(), static_cast<int64_t>(grads_[slot].size()));
    grad_batch_[slot] = a.batch;
  }
  const float* dout = st_.stage.spec().has_head ? nullptr : douts_.at({a.batch, a.micro}).data();
  st_.backend.backward(st_.stage, version(a.version), grads_[slot].data(), activations(a.batch, a.micro), *scratch_,
                       dout, 1.0f / static_cast<float>(M_));
  recycle(douts_, {a.batch, a.micro});
  if (st_.stage.spec().has_embedding) release(a.batch, a.micro);  // nothing to send back
}

int StageRunner::other_tied_end() const {
  if (!c_.model.tie_embeddings || tx_.stages() == 1) return -1;
  if (st_.stage.spec().has_embedding) return tx_.stages() - 1;
  if (st_.stage.spec().has_head) return 0;
  return -1;
}

const ParamInfo* StageRunner::tied_param() const {
  if (!c_.model.tie_embeddings) return nullptr;
  if (st_.stage.spec().has_embedding) return &st_.stage.params().at("model.embed_tokens.weight");
  if (st_.stage.holds_tied_copy()) return &st_.stage.params().at("lm_head.weight");
  return nullptr;
}

double StageRunner::elapsed_s() const { return now_s() - t0_; }

// Tied embedding across stages: the last stage sends its head-side gradient when it posts (it finishes a
// batch's backwards first); stage 0 receives it when it posts, sends its own, and forms the sum, so the
// tied pair's squared norm rides on the same reduction; the last stage forms the same sum at completion.
void StageRunner::post_step(int64_t batch) {
  Buffer<float>& g = grads_[grad_slot(batch)];
  const int p = tx_.stages();
  // Reduction vector: per-parameter sums of squares at whole-model positions, the loss, per-stage busy time.
  std::vector<double> local(n_global_params_ + 1 + 3 * p, 0.0);
  const int other = other_tied_end();
  const ParamInfo* tp = tied_param();
  if (st_.stage.spec().has_embedding && st_.stage.holds_tied_copy()) {
    st_.grad.swap(g);
    reduce_tied_embedding_local(st_);
    st_.grad.swap(g);
  } else if (other >= 0 && st_.stage.spec().has_head) {
    tx_.send(other, message_tag(MsgKind::tied_grad, batch, 0), g.data() + tp->offset, tp->numel);
  } else if (other >= 0) {
    const float* theirs = recv_other_tied_copy(other, message_tag(MsgKind::tied_grad, batch, 0), tp->numel);
    tx_.send(other, message_tag(MsgKind::tied_grad, batch, 1), g.data() + tp->offset, tp->numel);  // before the sum
    st_.backend.add(g.data() + tp->offset, theirs, tp->numel);
  }
  const ParamSquares squares = grad_squares(st_, g.data());
  for (size_t k = 0; k < squares.param.size(); ++k) local[global_index_[squares.param[k]]] = squares.sum[k];
  if (st_.stage.spec().has_head) local[n_global_params_] = loss_sum_[batch] / M_;
  local[n_global_params_ + 1 + tx_.stage()] = busy_[batch];
  const double act_bytes = free_acts_.empty() && acts_.empty() ? 0.0
                           : static_cast<double>(peak_acts_in_flight_) *
                                 static_cast<double>((acts_.empty() ? free_acts_.front() : acts_.begin()->second)->bytes());
  const double w_bytes = sizeof(float) * static_cast<double>(st_.weights.size()) *
                         static_cast<double>(1 + history_.size() + spare_versions_.size() + grads_.size());
  local[n_global_params_ + 1 + p + tx_.stage()] = act_bytes;
  local[n_global_params_ + 1 + 2 * p + tx_.stage()] = w_bytes;
  peak_acts_in_flight_ = acts_.size();
  loss_sum_.erase(batch), busy_.erase(batch);
  pending_.push_back({batch, tx_.start_sum(message_tag(MsgKind::weights, batch, 0), std::move(local)), elapsed_s()});
}

void StageRunner::complete_step() {
  Pending pend = std::move(pending_.front());
  pending_.erase(pending_.begin());
  Buffer<float>& g = grads_[grad_slot(pend.batch)];
  const std::vector<double> sums = pend.sum->wait();
  const int other = other_tied_end();
  if (other >= 0 && st_.stage.spec().has_head) {
    const ParamInfo* tp = tied_param();
    // a + b == b + a: the same bits as stage 0's sum (which it sent before adding)
    st_.backend.add(g.data() + tp->offset,
                    recv_other_tied_copy(other, message_tag(MsgKind::tied_grad, pend.batch, 1), tp->numel), tp->numel);
  }
  // The whole model's squared norm, summed in parameter-table order like the single-device trainer.
  double total = 0.0;
  for (int i = 0; i < n_global_params_; ++i) total += sums[i];
  StepRecord rec;
  rec.batch = pend.batch;
  rec.loss = sums[n_global_params_];
  rec.grad_norm = std::sqrt(total);
  const int p = tx_.stages();
  auto part = [&](int k) { return std::vector<double>(sums.begin() + n_global_params_ + 1 + k * p, sums.begin() + n_global_params_ + 1 + (k + 1) * p); };
  rec.busy_s = part(0), rec.activation_bytes = part(1), rec.weight_bytes = part(2);
  rec.posted_s = pend.posted_s;
  if (!std::isfinite(rec.loss) || !std::isfinite(rec.grad_norm))
    throw Error(ExitCode::diverged, "training diverged at step " + std::to_string(pend.batch) + ": loss " +
                                        std::to_string(rec.loss) + ", grad norm " + std::to_string(rec.grad_norm));
  const float grad_scale = clip_scale(c_.optim.clip, rec.grad_norm);
  if (max_versions_ > 1) {  // W(newest) stays readable, in a buffer of the pool (run() filled it)
    Buffer<float> kept = std::move(spare_versions_.back());
    spare_versions_.pop_back();
    kept.copy_from(st_.weights);
    history_.insert_or_assign(newest_, std::move(kept));
  }
  st_.grad.swap(g);
  // The version this batch's gradients were computed on (DC-ASGD compensates towards W(newest)).
  const float* computed_on =
      version(pipeline::version_for(schedule_, pend.batch, tx_.stage(), tx_.stages(), c_.pipeline.sync_start_steps));
  optimizer_step(st_, lr_scale_at(pend.batch, c_.train.steps, c_.optim.warmup_frac, c_.optim.min_lr_frac),
                 grad_scale, c_.delay, computed_on);
  st_.grad.swap(g);
  ++newest_;
  while (!history_.empty() && history_.begin()->first <= newest_ - max_versions_) {
    spare_versions_.push_back(std::move(history_.begin()->second));  // reused: no allocation per step
    history_.erase(history_.begin());
  }
  if (on_step_) on_step_(rec);
}

void StageRunner::run(const std::vector<Action>& actions, const std::string& schedule_name) {
  schedule_ = schedule_name;
  max_versions_ = pipeline::max_versions_alive(schedule_name, tx_.stages());
  // Weight versions: at a step's completion the history briefly holds max_versions_ copies; allocating them now
  // keeps page faults (or device allocations) out of the steady state.
  while (max_versions_ > 1 && history_.size() + spare_versions_.size() < static_cast<size_t>(max_versions_))
    spare_versions_.emplace_back(st_.device()).zeros(st_.weights.size());
  // One gradient buffer per batch whose step may still be pending, plus the one accumulating.
  if (grads_.size() != static_cast<size_t>(max_versions_ + 1)) {
    grads_.clear();
    for (int k = 0; k <= max_versions_; ++k) grads_.emplace_back(st_.device()).zeros(st_.grad.size());
    grad_batch_.assign(grads_.size(), -1);
  }
  // The rounded weight copies belong to this thread: gone when the run ends, however it ends.
  struct DropRounded {
    std::vector<Rounded>& r;
    ~DropRounded() { r.clear(); }
  } drop_rounded{rounded_};
  // Floats of one micro-batch crossing this stage's input and output cuts (wider inside an MLP).
  const int64_t in_n = static_cast<int64_t>(B_) * T_ * st_.stage.input_width();
  const int64_t out_n = static_cast<int64_t>(B_) * T_ * st_.stage.output_width();
  for (const Action& a : actions) {
    const double start = now_s();
    switch (a.op) {
      case Op::recv_act: {
        Buffer<float>& buf = message_buffer(inputs_, {a.batch, a.micro}, in_n);
        tx_.recv(a.peer, message_tag(MsgKind::activation, a.batch, a.micro), buf.data(), in_n);
        break;
      }
      case Op::forward: forward(a); break;
      case Op::send_act:
        tx_.send(a.peer, message_tag(MsgKind::activation, a.batch, a.micro),
                 st_.stage.output(*acts_.at({a.batch, a.micro})), out_n);
        break;
      case Op::recv_grad: {
        Buffer<float>& buf = message_buffer(douts_, {a.batch, a.micro}, out_n);
        tx_.recv(a.peer, message_tag(MsgKind::gradient, a.batch, a.micro), buf.data(), out_n);
        break;
      }
      case Op::backward: backward(a); break;
      case Op::send_grad:
        tx_.send(a.peer, message_tag(MsgKind::gradient, a.batch, a.micro), acts_.at({a.batch, a.micro})->d_input.data(),
                 in_n);
        release(a.batch, a.micro);
        break;
      case Op::step: post_step(a.batch); break;
    }
    const double end = now_s();
    if (a.op == Op::forward || a.op == Op::backward) busy_[a.batch] += end - start;
    executed_.push_back({a, start - t0_, end - t0_});
  }
  while (!pending_.empty()) complete_step();
  st_.backend.synchronize();  // this thread's stream has finished: other threads may read the weights now
}

}  // namespace onestep
