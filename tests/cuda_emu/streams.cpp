// CPU emulation of CUDA (tests/cuda_emu): streams (see streams.h).
#include "streams.h"

#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <set>
#include <thread>

#include "core/env.h"

namespace emu {
namespace {

// One stream: a worker thread and its queue (async mode only).
class Stream {
 public:
  Stream() : worker_([this] { run(); }) {}
  ~Stream() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    wake_.notify_all();
    worker_.join();  // after the queue has drained
  }
  void push(std::function<void()> op) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      ops_.push_back(std::move(op));
      ++issued_;
    }
    wake_.notify_all();
  }
  void wait() {
    std::unique_lock<std::mutex> lock(mu_);
    const uint64_t target = issued_;
    done_cv_.wait(lock, [&] { return done_ >= target; });
  }
  bool idle() {
    std::lock_guard<std::mutex> lock(mu_);
    return done_ == issued_;
  }

 private:
  void run() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      wake_.wait(lock, [&] { return stopping_ || !ops_.empty(); });
      if (ops_.empty()) return;  // stopping, and nothing left
      std::function<void()> op = std::move(ops_.front());
      ops_.pop_front();
      lock.unlock();
      op();
      lock.lock();
      ++done_;
      done_cv_.notify_all();
    }
  }
  std::mutex mu_;
  std::condition_variable wake_, done_cv_;
  std::deque<std::function<void()>> ops_;
  uint64_t issued_ = 0, done_ = 0;
  bool stopping_ = false;
  std::thread worker_;
};

std::mutex registry_mu;
std::set<Stream*>& registry() {  // every live stream, for cudaDeviceSynchronize
  static auto* r = new std::set<Stream*>;
  return *r;
}
Stream* make() {
  auto* s = new Stream;
  std::lock_guard<std::mutex> lock(registry_mu);
  registry().insert(s);
  return s;
}
void unmake(Stream* s) {
  {
    std::lock_guard<std::mutex> lock(registry_mu);
    registry().erase(s);
  }
  delete s;
}

// Each host thread's default stream (the per-thread default stream the project compiles for), made on first use
// and drained when the thread ends.
struct PerThread {
  Stream* stream = nullptr;
  ~PerThread() {
    if (stream) unmake(stream);
  }
};
thread_local PerThread per_thread;

Stream* resolve(cudaStream_t s) {
  if (s == nullptr || s == cudaStreamPerThread || s == cudaStreamLegacy) {
    if (!per_thread.stream) per_thread.stream = make();
    return per_thread.stream;
  }
  return reinterpret_cast<Stream*>(s);
}
}  // namespace

bool async_streams() {
  static const bool on = onestep::env_is("CUDA_EMU_STREAMS", "async");
  return on;
}
void enqueue(cudaStream_t s, std::function<void()> op) {
  if (async_streams()) resolve(s)->push(std::move(op));
  else op();
}
void wait_stream(cudaStream_t s) {
  if (async_streams()) resolve(s)->wait();
}
bool stream_idle(cudaStream_t s) { return !async_streams() || resolve(s)->idle(); }
void wait_all_streams() {
  if (!async_streams()) return;
  std::lock_guard<std::mutex> lock(registry_mu);  // streams made or ended meanwhile wait for this
  for (Stream* s : registry()) s->wait();
}
// A created stream's handle: in the default mode a token that is never dereferenced.
cudaStream_t create_stream() {
  return async_streams() ? reinterpret_cast<cudaStream_t>(make()) : reinterpret_cast<cudaStream_t>(new char);
}
void destroy_stream(cudaStream_t s) {
  if (async_streams()) unmake(reinterpret_cast<Stream*>(s));
  else delete reinterpret_cast<char*>(s);
}
}  // namespace emu
