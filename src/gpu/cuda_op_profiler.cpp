// The GPU's op profiler (kernels/op_profile.h): a pair of CUDA events around each call on the calling thread's
// stream, read once the step's work has finished, so the times are the GPU's, not the host's launch times.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <string>
#include <vector>

#include "core/error.h"
#include "gpu/cuda_op_profiler.h"

namespace onestep {
namespace {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) internal_error(std::string("CUDA ") + what + ": " + cudaGetErrorString(e));
}

class CudaOpProfiler : public OpProfiler {
 public:
  ~CudaOpProfiler() override {
    for (Call& c : calls_) cudaEventDestroy(c.start), cudaEventDestroy(c.stop);
  }
  int begin(const char* op) override {
    Call c{op, nullptr, nullptr};
    check(cudaEventCreate(&c.start), "cudaEventCreate");
    check(cudaEventCreate(&c.stop), "cudaEventCreate");
    check(cudaEventRecord(c.start, cudaStreamPerThread), "cudaEventRecord");
    calls_.push_back(c);
    return static_cast<int>(calls_.size()) - 1;
  }
  void end(int token) override {
    check(cudaEventRecord(calls_[static_cast<size_t>(token)].stop, cudaStreamPerThread), "cudaEventRecord");
  }
  std::map<std::string, OpTotal> totals() override {
    check(cudaStreamSynchronize(cudaStreamPerThread), "cudaStreamSynchronize");
    std::map<std::string, OpTotal> out;
    for (const Call& c : calls_) {
      float ms = 0;
      check(cudaEventElapsedTime(&ms, c.start, c.stop), "cudaEventElapsedTime");
      OpTotal& t = out[c.op];
      t.calls += 1;
      t.seconds += ms / 1e3;
    }
    return out;
  }
  std::map<std::string, OpTotal> gaps_before() override {
    std::map<std::string, OpTotal> out;
    const Call* prev = nullptr;
    for (const Call& c : calls_) {
      if (is_op_part(c.op)) continue;  // inside its op
      if (prev) {
        float ms = 0;
        check(cudaEventElapsedTime(&ms, prev->stop, c.start), "cudaEventElapsedTime");
        OpTotal& t = out[c.op];
        t.calls += 1;
        t.seconds += std::max(0.0f, ms) / 1e3;
      }
      prev = &c;
    }
    return out;
  }

 private:
  struct Call {
    const char* op;
    cudaEvent_t start, stop;
  };
  std::vector<Call> calls_;
};

}  // namespace

std::unique_ptr<OpProfiler> make_cuda_op_profiler() { return std::make_unique<CudaOpProfiler>(); }

}  // namespace onestep
