#include "kernels/op_profile.h"

#include <vector>

#include "core/timer.h"

namespace onestep {

OpProfiler*& active_op_profiler() {
  thread_local OpProfiler* p = nullptr;
  return p;
}

namespace {

class HostOpProfiler : public OpProfiler {
 public:
  int begin(const char* op) override {
    open_.push_back({op, clock_.seconds()});
    return static_cast<int>(open_.size()) - 1;
  }
  void end(int token) override {
    const Open& o = open_[static_cast<size_t>(token)];
    OpTotal& t = totals_[o.op];
    t.calls += 1;
    t.seconds += clock_.seconds() - o.start;
  }
  std::map<std::string, OpTotal> totals() override { return totals_; }

 private:
  struct Open {
    const char* op;
    double start;
  };
  Stopwatch clock_;
  std::vector<Open> open_;
  std::map<std::string, OpTotal> totals_;
};

}  // namespace

std::unique_ptr<OpProfiler> make_host_op_profiler() { return std::make_unique<HostOpProfiler>(); }

}  // namespace onestep
