// Schedule generators, version rules, text and CSV forms.
#include <gtest/gtest.h>

#include <map>
#include <set>
#include <string>
#include <vector>

#include "core/error.h"
#include "pipeline/schedule.h"

using namespace onestep;
using namespace onestep::pipeline;

namespace {

// Runs f and returns the bad_input message (fails the test if f does not throw a bad_input Error).
template <class F>
std::string bad_input_message(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::bad_input) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "expected a bad_input error";
  return "";
}

bool valid_combo(const std::string& name, int p, int m, int64_t batches, int64_t K) {
  if (name == "2bw") return m >= p;
  if (name == "sync_start") return batches <= K || m >= p;
  return true;
}

struct Sweep {
  std::string name;
  int p, m;
  int64_t batches, K;
  int lookahead;
};

std::vector<Sweep> sweep() {
  std::vector<Sweep> out;
  for (const std::string& name : schedule_names())
    for (int p = 1; p <= 4; ++p)
      for (int m = 1; m <= 8; ++m)
        for (int64_t batches : {1, 3}) {
          std::vector<int64_t> Ks = {0};
          if (name == "sync_start") Ks = {0, 1, 2, 5};
          for (int64_t K : Ks)
            for (int lookahead : {0, 1, 2})
              if (valid_combo(name, p, m, batches, K)) out.push_back({name, p, m, batches, K, lookahead});
        }
  return out;
}

std::string stage_text(const Schedule& s, int stage) {
  std::string out;
  for (const Action& a : s.programs[stage]) {
    if (!out.empty()) out += ' ';
    out += action_token(a);
  }
  return out;
}

}  // namespace

TEST(Schedule, VersionRules) {
  // gpipe / 1f1b: g.
  for (int64_t g : {0, 1, 7}) {
    EXPECT_EQ(version_for("gpipe", g, 0, 4, 0), g);
    EXPECT_EQ(version_for("1f1b", g, 3, 4, 0), g);
  }
  // 2bw: max(g-1, 0) on every stage (batches 0 and 1 both read W(0)).
  EXPECT_EQ(version_for("2bw", 0, 0, 4, 0), 0);
  EXPECT_EQ(version_for("2bw", 1, 2, 4, 0), 0);
  EXPECT_EQ(version_for("2bw", 5, 3, 4, 0), 4);
  // pipedream: max(g - (p-1-s), 0).
  EXPECT_EQ(version_for("pipedream", 5, 0, 4, 0), 2);
  EXPECT_EQ(version_for("pipedream", 5, 1, 4, 0), 3);
  EXPECT_EQ(version_for("pipedream", 5, 3, 4, 0), 5);
  EXPECT_EQ(version_for("pipedream", 1, 0, 4, 0), 0);
  // sync_start: g < K ? g : max(g-1, 0).
  EXPECT_EQ(version_for("sync_start", 2, 1, 4, 3), 2);
  EXPECT_EQ(version_for("sync_start", 3, 1, 4, 3), 2);
  EXPECT_EQ(version_for("sync_start", 4, 1, 4, 3), 3);
  EXPECT_EQ(version_for("sync_start", 0, 1, 4, 0), 0);  // K = 0 is 2bw
  EXPECT_EQ(version_for("sync_start", 6, 1, 4, 0), version_for("2bw", 6, 1, 4, 0));

  EXPECT_EQ(max_versions_alive("gpipe", 4), 1);
  EXPECT_EQ(max_versions_alive("1f1b", 4), 1);
  EXPECT_EQ(max_versions_alive("2bw", 4), 2);
  EXPECT_EQ(max_versions_alive("sync_start", 4), 2);
  EXPECT_EQ(max_versions_alive("pipedream", 4), 4);

  EXPECT_NE(bad_input_message([] { version_for("zero_bubble", 0, 0, 2, 0); }).find("unknown schedule 'zero_bubble'"),
            std::string::npos);
  bad_input_message([] { version_for("2bw", 0, 2, 2, 0); });   // stage out of range
  bad_input_message([] { version_for("2bw", -1, 0, 2, 0); });  // negative batch
}

TEST(Schedule, GeneratorArgumentsAreChecked) {
  EXPECT_NE(bad_input_message([] { make_schedule("2bw", 4, 3, 2); }).find("2bw needs micro_batches (m) >= stages (p)"),
            std::string::npos);
  EXPECT_NE(bad_input_message([] { make_schedule("sync_start", 4, 3, 3, 2); })
                .find("sync_start needs micro_batches (m) >= stages (p)"),
            std::string::npos);
  EXPECT_NO_THROW(make_schedule("sync_start", 4, 3, 2, 2));  // all batches synchronous: 1f1b needs no m >= p
  EXPECT_NO_THROW(make_schedule("pipedream", 4, 1, 5));      // original PipeDream: one micro-batch per step
  std::string msg = bad_input_message([] { make_schedule("gpipe", 0, 1, 1); });
  EXPECT_EQ(msg.rfind("schedule gpipe: ", 0), 0u) << msg;
  bad_input_message([] { make_schedule("1f1b", 2, 0, 1); });
  bad_input_message([] { make_schedule("1f1b", 2, 2, 0); });
  bad_input_message([] { make_schedule("1f1b", 2, 2, 1, 1); });  // K only for sync_start
  bad_input_message([] { make_schedule("sync_start", 2, 2, 1, -1); });
  bad_input_message([] { make_schedule("interleaved", 2, 2, 1); });
}

// Every generator for p in 1..4, m in 1..8, batches in {1, 3}, lookahead 0..2: validates, has the right
// counts, round-trips.
TEST(Schedule, SweepValidatesCountsAndRoundTrips) {
  int checked = 0;
  for (const Sweep& c : sweep()) {
    SCOPED_TRACE(c.name + " p=" + std::to_string(c.p) + " m=" + std::to_string(c.m) +
                 " batches=" + std::to_string(c.batches) + " K=" + std::to_string(c.K) +
                 " lookahead=" + std::to_string(c.lookahead));
    const Schedule s = make_schedule(c.name, c.p, c.m, c.batches, c.K, c.lookahead);
    ASSERT_EQ(s.programs.size(), static_cast<size_t>(c.p));
    EXPECT_NO_THROW(validate(s));
    const int64_t n = c.batches * c.m;
    for (int st = 0; st < c.p; ++st) {
      std::map<Op, int64_t> count;
      for (const Action& a : s.programs[st]) ++count[a.op];
      EXPECT_EQ(count[Op::forward], n);
      EXPECT_EQ(count[Op::backward], n);
      EXPECT_EQ(count[Op::step], c.batches);
      EXPECT_EQ(count[Op::recv_act], st > 0 ? n : 0);
      EXPECT_EQ(count[Op::send_grad], st > 0 ? n : 0);
      EXPECT_EQ(count[Op::send_act], st < c.p - 1 ? n : 0);
      EXPECT_EQ(count[Op::recv_grad], st < c.p - 1 ? n : 0);
      EXPECT_EQ(s.programs[st].back().op, Op::step);
      EXPECT_EQ(s.programs[st].back().batch, c.batches - 1);
    }
    const Schedule back = from_csv(to_csv(s));
    EXPECT_EQ(back, s);
    EXPECT_EQ(to_csv(back), to_csv(s));
    // Memory: the named limit holds and is reached where it should be.
    const auto versions = peak_versions_alive(s);
    const auto acts = peak_activations(s);
    for (int st = 0; st < c.p; ++st) {
      EXPECT_LE(versions[st], max_versions_alive(c.name, c.p));
      if (c.name == "gpipe") {
        EXPECT_EQ(acts[st], c.m);
      }
      if (c.name == "1f1b") {  // p - s in flight, plus the lookahead on every stage but the last
        EXPECT_EQ(acts[st], std::min(c.p - st + (st < c.p - 1 ? c.lookahead : 0), c.m));
      }
      if (c.name == "gpipe" || c.name == "1f1b") {
        EXPECT_EQ(versions[st], 1);
      }
      if (c.name == "2bw" && c.batches >= 3) {
        EXPECT_EQ(versions[st], 2);
      }
    }
    ++checked;
  }
  EXPECT_GT(checked, 600);
}

TEST(Schedule, OneFOneBExactOrder) {
  const Schedule s = make_schedule("1f1b", 2, 3, 1);
  EXPECT_EQ(stage_text(s, 0),
            "F0.0@v0 sendA0.0->s1 F0.1@v0 sendA0.1->s1 recvG0.0<-s1 B0.0@v0 F0.2@v0 sendA0.2->s1 recvG0.1<-s1 "
            "B0.1@v0 recvG0.2<-s1 B0.2@v0 step0->v1");
  EXPECT_EQ(stage_text(s, 1),
            "recvA0.0<-s0 F0.0@v0 B0.0@v0 sendG0.0->s0 recvA0.1<-s0 F0.1@v0 B0.1@v0 sendG0.1->s0 recvA0.2<-s0 "
            "F0.2@v0 B0.2@v0 sendG0.2->s0 step0->v1");
}

TEST(Schedule, GPipeExactOrder) {
  const Schedule s = make_schedule("gpipe", 2, 2, 2);
  EXPECT_EQ(stage_text(s, 0),
            "F0.0@v0 sendA0.0->s1 F0.1@v0 sendA0.1->s1 recvG0.0<-s1 B0.0@v0 recvG0.1<-s1 B0.1@v0 step0->v1 "
            "F1.0@v1 sendA1.0->s1 F1.1@v1 sendA1.1->s1 recvG1.0<-s1 B1.0@v1 recvG1.1<-s1 B1.1@v1 step1->v2");
}

// 2BW: no flush; the step sits right after the backward of the batch's last micro-batch; versions g-1.
TEST(Schedule, TwoBWStreamsAcrossBatches) {
  const Schedule s = make_schedule("2bw", 2, 2, 3);
  // Stage 0: one warm-up forward at the very start, then F/B pairs straight across batch boundaries.
  auto compute_only = [&](int st) {
    std::string out;
    for (const Action& a : s.programs[st])
      if (a.op == Op::forward || a.op == Op::backward || a.op == Op::step) {
        if (!out.empty()) out += ' ';
        out += action_token(a);
      }
    return out;
  };
  EXPECT_EQ(compute_only(0),
            "F0.0@v0 F0.1@v0 B0.0@v0 F1.0@v0 B0.1@v0 step0->v1 F1.1@v0 B1.0@v0 F2.0@v1 B1.1@v0 step1->v2 "
            "F2.1@v1 B2.0@v1 B2.1@v1 step2->v3");
  EXPECT_EQ(compute_only(1),
            "F0.0@v0 B0.0@v0 F0.1@v0 B0.1@v0 step0->v1 F1.0@v0 B1.0@v0 F1.1@v0 B1.1@v0 step1->v2 "
            "F2.0@v1 B2.0@v1 F2.1@v1 B2.1@v1 step2->v3");
  // The last stage needs the shadow W(0) for batch 1 after step 0 produced W(1): two versions alive with no
  // backward pending.
  const auto alive = versions_alive(s.programs[1]);
  EXPECT_EQ(*std::max_element(alive.begin(), alive.end()), 2);
  // The pipedream order is the same, only the versions differ.
  const Schedule pd = make_schedule("pipedream", 2, 2, 3);
  for (int st = 0; st < 2; ++st) {
    ASSERT_EQ(pd.programs[st].size(), s.programs[st].size());
    for (size_t i = 0; i < pd.programs[st].size(); ++i) {
      Action a = pd.programs[st][i], b = s.programs[st][i];
      a.version = b.version = 0;
      EXPECT_EQ(a, b);
    }
  }
}

TEST(Schedule, PipeDreamVersionsAliveReachStageDepth) {
  const int p = 4;
  const Schedule s = make_schedule("pipedream", p, 4, 8);
  validate(s);
  const auto v = peak_versions_alive(s);
  for (int st = 0; st < p; ++st) EXPECT_EQ(v[st], p - st) << "stage " << st;
}

TEST(Schedule, SyncStartFlushesThenStreams) {
  const Schedule s = make_schedule("sync_start", 2, 2, 4, 2);
  validate(s);
  const Schedule f = make_schedule("1f1b", 2, 2, 2);
  const Schedule t = make_schedule("2bw", 2, 2, 2);
  for (int st = 0; st < 2; ++st) {
    // First K = 2 batches: exactly the 1f1b program.
    std::vector<Action> head(s.programs[st].begin(), s.programs[st].begin() + f.programs[st].size());
    EXPECT_EQ(head, f.programs[st]);
    // The rest: the 2bw stream over batches 2, 3 (batch indices and versions shifted by 2).
    std::vector<Action> tail(s.programs[st].begin() + f.programs[st].size(), s.programs[st].end());
    ASSERT_EQ(tail.size(), t.programs[st].size());
    for (size_t i = 0; i < tail.size(); ++i) {
      Action a = t.programs[st][i];
      a.batch += 2;
      if (a.version >= 0) a.version += 2;
      if (a.op == Op::forward || a.op == Op::backward) a.version = a.batch - 1;
      EXPECT_EQ(tail[i], a) << i;
    }
  }
  EXPECT_EQ(peak_versions_alive(s), (std::vector<int>{2, 2}));
}

// Lookahead: stages but the last start L more forwards before their first backward and keep L more
// micro-batches in flight; the last stage and pipedream keep the textbook order; the actions are the same.
TEST(Schedule, LookaheadRunsAheadWithTheSameActions) {
  const Schedule base = make_schedule("2bw", 3, 4, 3, 0, 0), ahead = make_schedule("2bw", 3, 4, 3, 0, 1);
  EXPECT_EQ(ahead.lookahead, 1);
  auto forwards_before_first_backward = [](const std::vector<Action>& prog) {
    int n = 0;
    for (const Action& a : prog) {
      if (a.op == Op::backward) break;
      n += a.op == Op::forward;
    }
    return n;
  };
  const int want_base[] = {3, 2, 1}, want_ahead[] = {4, 3, 1};
  for (int st = 0; st < 3; ++st) {
    EXPECT_EQ(forwards_before_first_backward(base.programs[st]), want_base[st]) << st;
    EXPECT_EQ(forwards_before_first_backward(ahead.programs[st]), want_ahead[st]) << st;
    std::multiset<std::string> a, b;
    for (const Action& x : base.programs[st]) a.insert(action_token(x));
    for (const Action& x : ahead.programs[st]) b.insert(action_token(x));
    EXPECT_EQ(a, b) << st;
  }
  EXPECT_EQ(ahead.programs[2], base.programs[2]);
  EXPECT_EQ(peak_activations(ahead), (std::vector<int>{4, 3, 1}));
  EXPECT_EQ(peak_activations(base), (std::vector<int>{3, 2, 1}));
  EXPECT_EQ(peak_versions_alive(ahead), (std::vector<int>{2, 2, 2}));
  EXPECT_NO_THROW(validate(ahead));
  // pipedream ignores it (with m = 1 its older versions would not exist yet).
  EXPECT_EQ(make_schedule("pipedream", 3, 1, 4, 0, 2).programs, make_schedule("pipedream", 3, 1, 4, 0, 0).programs);
  const std::string msg = bad_input_message([] { make_schedule("2bw", 2, 2, 1, 0, -1); });
  EXPECT_NE(msg.find("lookahead must be >= 0"), std::string::npos) << msg;
}

TEST(Schedule, TextForm) {
  const std::string t = to_text(make_schedule("1f1b", 2, 1, 1));
  EXPECT_EQ(t,
            "schedule 1f1b: stages=2 micro_batches=1 batches=1 sync_start_steps=0 lookahead=0\n"
            "stage 0: F0.0@v0 sendA0.0->s1 recvG0.0<-s1 B0.0@v0 step0->v1\n"
            "stage 1: recvA0.0<-s0 F0.0@v0 B0.0@v0 sendG0.0->s0 step0->v1\n");
}

TEST(Schedule, CsvFormAndErrors) {
  const Schedule s = make_schedule("2bw", 2, 2, 1);
  const std::string csv = to_csv(s);
  EXPECT_EQ(csv.substr(0, csv.find("0,1,")),
            "# onestep pipeline schedule v1\n"
            "# name=2bw,stages=2,micro_batches=2,batches=1,sync_start_steps=0,lookahead=0\n"
            "stage,index,op,batch,micro,version,peer\n"
            "0,0,forward,0,0,0,-1\n");
  // A file written before lookahead existed reads as lookahead 0; a lookahead round-trips.
  std::string old = csv;
  old.replace(old.find(",lookahead=0"), 12, "");
  EXPECT_EQ(from_csv(old), s);
  const Schedule ahead = make_schedule("2bw", 3, 4, 2, 0, 2);
  EXPECT_EQ(from_csv(to_csv(ahead)), ahead);
  // CRLF line ends are accepted.
  std::string crlf;
  for (char ch : csv) crlf += ch == '\n' ? std::string("\r\n") : std::string(1, ch);
  EXPECT_EQ(from_csv(crlf), s);

  auto replace = [&](std::string text, const std::string& from, const std::string& to) {
    text.replace(text.find(from), from.size(), to);
    return text;
  };
  auto expect_error = [&](const std::string& bad, const std::string& needle) {
    const std::string msg = bad_input_message([&] { from_csv(bad); });
    EXPECT_EQ(msg.rfind("schedule csv: ", 0), 0u) << msg;
    EXPECT_NE(msg.find(needle), std::string::npos) << msg;
  };
  expect_error("", "line 1: expected '# onestep pipeline schedule v1'");
  expect_error(replace(csv, "lookahead=0", "lookahead=-1"), "line 2: lookahead must be >= 0 (got -1)");
  expect_error(replace(csv, "0,0,forward", "0,0,fwd"), "line 4: unknown op 'fwd'");
  expect_error(replace(csv, "0,0,forward,0,0,0,-1", "0,0,forward,0,x,0,-1"), "line 4: micro 'x' is not an integer");
  expect_error(replace(csv, "0,0,forward,0,0,0,-1", "0,0,forward,0,0,0"), "line 4: expected 7 fields");
  expect_error(replace(csv, "0,0,forward", "0,3,forward"), "line 4: index 3 of stage 0 should be 0");
  expect_error(replace(csv, "0,0,forward", "2,0,forward"), "line 4: stage 2 is out of range");
  expect_error(replace(csv, ",batches=1", ""), "line 2: metadata lacks batches");
  expect_error(replace(csv, "stage,index", "stage,idx"), "line 3: expected the header");
  // from_csv parses; validate judges.
  const Schedule edited = from_csv(replace(csv, "0,0,forward,0,0,0,-1", "0,0,forward,0,0,1,-1"));
  EXPECT_NE(bad_input_message([&] { validate(edited); }).find("rule 2"), std::string::npos);
}
