// The discrete-event simulator: bubbles, steady state, memory peaks, link costs, the Chrome trace.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <set>
#include <string>

#include "core/error.h"
#include "pipeline/simulator.h"

using namespace onestep;
using namespace onestep::pipeline;

// With F = B = 1 and free steps and links, one flushed batch takes 2(m+p-1) units of which each stage is busy 2m:
// the bubble fraction is (p-1)/(m+p-1) for GPipe and 1F1B alike, and flushed batches just repeat.
TEST(Simulate, FlushedBubbleFractionMatchesTheModel) {
  for (const std::string name : {"gpipe", "1f1b"})
    for (int p = 1; p <= 4; ++p)
      for (int m = 1; m <= 8; ++m)
        for (int64_t batches : {1, 3}) {
          SCOPED_TRACE(name + " p=" + std::to_string(p) + " m=" + std::to_string(m) + " b=" + std::to_string(batches));
          const Schedule s = make_schedule(name, p, m, batches);
          const SimResult r = simulate(s, uniform_costs(1, 1));
          EXPECT_DOUBLE_EQ(r.makespan, 2.0 * (m + p - 1) * batches);
          const double bubble = static_cast<double>(p - 1) / (m + p - 1);
          for (int st = 0; st < p; ++st) {
            EXPECT_DOUBLE_EQ(r.busy[st], 2.0 * m * batches);
            EXPECT_NEAR(r.idle[st] / r.makespan, bubble, 1e-9);
          }
          EXPECT_EQ(r.timeline.size(), [&] {
            size_t n = 0;
            for (const auto& prog : s.programs) n += prog.size();
            return n;
          }());
        }
}

// 2BW never flushes: each stage idles 2(p-1) units in total (fill and drain), however many batches run, so the
// idle fraction (p-1)/(batches*m + p-1) tends to zero; between fill and drain there is no gap at all.
TEST(Simulate, TwoBWHasNoBubbleInSteadyState) {
  const int p = 4, m = 4;
  double last_fraction = 1.0;
  for (int64_t batches : {1, 10, 100}) {
    const Schedule s = make_schedule("2bw", p, m, batches);
    const SimResult r = simulate(s, uniform_costs(1, 1));
    const int64_t n = batches * m;
    EXPECT_DOUBLE_EQ(r.makespan, 2.0 * (n + p - 1));
    for (int st = 0; st < p; ++st) {
      EXPECT_DOUBLE_EQ(r.idle[st], 2.0 * (p - 1)) << "batches " << batches << " stage " << st;
      EXPECT_NEAR(r.idle[st] / r.makespan, static_cast<double>(p - 1) / (n + p - 1), 1e-12);
    }
    const double fraction = r.idle[0] / r.makespan;
    EXPECT_LT(fraction, last_fraction);
    last_fraction = fraction;
  }
  EXPECT_LT(last_fraction, 0.008);
  // Steady state: on each stage, from the start of its first backward to the end of its last forward, compute
  // runs back to back (the idle time is all in the fill and the drain).
  const Schedule s = make_schedule("2bw", p, m, 20);
  const SimResult r = simulate(s, uniform_costs(1, 1));
  for (int st = 0; st < p; ++st) {
    double first_b = -1, last_f = 0;
    for (const TimedAction& t : r.timeline) {
      if (t.stage != st) continue;
      if (t.a.op == Op::backward && first_b < 0) first_b = t.start;
      if (t.a.op == Op::forward) last_f = t.end;
    }
    double busy = 0;
    for (const TimedAction& t : r.timeline)
      if (t.stage == st && (t.a.op == Op::forward || t.a.op == Op::backward) && t.start >= first_b && t.end <= last_f)
        busy += t.end - t.start;
    EXPECT_GT(last_f - first_b, 150);
    EXPECT_DOUBLE_EQ(last_f - first_b, busy) << "stage " << st << " has a gap in its steady state";
  }
  // Against the flushed 1F1B of the same work: 2BW is faster by the (batches-1) flushes it skips.
  const SimResult flushed = simulate(make_schedule("1f1b", p, m, 20), uniform_costs(1, 1));
  EXPECT_DOUBLE_EQ(flushed.makespan - r.makespan, 19 * 2.0 * (p - 1));
  // Sync start pays the flushes only during its first K steps.
  const SimResult ss = simulate(make_schedule("sync_start", p, m, 20, 5), uniform_costs(1, 1));
  EXPECT_DOUBLE_EQ(ss.makespan, 5 * 2.0 * (m + p - 1) + 2.0 * (15 * m + p - 1));
}

TEST(Simulate, PeakActivationsAndVersions) {
  for (int p = 1; p <= 4; ++p)
    for (int m = 1; m <= 8; ++m) {
      const SimResult one = simulate(make_schedule("1f1b", p, m, 3), uniform_costs(1, 2));
      const SimResult gp = simulate(make_schedule("gpipe", p, m, 3), uniform_costs(1, 2));
      EXPECT_LE(one.peak_activations[0], p);
      EXPECT_EQ(one.peak_activations[0], std::min(p, m));
      EXPECT_EQ(one.peak_activations[p - 1], 1);
      for (int st = 0; st < p; ++st) {
        EXPECT_EQ(gp.peak_activations[st], m);
        EXPECT_EQ(gp.peak_versions[st], 1);
        EXPECT_EQ(one.peak_versions[st], 1);
      }
    }
  const SimResult tbw = simulate(make_schedule("2bw", 4, 4, 6), uniform_costs(1, 2));
  EXPECT_EQ(tbw.peak_versions, (std::vector<int>{2, 2, 2, 2}));
  EXPECT_EQ(tbw.peak_activations, (std::vector<int>{4, 3, 2, 1}));
  const SimResult pd = simulate(make_schedule("pipedream", 4, 4, 6), uniform_costs(1, 2));
  EXPECT_EQ(pd.peak_versions, (std::vector<int>{4, 3, 2, 1}));
}

TEST(Simulate, LinkCostsAndPerStageCosts) {
  // p=2, m=1 gpipe: F on s0 (1), link, F on s1 (1), B on s1 (1), link, B on s0 (1), then the steps.
  Costs c = uniform_costs(1, 1, 0.25);
  c.latency_s = 0.5;
  c.act_bytes = 1e6;
  c.bandwidth_Bps = 4e6;  // link = 0.5 + 0.25
  const Schedule s = make_schedule("gpipe", 2, 1, 1);
  SimResult r = simulate(s, c);
  EXPECT_DOUBLE_EQ(r.makespan, 1 + 0.75 + 1 + 1 + 0.75 + 1 + 0.25);
  EXPECT_DOUBLE_EQ(r.busy[0], 2.25);
  EXPECT_DOUBLE_EQ(r.idle[0], r.makespan - 2.25);
  // Stage 1's step ends at 1 + 0.75 + 1 + 1 + 0.25; its recv waited 1.75.
  for (const TimedAction& t : r.timeline) {
    if (t.stage == 1 && t.a.op == Op::recv_act) {
      EXPECT_DOUBLE_EQ(t.end - t.start, 1.75);
    }
    if (t.stage == 1 && t.a.op == Op::step) {
      EXPECT_DOUBLE_EQ(t.end, 4.0);
    }
    if (t.a.op == Op::send_act || t.a.op == Op::send_grad) {
      EXPECT_EQ(t.start, t.end);
    }
  }
  // Per-stage costs: the slow stage sets the pace of a long 2bw stream.
  Costs slow;
  slow.forward = {1, 3};
  slow.backward = {1, 3};
  r = simulate(make_schedule("2bw", 2, 2, 10), slow);
  EXPECT_DOUBLE_EQ(r.busy[1], 6.0 * 20);
  EXPECT_GE(r.makespan, r.busy[1]);
  EXPECT_LT(r.makespan, r.busy[1] + 6);
  // Timeline is sorted by start time.
  for (size_t i = 1; i < r.timeline.size(); ++i) EXPECT_LE(r.timeline[i - 1].start, r.timeline[i].start);
}

TEST(Simulate, RejectsBadCostsAndDeadlocks) {
  const Schedule s = make_schedule("1f1b", 3, 2, 1);
  Costs c = uniform_costs(1, 1);
  c.forward = {1, 2};
  EXPECT_THROW(simulate(s, c), Error);
  c = uniform_costs(-1, 1);
  EXPECT_THROW(simulate(s, c), Error);
  c = uniform_costs(1, 1);
  c.bandwidth_Bps = 0;
  EXPECT_THROW(simulate(s, c), Error);
  Schedule dead = make_schedule("gpipe", 2, 1, 1);
  std::swap(dead.programs[0][0], dead.programs[0][2]);  // recvG before F and sendA
  try {
    simulate(dead, uniform_costs(1, 1));
    FAIL() << "expected a deadlock";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::bad_input);
    EXPECT_NE(std::string(e.what()).find("deadlock"), std::string::npos) << e.what();
  }
}

TEST(Simulate, ChromeTrace) {
  const Schedule s = make_schedule("1f1b", 3, 2, 2);
  const SimResult r = simulate(s, uniform_costs(0.001, 0.002));
  const auto doc = nlohmann::json::parse(to_chrome_trace(s, r));
  ASSERT_TRUE(doc.contains("traceEvents"));
  size_t x = 0;
  std::set<std::string> names;
  std::set<int> threads;
  for (const auto& e : doc["traceEvents"]) {
    if (e["ph"] != "X") continue;
    ++x;
    EXPECT_EQ(e["pid"], 0);
    const int tid = e["tid"];
    EXPECT_TRUE(tid >= 0 && tid < 3);
    threads.insert(tid);
    EXPECT_GE(e["dur"].get<double>(), 0.0);
    names.insert(e["name"].get<std::string>());
  }
  EXPECT_EQ(x, r.timeline.size());
  EXPECT_EQ(threads.size(), 3u);
  for (const char* n : {"F0.0", "B1.1", "sendA0.1", "recvA1.0", "sendG0.0", "recvG1.1", "step1"})
    EXPECT_TRUE(names.count(n)) << n;
  // Forward F0.0 on stage 0 lasts 1 ms = 1000 us.
  for (const auto& e : doc["traceEvents"])
    if (e["ph"] == "X" && e["name"] == "F0.0" && e["tid"] == 0) {
      EXPECT_NEAR(e["dur"].get<double>(), 1000.0, 1e-6);
    }
}
