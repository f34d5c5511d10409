// Discrete-event simulation of a Schedule's action lists: compute actions serialize per stage, sends are
// buffered and cost the sender nothing, a recv completes at max(when the stage reaches it, when its send was
// issued + link time). Links have no contention. Used for bubble/idle estimates and Perfetto timelines.
#pragma once
#include <string>
#include <vector>

#include "pipeline/schedule.h"

namespace onestep::pipeline {

// Per-op costs in seconds. forward/backward: per micro-batch per stage; step: per optimizer step per stage.
// Each vector has size stages, size 1 (the same for every stage) or is empty (zero). Link time of every
// send/recv pair = latency_s + act_bytes / bandwidth_Bps (activations and their gradients have the same size).
struct Costs {
  std::vector<double> forward, backward, step;
  double latency_s = 0, bandwidth_Bps = 1e30, act_bytes = 0;
};
Costs uniform_costs(double forward, double backward, double step = 0);

struct TimedAction {
  int stage;
  Action a;
  double start, end;  // seconds; a send has start == end (issue time); a recv's span is its wait
};

struct SimResult {
  double makespan = 0;
  std::vector<double> busy, idle;  // per stage: compute seconds (forward, backward, step); makespan - busy
  std::vector<int> peak_activations, peak_versions;  // per stage, as in schedule.h
  std::vector<TimedAction> timeline;                 // every action, sorted by (start, stage, program order)
};

// bad_input on bad costs or a deadlocked schedule. Does not run validate().
SimResult simulate(const Schedule& s, const Costs& c);

// Chrome trace event JSON (opens in Perfetto / chrome://tracing): one "X" event per action, pid 0,
// tid = stage, name "F3.1" (forward of batch 3 micro 1), "B3.1", "sendA3.1", "recvA3.1", "sendG3.1",
// "recvG3.1", "step3"; ts/dur in microseconds; thread names "stage s".
std::string to_chrome_trace(const Schedule& s, const SimResult& r);

}  // namespace onestep::pipeline
