// Where a training step's time goes, kernel by kernel: while a profiler is active on a thread, every call the
// model makes through an ops object (CpuOps, CudaOps) is timed under its name. `onestep bench` runs one profiled
// step after the timed ones. Off (no profiler) it costs one thread-local read per call.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <type_traits>

namespace onestep {

struct OpTotal {
  int64_t calls = 0;
  double seconds = 0;
};

class OpProfiler {
 public:
  virtual ~OpProfiler() = default;
  virtual int begin(const char* op) = 0;  // returns a token for end()
  virtual void end(int token) = 0;
  // Totals by op name; waits for queued work first (the GPU's timings are read from events).
  virtual std::map<std::string, OpTotal> totals() = 0;
  // Where the device ran none of the timed ops between two consecutive ones (it waited for the host to launch,
  // or ran work no op covers), by the op that came next; call after totals(). Empty on the CPU, whose ops run
  // one after another on the host.
  virtual std::map<std::string, OpTotal> gaps_before() { return {}; }
};

// The calling thread's active profiler (null: none). ActiveOpProfiler sets it for a scope.
OpProfiler*& active_op_profiler();
class ActiveOpProfiler {
 public:
  explicit ActiveOpProfiler(OpProfiler* p) : before_(active_op_profiler()) { active_op_profiler() = p; }
  ~ActiveOpProfiler() { active_op_profiler() = before_; }
  ActiveOpProfiler(const ActiveOpProfiler&) = delete;
  ActiveOpProfiler& operator=(const ActiveOpProfiler&) = delete;

 private:
  OpProfiler* before_;
};

// Host wall-clock timing of each call (the CPU's kernels run synchronously).
std::unique_ptr<OpProfiler> make_host_op_profiler();

// A name "op: part" times a part of an op from inside it (e.g. "attention_backward: dq", one of its kernels): reports
// list it under its op, and leave it out of the sums, which the op's own time already covers.
inline bool is_op_part(const std::string& name) { return name.find(": ") != std::string::npos; }

// f() timed as op `name` when a profiler is active; returns what f returns.
template <class F>
auto profiled(const char* name, F&& f) {
  OpProfiler* p = active_op_profiler();
  if (!p) return f();
  const int token = p->begin(name);
  if constexpr (std::is_void_v<decltype(f())>) {
    f();
    p->end(token);
  } else {
    auto r = f();
    p->end(token);
    return r;
  }
}

}  // namespace onestep
