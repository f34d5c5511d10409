// The schedule validator: rules 1-5 of schedule.h, checked in that order, first violation thrown.
#include <algorithm>
#include <string>
#include <vector>

#include "core/error.h"
#include "pipeline/schedule.h"

namespace onestep::pipeline {

namespace {

constexpr int kOps = 6;  // forward .. recv_grad: the ops that name a (batch, micro)

// Position of each (op, batch, micro) in one stage's program, -1 where absent. Index k = g*m + i.
struct StageIndex {
  std::vector<int32_t> pos[kOps];
};

class Validator {
 public:
  Validator(const Schedule& s, int max_versions) : s_(s), max_versions_(max_versions) {}

  void run() {
    structure();
    rule1();
    rule2();
    rule3();
    rule4();
    rule5();
  }

 private:
  const Schedule& s_;
  int max_versions_;
  int p_ = 0, m_ = 0;
  int64_t B_ = 0;
  std::vector<StageIndex> index_;

  [[noreturn]] void fail(const std::string& rule, const std::string& what) { bad_input("schedule " + s_.name, rule + ": " + what); }
  [[noreturn]] void fail_at(const std::string& rule, int stage, size_t i, const std::string& what) {
    fail(rule, "stage " + std::to_string(stage) + " action " + std::to_string(i) + " (" +
                   action_token(s_.programs[stage][i]) + ") " + what);
  }
  int64_t key(const Action& a) const { return a.batch * m_ + a.micro; }
  std::string bm(int64_t k) const {
    return "batch " + std::to_string(k / m_) + " micro " + std::to_string(k % m_);
  }
  int32_t pos(int stage, Op op, int64_t k) const { return index_[stage].pos[static_cast<int>(op)][k]; }

  void structure() {
    const std::string r = "structure";
    const auto& names = schedule_names();
    if (std::find(names.begin(), names.end(), s_.name) == names.end())
      fail(r, "unknown schedule name '" + s_.name + "' (expected gpipe, 1f1b, 2bw, pipedream or sync_start)");
    if (s_.stages < 1 || s_.micro_batches < 1 || s_.batches < 0 || s_.sync_start_steps < 0)
      fail(r, "need stages >= 1, micro_batches >= 1, batches >= 0, sync_start_steps >= 0");
    if (s_.programs.size() != static_cast<size_t>(s_.stages))
      fail(r, std::to_string(s_.programs.size()) + " programs for " + std::to_string(s_.stages) + " stages");
    p_ = s_.stages;
    m_ = s_.micro_batches;
    B_ = s_.batches;
  }

  // Rule 1: ranges, one forward and one backward per (batch, micro) per stage, backward after forward. Builds the
  // position index (duplicated send/recv are left for rule 3, which re-detects them).
  void rule1() {
    const std::string r = "rule 1 (one forward and one backward per micro-batch)";
    index_.assign(p_, {});
    for (int st = 0; st < p_; ++st) {
      const auto& prog = s_.programs[st];
      StageIndex& ix = index_[st];
      for (auto& v : ix.pos) v.assign(B_ * m_, -1);
      for (size_t i = 0; i < prog.size(); ++i) {
        const Action& a = prog[i];
        if (a.op == Op::step) continue;
        if (a.batch < 0 || a.batch >= B_ || a.micro < 0 || a.micro >= m_)
          fail_at(r, st, i, "names batch " + std::to_string(a.batch) + " micro " + std::to_string(a.micro) +
                                " outside 0.." + std::to_string(B_ - 1) + " x 0.." + std::to_string(m_ - 1));
        int32_t& slot = ix.pos[static_cast<int>(a.op)][key(a)];
        if (a.op == Op::forward && slot >= 0) fail_at(r, st, i, "is a second forward (first at action " + std::to_string(slot) + ")");
        if (a.op == Op::backward) {
          if (slot >= 0) fail_at(r, st, i, "is a second backward (first at action " + std::to_string(slot) + ")");
          if (ix.pos[0][key(a)] < 0) fail_at(r, st, i, "comes before its forward");
        }
        if (slot < 0) slot = static_cast<int32_t>(i);
      }
      for (int64_t k = 0; k < B_ * m_; ++k) {
        if (ix.pos[0][k] < 0) fail(r, "stage " + std::to_string(st) + " has no forward of " + bm(k));
        if (ix.pos[1][k] < 0) fail(r, "stage " + std::to_string(st) + " has no backward of " + bm(k));
      }
    }
  }

  // Rule 2: stashing (backward reads the forward's version) and the named version rule.
  void rule2() {
    const std::string r = "rule 2 (weight version)";
    for (int st = 0; st < p_; ++st) {
      const auto& prog = s_.programs[st];
      for (size_t i = 0; i < prog.size(); ++i) {
        const Action& a = prog[i];
        if (a.op == Op::backward) {
          const Action& f = prog[pos(st, Op::forward, key(a))];
          if (f.version != a.version)
            fail_at(r, st, i, "uses version " + std::to_string(a.version) + " but its forward used version " +
                                  std::to_string(f.version) + " (forward and backward must read the same weights)");
        }
        if (a.op == Op::forward) {
          const int64_t want = version_for(s_.name, a.batch, st, p_, s_.sync_start_steps);
          if (a.version != want)
            fail_at(r, st, i, "uses version " + std::to_string(a.version) + " but the " + s_.name + " rule gives " +
                                  std::to_string(want));
        }
      }
    }
  }

  // Rule 3: peers, one-to-one matching of sends and recvs, data flow, deadlock freedom.
  void rule3() {
    const std::string r = "rule 3 (communication)";
    // 3a: peers.
    for (int st = 0; st < p_; ++st) {
      const auto& prog = s_.programs[st];
      for (size_t i = 0; i < prog.size(); ++i) {
        const Action& a = prog[i];
        int want = -1;
        const char* dir = "";
        switch (a.op) {
          case Op::send_act: want = st + 1, dir = "send_act goes to the next stage"; break;
          case Op::recv_act: want = st - 1, dir = "recv_act comes from the previous stage"; break;
          case Op::send_grad: want = st - 1, dir = "send_grad goes to the previous stage"; break;
          case Op::recv_grad: want = st + 1, dir = "recv_grad comes from the next stage"; break;
          default: break;
        }
        const bool comm = *dir != '\0';
        if (comm && (want < 0 || want >= p_))
          fail_at(r, st, i, std::string("has no peer: ") + dir + " and stage " + std::to_string(st) + " of " +
                                std::to_string(p_) + " has none");
        if (a.peer != want)
          fail_at(r, st, i, "has peer " + std::to_string(a.peer) + ", expected " + std::to_string(want) +
                                (comm ? std::string(" (") + dir + ")" : std::string(" (only send/recv have a peer)")));
      }
    }
    // 3b: each (kind, batch, micro) sent/received at most once per stage.
    for (int st = 0; st < p_; ++st) {
      const auto& prog = s_.programs[st];
      for (size_t i = 0; i < prog.size(); ++i) {
        const Action& a = prog[i];
        if (a.op == Op::forward || a.op == Op::backward || a.op == Op::step) continue;
        const int32_t first = pos(st, a.op, key(a));
        if (first != static_cast<int32_t>(i))
          fail_at(r, st, i, std::string("duplicates the ") + op_name(a.op) + " at action " + std::to_string(first));
      }
    }
    // 3c: matching across the link.
    for (int st = 0; st < p_; ++st) {
      const auto& prog = s_.programs[st];
      for (size_t i = 0; i < prog.size(); ++i) {
        const Action& a = prog[i];
        Op other;
        switch (a.op) {
          case Op::send_act: other = Op::recv_act; break;
          case Op::recv_act: other = Op::send_act; break;
          case Op::send_grad: other = Op::recv_grad; break;
          case Op::recv_grad: other = Op::send_grad; break;
          default: continue;
        }
        if (pos(a.peer, other, key(a)) < 0) {
          const bool is_recv = a.op == Op::recv_act || a.op == Op::recv_grad;
          fail_at(r, st, i, std::string(is_recv ? "matches no " : "is never received: no ") + op_name(other) + " of " +
                                bm(key(a)) + " on stage " + std::to_string(a.peer));
        }
      }
    }
    // 3d: data flow on each stage: the input arrives before the compute, the output leaves after it.
    for (int st = 0; st < p_; ++st) {
      for (int64_t k = 0; k < B_ * m_; ++k) {
        const int32_t f = pos(st, Op::forward, k), b = pos(st, Op::backward, k);
        auto need = [&](bool applies, Op op, int32_t compute, bool before, const char* what) {
          const int32_t c = pos(st, op, k);
          if (!applies) return;
          if (c < 0) fail_at(r, st, compute, std::string("has no ") + op_name(op) + " (" + what + ")");
          if (before ? c > compute : c < compute)
            fail_at(r, st, c, std::string(before ? "comes after" : "comes before") + " the " +
                                  (op == Op::recv_act || op == Op::send_act ? "forward" : "backward") + " at action " +
                                  std::to_string(compute) + " (" + what + ")");
        };
        need(st > 0, Op::recv_act, f, true, "a forward's input activation is received before it");
        need(st < p_ - 1, Op::send_act, f, false, "a forward's output activation is sent after it");
        need(st < p_ - 1, Op::recv_grad, b, true, "a backward's output gradient is received before it");
        need(st > 0, Op::send_grad, b, false, "a backward's input gradient is sent after it");
      }
    }
    // 3e: run to completion with buffered sends and blocking recvs.
    std::vector<size_t> pc(p_, 0);
    std::vector<std::vector<char>> sent_act(p_, std::vector<char>(B_ * m_, 0)), sent_grad = sent_act;
    for (bool progress = true; progress;) {
      progress = false;
      for (int st = 0; st < p_; ++st) {
        const auto& prog = s_.programs[st];
        for (; pc[st] < prog.size(); ++pc[st], progress = true) {
          const Action& a = prog[pc[st]];
          if (a.op == Op::send_act) sent_act[st][key(a)] = 1;
          if (a.op == Op::send_grad) sent_grad[st][key(a)] = 1;
          if (a.op == Op::recv_act && !sent_act[a.peer][key(a)]) break;
          if (a.op == Op::recv_grad && !sent_grad[a.peer][key(a)]) break;
        }
      }
    }
    for (int st = 0; st < p_; ++st) {
      if (pc[st] == s_.programs[st].size()) continue;
      std::string stuck;
      for (int o = 0; o < p_; ++o)
        if (pc[o] < s_.programs[o].size())
          stuck += (stuck.empty() ? "" : ", ") + std::string("stage ") + std::to_string(o) + " at action " +
                   std::to_string(pc[o]) + " (" + action_token(s_.programs[o][pc[o]]) + ")";
      fail_at(r, st, pc[st], "waits forever: deadlock with buffered sends and blocking recvs; blocked: " + stuck);
    }
  }

  // Rule 4: steps once per batch, in order, after the batch's m backwards; versions used only once they exist.
  void rule4() {
    const std::string r = "rule 4 (optimizer steps)";
    for (int st = 0; st < p_; ++st) {
      const auto& prog = s_.programs[st];
      std::vector<int> backwards(B_, 0);
      int64_t next = 0;  // the next step's batch = the newest version
      for (size_t i = 0; i < prog.size(); ++i) {
        const Action& a = prog[i];
        if (a.op == Op::backward) ++backwards[a.batch];
        if (a.op == Op::forward || a.op == Op::backward) {
          if (a.version > next)
            fail_at(r, st, i, "reads version " + std::to_string(a.version) + " before it exists (the newest is " +
                                  std::to_string(next) + "; step " + std::to_string(a.version - 1) +
                                  " has not run on this stage)");
        }
        if (a.op != Op::step) continue;
        if (a.batch != next)
          fail_at(r, st, i, "is the step of batch " + std::to_string(a.batch) + " but the next step must be batch " +
                                std::to_string(next) + " (steps run once each in order 0, 1, 2, ...)");
        if (next >= B_) fail_at(r, st, i, "is a step beyond the last batch " + std::to_string(B_ - 1));
        if (backwards[a.batch] != m_)
          fail_at(r, st, i, "comes after only " + std::to_string(backwards[a.batch]) + " of the " +
                                std::to_string(m_) + " backwards of batch " + std::to_string(a.batch));
        if (a.version != a.batch + 1 || a.micro != -1)
          fail_at(r, st, i, "must have micro -1 and version " + std::to_string(a.batch + 1) +
                                " (the version it produces)");
        ++next;
      }
      if (next != B_)
        fail(r, "stage " + std::to_string(st) + " has steps for " + std::to_string(next) + " of " +
                    std::to_string(B_) + " batches");
    }
  }

  // Rule 5: weight versions alive.
  void rule5() {
    const int limit = max_versions_ > 0 ? max_versions_ : max_versions_alive(s_.name, p_);
    const std::string r = "rule 5 (weight versions alive)";
    for (int st = 0; st < p_; ++st) {
      const auto& prog = s_.programs[st];
      const auto alive = versions_alive(prog);
      for (size_t i = 0; i < alive.size(); ++i) {
        if (alive[i] <= limit) continue;
        const std::string what = "needs " + std::to_string(alive[i]) + " weight versions alive, the limit is " +
                                 std::to_string(limit) + (max_versions_ > 0 ? " (max_versions)" : " for " + s_.name);
        if (i < prog.size()) fail_at(r, st, i, what + " (counted just before this action)");
        fail_at(r, st, i - 1, what + " (counted after this last action)");
      }
    }
  }
};

}  // namespace

void validate(const Schedule& s, int max_versions) { Validator(s, max_versions).run(); }

}  // namespace onestep::pipeline
