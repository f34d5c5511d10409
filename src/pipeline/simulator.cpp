#include "pipeline/simulator.h"

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"

namespace onestep::pipeline {

Costs uniform_costs(double forward, double backward, double step) {
  Costs c;
  c.forward = {forward};
  c.backward = {backward};
  c.step = {step};
  return c;
}

namespace {

// Per-stage cost table from a vector of size 0 (zero), 1 (broadcast) or p.
std::vector<double> expand(const std::vector<double>& v, int p, const char* what) {
  if (v.size() != 0 && v.size() != 1 && v.size() != static_cast<size_t>(p))
    bad_input("pipeline costs", std::string(what) + " has " + std::to_string(v.size()) +
                                    " entries; expected 0, 1 or stages (" + std::to_string(p) + ")");
  std::vector<double> out(p, v.empty() ? 0.0 : v[0]);
  if (v.size() == static_cast<size_t>(p)) out = v;
  for (double x : out)
    if (!(x >= 0) || !std::isfinite(x))
      bad_input("pipeline costs", std::string(what) + " must be finite and >= 0 (got " + std::to_string(x) + ")");
  return out;
}

// "F3.1", "B3.1", "sendA3.1", "recvA3.1", "sendG3.1", "recvG3.1", "step3".
std::string event_name(const Action& a) {
  const char* tag[] = {"F", "B", "sendA", "recvA", "sendG", "recvG", "step"};
  std::ostringstream o;
  o << tag[static_cast<int>(a.op)] << a.batch;
  if (a.op != Op::step) o << '.' << a.micro;
  return o.str();
}

}  // namespace

SimResult simulate(const Schedule& s, const Costs& c) {
  const std::string where = "schedule " + s.name;
  const int p = s.stages;
  const int m = s.micro_batches;
  if (p < 1 || m < 1 || s.batches < 0 || s.programs.size() != static_cast<size_t>(p))
    bad_input(where, "simulate: malformed schedule (stages, micro_batches or programs)");
  const auto fwd = expand(c.forward, p, "forward"), bwd = expand(c.backward, p, "backward"),
             stp = expand(c.step, p, "step");
  if (!(c.latency_s >= 0) || !(c.bandwidth_Bps > 0) || !(c.act_bytes >= 0))
    bad_input("pipeline costs", "need latency_s >= 0, bandwidth_Bps > 0, act_bytes >= 0");
  const double link = c.latency_s + c.act_bytes / c.bandwidth_Bps;

  const int64_t n_mb = s.batches * m;
  // sent[kind][stage][k]: issue time of the send of (batch, micro) k from `stage`, NaN until issued.
  std::vector<std::vector<double>> sent[2];
  for (auto& v : sent) v.assign(p, std::vector<double>(n_mb, std::nan("")));

  SimResult r;
  r.busy.assign(p, 0.0);
  std::vector<double> clock(p, 0.0);
  std::vector<size_t> pc(p, 0);
  struct Rec {
    TimedAction t;
    size_t index;
  };
  std::vector<Rec> recs;
  for (bool progress = true; progress;) {
    progress = false;
    for (int st = 0; st < p; ++st) {
      const auto& prog = s.programs[st];
      for (; pc[st] < prog.size(); ++pc[st], progress = true) {
        const Action& a = prog[pc[st]];
        const bool comm = a.op != Op::forward && a.op != Op::backward && a.op != Op::step;
        if (comm && (a.peer < 0 || a.peer >= p || a.batch < 0 || a.batch >= s.batches || a.micro < 0 || a.micro >= m))
          bad_input(where, "simulate: stage " + std::to_string(st) + " action " + std::to_string(pc[st]) + " (" +
                               action_token(a) + ") has a peer or (batch, micro) out of range");
        const int64_t k = a.batch * m + a.micro;
        const double t0 = clock[st];
        double t1 = t0;
        if (a.op == Op::recv_act || a.op == Op::recv_grad) {
          const double at = sent[a.op == Op::recv_act ? 0 : 1][a.peer][k];
          if (std::isnan(at)) break;  // blocked: the matching send has not been issued yet
          t1 = std::max(t0, at + link);
        } else if (a.op == Op::send_act || a.op == Op::send_grad) {
          sent[a.op == Op::send_act ? 0 : 1][st][k] = t0;  // buffered: costs the sender nothing
        } else {
          const double cost = a.op == Op::forward ? fwd[st] : a.op == Op::backward ? bwd[st] : stp[st];
          t1 = t0 + cost;
          r.busy[st] += cost;
        }
        clock[st] = t1;
        recs.push_back({{st, a, t0, t1}, pc[st]});
      }
    }
  }
  for (int st = 0; st < p; ++st)
    if (pc[st] < s.programs[st].size())
      bad_input(where, "simulate: deadlock: stage " + std::to_string(st) + " action " + std::to_string(pc[st]) + " (" +
                           action_token(s.programs[st][pc[st]]) + ") waits for a send that never comes");

  r.makespan = p > 0 ? *std::max_element(clock.begin(), clock.end()) : 0.0;
  r.idle.resize(p);
  for (int st = 0; st < p; ++st) r.idle[st] = r.makespan - r.busy[st];
  r.peak_activations = peak_activations(s);
  r.peak_versions = peak_versions_alive(s);
  std::stable_sort(recs.begin(), recs.end(), [](const Rec& x, const Rec& y) {
    if (x.t.start != y.t.start) return x.t.start < y.t.start;
    if (x.t.stage != y.t.stage) return x.t.stage < y.t.stage;
    return x.index < y.index;
  });
  r.timeline.reserve(recs.size());
  for (const Rec& x : recs) r.timeline.push_back(x.t);
  return r;
}

std::string to_chrome_trace(const Schedule& s, const SimResult& r) {
  nlohmann::json events = nlohmann::json::array();
  events.push_back({{"name", "process_name"}, {"ph", "M"}, {"pid", 0}, {"tid", 0},
                    {"args", {{"name", "onestep pipeline " + s.name}}}});
  for (int st = 0; st < s.stages; ++st)
    events.push_back({{"name", "thread_name"}, {"ph", "M"}, {"pid", 0}, {"tid", st},
                      {"args", {{"name", "stage " + std::to_string(st)}}}});
  for (const TimedAction& t : r.timeline) {
    nlohmann::json args = {{"batch", t.a.batch}, {"micro", t.a.micro}, {"version", t.a.version}};
    if (t.a.peer >= 0) args["peer"] = t.a.peer;
    events.push_back({{"name", event_name(t.a)},
                      {"cat", op_name(t.a.op)},
                      {"ph", "X"},
                      {"pid", 0},
                      {"tid", t.stage},
                      {"ts", t.start * 1e6},
                      {"dur", (t.end - t.start) * 1e6},
                      {"args", args}});
  }
  nlohmann::json doc = {{"traceEvents", events}, {"displayTimeUnit", "ms"}};
  return doc.dump();
}

}  // namespace onestep::pipeline
