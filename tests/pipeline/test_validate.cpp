// The validator: one hand-broken schedule (or more) per rule, each caught by that rule with a useful message.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "core/error.h"
#include "pipeline/schedule.h"

using namespace onestep;
using namespace onestep::pipeline;

namespace {

std::string validate_message(const Schedule& s, int max_versions = 0) {
  try {
    validate(s, max_versions);
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::bad_input) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "expected validate to reject:\n" << to_text(s);
  return "";
}

// Expects the message to start with "schedule NAME: <rule>" and to contain every needle.
void expect_rejected(const Schedule& s, const std::string& rule, const std::vector<std::string>& needles,
                     int max_versions = 0) {
  const std::string msg = validate_message(s, max_versions);
  const std::string prefix = "schedule " + s.name + ": " + rule;
  EXPECT_EQ(msg.rfind(prefix, 0), 0u) << msg;
  for (const auto& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << "missing '" << n << "' in: " << msg;
}

// Index of the first action of `stage` with this op, batch and micro.
size_t find(const Schedule& s, int stage, Op op, int64_t batch, int micro) {
  const auto& prog = s.programs[stage];
  for (size_t i = 0; i < prog.size(); ++i)
    if (prog[i].op == op && prog[i].batch == batch && prog[i].micro == micro) return i;
  ADD_FAILURE() << "no such action";
  return 0;
}

void erase(Schedule& s, int stage, size_t i) { s.programs[stage].erase(s.programs[stage].begin() + i); }
// Moves the action at `from` so that it sits at index `to` of the resulting program.
void move(Schedule& s, int stage, size_t from, size_t to) {
  auto& prog = s.programs[stage];
  const Action a = prog[from];
  prog.erase(prog.begin() + from);
  prog.insert(prog.begin() + to, a);
}

}  // namespace

TEST(Validate, StructureIsChecked) {
  Schedule s = make_schedule("1f1b", 2, 2, 1);
  s.programs.pop_back();
  expect_rejected(s, "structure", {"1 programs for 2 stages"});
  s = make_schedule("1f1b", 2, 2, 1);
  s.name = "interleaved";
  expect_rejected(s, "structure", {"unknown schedule name 'interleaved'"});
}

TEST(Validate, Rule1OneForwardAndOneBackward) {
  // A missing backward (with its sends and recvs, so only rule 1 can see it).
  Schedule s = make_schedule("gpipe", 1, 2, 1);
  erase(s, 0, find(s, 0, Op::backward, 0, 1));
  expect_rejected(s, "rule 1", {"stage 0 has no backward of batch 0 micro 1"});
  // A duplicated forward.
  s = make_schedule("gpipe", 1, 2, 1);
  s.programs[0].insert(s.programs[0].begin() + 1, s.programs[0][0]);
  expect_rejected(s, "rule 1", {"stage 0 action 1 (F0.0@v0) is a second forward (first at action 0)"});
  // A backward before its forward.
  s = make_schedule("1f1b", 1, 2, 1);  // F0.0 B0.0 F0.1 B0.1 step0
  move(s, 0, 3, 2);                    // F0.0 B0.0 B0.1 F0.1 step0
  expect_rejected(s, "rule 1", {"stage 0 action 2 (B0.1@v0) comes before its forward"});
  // A micro-batch outside the batch.
  s = make_schedule("1f1b", 2, 2, 1);
  s.programs[1][1].micro = 2;
  expect_rejected(s, "rule 1", {"stage 1 action 1", "outside"});
}

TEST(Validate, Rule2Versions) {
  // Backward reads other weights than its forward (no stashing).
  Schedule s = make_schedule("2bw", 2, 2, 3);
  s.programs[1][find(s, 1, Op::backward, 2, 0)].version = 2;
  expect_rejected(s, "rule 2", {"(B2.0@v2) uses version 2 but its forward used version 1"});
  // Forward and backward agree but not with the 2bw rule (this would be 1f1b's version).
  s = make_schedule("2bw", 2, 2, 3);
  s.programs[0][find(s, 0, Op::forward, 2, 1)].version = 2;
  s.programs[0][find(s, 0, Op::backward, 2, 1)].version = 2;
  expect_rejected(s, "rule 2", {"stage 0", "(F2.1@v2) uses version 2 but the 2bw rule gives 1"});
  // Relabelling a pipedream program as 2bw changes the version rule.
  s = make_schedule("pipedream", 3, 3, 4);
  s.name = "2bw";
  expect_rejected(s, "rule 2", {"the 2bw rule gives"});
}

TEST(Validate, Rule3Communication) {
  // A recv with no matching send.
  Schedule s = make_schedule("1f1b", 2, 2, 1);
  erase(s, 0, find(s, 0, Op::send_act, 0, 1));
  expect_rejected(s, "rule 3", {"stage 1", "(recvA0.1<-s0) matches no send_act of batch 0 micro 1 on stage 0"});
  // A send nobody receives.
  s = make_schedule("1f1b", 2, 2, 1);
  erase(s, 0, find(s, 0, Op::recv_grad, 0, 0));
  expect_rejected(s, "rule 3", {"(sendG0.0->s0) is never received: no recv_grad of batch 0 micro 0 on stage 0"});
  // A duplicated recv.
  s = make_schedule("1f1b", 2, 2, 1);
  s.programs[1].insert(s.programs[1].begin() + 1, s.programs[1][0]);
  expect_rejected(s, "rule 3", {"stage 1 action 1 (recvA0.0<-s0) duplicates the recv_act at action 0"});
  // Wrong peer.
  s = make_schedule("1f1b", 3, 2, 1);
  s.programs[2][0].peer = 0;
  expect_rejected(s, "rule 3", {"stage 2 action 0", "has peer 0, expected 1"});
  // A send on the last stage has no peer at all.
  s = make_schedule("1f1b", 2, 1, 1);
  s.programs[1].insert(s.programs[1].begin() + 2, Action{Op::send_act, 0, 0, -1, 2});
  expect_rejected(s, "rule 3", {"stage 1 action 2", "has no peer"});
  // An activation sent before the forward that computes it.
  s = make_schedule("gpipe", 2, 1, 1);  // stage 0: F0.0 sendA0.0 recvG0.0 B0.0 step0
  move(s, 0, 1, 0);
  expect_rejected(s, "rule 3", {"stage 0 action 0 (sendA0.0->s1) comes before the forward at action 1"});
  // Deadlock: stage 0 waits for the gradient of micro-batch 0 before sending its activation.
  s = make_schedule("gpipe", 2, 1, 1);  // stage 0: F0.0 sendA0.0 recvG0.0 B0.0 step0
  move(s, 0, 2, 0);                     //          recvG0.0 F0.0 sendA0.0 B0.0 step0
  expect_rejected(s, "rule 3", {"stage 0 action 0 (recvG0.0<-s1) waits forever", "deadlock",
                                "stage 1 at action 0 (recvA0.0<-s0)"});
  // A deadlock in the middle of a 3-stage pipeline: stage 1 waits for the gradient before it forwards.
  s = make_schedule("1f1b", 3, 1, 1);  // stage 1: recvA F sendA recvG B sendG step
  move(s, 1, find(s, 1, Op::recv_grad, 0, 0), 0);
  expect_rejected(s, "rule 3", {"stage 0 action 2 (recvG0.0<-s1) waits forever", "stage 1 at action 0 (recvG0.0<-s2)",
                                "stage 2 at action 0 (recvA0.0<-s1)"});
}

TEST(Validate, Rule4Steps) {
  // A step before the batch's last backward.
  Schedule s = make_schedule("1f1b", 2, 3, 1);
  move(s, 1, s.programs[1].size() - 1, find(s, 1, Op::backward, 0, 2));
  expect_rejected(s, "rule 4", {"stage 1", "(step0->v1) comes after only 2 of the 3 backwards of batch 0"});
  // A missing step.
  s = make_schedule("gpipe", 2, 2, 2);
  s.programs[0].pop_back();
  expect_rejected(s, "rule 4", {"stage 0 has steps for 1 of 2 batches"});
  // Steps out of order.
  s = make_schedule("gpipe", 1, 1, 2);  // F0.0 B0.0 step0 F1.0 B1.0 step1
  std::swap(s.programs[0][2].batch, s.programs[0][5].batch);
  expect_rejected(s, "rule 4", {"stage 0 action 2", "the next step must be batch 0"});
  // A forward reading a version that does not exist yet (step 0 moved after the forward of batch 1).
  s = make_schedule("gpipe", 1, 1, 2);
  move(s, 0, 2, 3);  // F0.0 B0.0 F1.0 step0 B1.0 step1
  expect_rejected(s, "rule 4", {"stage 0 action 2 (F1.0@v1) reads version 1 before it exists"});
  // A step that claims to produce the wrong version.
  s = make_schedule("gpipe", 1, 1, 2);
  s.programs[0][2].version = 5;
  expect_rejected(s, "rule 4", {"(step0->v5) must have micro -1 and version 1"});
  // A 2bw stream whose step 0 is delayed past the forward of batch 2, which reads W(1).
  s = make_schedule("2bw", 2, 2, 3);
  move(s, 0, find(s, 0, Op::step, 0, -1), find(s, 0, Op::backward, 1, 1));
  expect_rejected(s, "rule 4", {"(F2.0@v1) reads version 1 before it exists"});
}

TEST(Validate, Rule5VersionsAlive) {
  // The named limits are implied by rules 1, 2 and 4, so rule 5 bites when a tighter budget is given: 2bw keeps
  // two versions on every stage.
  Schedule s = make_schedule("2bw", 2, 2, 3);
  expect_rejected(s, "rule 5", {"stage 0", "needs 2 weight versions alive, the limit is 1 (max_versions)"}, 1);
  EXPECT_NO_THROW(validate(s, 2));
  // pipedream needs p versions on stage 0: fine under its own limit, rejected with p-1.
  s = make_schedule("pipedream", 4, 4, 8);
  EXPECT_NO_THROW(validate(s));
  expect_rejected(s, "rule 5", {"stage 0", "needs 4 weight versions alive, the limit is 3"}, 3);
  // The last stage of 2bw needs the shadow version with no backward pending: just before F1.0, after step 0.
  s = make_schedule("2bw", 2, 2, 3);
  const auto alive = versions_alive(s.programs[1]);
  const size_t f10 = find(s, 1, Op::forward, 1, 0);
  EXPECT_EQ(alive[f10], 2);
  EXPECT_EQ(s.programs[1][f10 - 2].op, Op::step);
  EXPECT_EQ(alive[f10 - 2], 1);  // before step 0: only W(0) exists
}

TEST(Validate, GeneratedSchedulesStayValidThroughCsv) {
  for (const std::string& name : schedule_names()) {
    const Schedule s = make_schedule(name, 3, 4, 5, name == "sync_start" ? 2 : 0);
    EXPECT_NO_THROW(validate(from_csv(to_csv(s)))) << name;
  }
}
