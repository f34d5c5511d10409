#include "pipeline/transport.h"

#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <tuple>
#include <utility>
#include <vector>

#include "core/buffer.h"
#include "core/error.h"

namespace onestep::pipeline {

uint32_t message_tag(MsgKind kind, int64_t batch, int micro) {
  // kind: 3 bits, micro-batch: 8 bits, batch modulo 2^20 (messages of one pair arrive in order, so the
  // batch only has to tell apart the few batches in flight).
  return (static_cast<uint32_t>(kind) << 28) | ((static_cast<uint32_t>(micro) & 0xffu) << 20) |
         (static_cast<uint32_t>(batch) & 0xfffffu);
}

double peer_timeout_s() {
  if (const char* v = std::getenv("ONESTEP_PEER_TIMEOUT_S")) {
    const double t = std::atof(v);
    if (t > 0) return t;
  }
  return 60.0;
}

namespace {

// A message in a mailbox. On the GPU its copies are queued on the two threads' streams, never waited for on the
// host: `ready` marks the sender's copy into it, `free_after` the receiver's copy out of it (a reuse waits for it).
struct Message {
  explicit Message(Device d) : buf(d) {}
  Message(Message&& o) noexcept { *this = std::move(o); }
  Message& operator=(Message&& o) noexcept {
    if (this != &o) {
      drop_marks();
      buf = std::move(o.buf), ready = std::exchange(o.ready, nullptr), free_after = std::exchange(o.free_after, nullptr);
    }
    return *this;
  }
  ~Message() { drop_marks(); }
  void drop_marks() {
    for (auto* m : {&ready, &free_after})
      if (*m) device_memory::drop(std::exchange(*m, nullptr));
  }
  Buffer<float> buf;
  device_memory::StreamMark ready = nullptr, free_after = nullptr;
};

// Shared mailboxes and running sums of all in-process endpoints.
struct Hub {
  Hub(int p, Device d) : stages(p), device(d) {}
  int stages;
  Device device;  // where the messages' data lives (the stages' device): copies stay on it
  std::mutex mu;
  std::condition_variable cv;
  std::map<std::tuple<int, int, uint32_t>, std::deque<Message>> boxes;  // (from, to, tag)
  std::vector<Message> spare;  // delivered messages' buffers, reused (no allocation per message)
  struct Sum {
    std::vector<double> total;
    int arrived = 0;
  };
  std::map<std::pair<uint32_t, int64_t>, Sum> sums;  // (tag, call index)
};

template <class Pred>
void wait_or_timeout(std::unique_lock<std::mutex>& lock, std::condition_variable& cv, Pred ready, const std::string& what) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(peer_timeout_s());
  if (!cv.wait_until(lock, deadline, ready))
    throw Error(ExitCode::internal, what + " within " + std::to_string(static_cast<int>(peer_timeout_s())) +
                                        " s; a peer stage died or hung");
}

class InprocSum : public PendingSum {
 public:
  InprocSum(std::shared_ptr<Hub> hub, std::pair<uint32_t, int64_t> key, int stage)
      : hub_(std::move(hub)), key_(key), stage_(stage) {}
  std::vector<double> wait() override {
    std::unique_lock<std::mutex> lock(hub_->mu);
    wait_or_timeout(lock, hub_->cv, [&] { return hub_->sums[key_].arrived >= hub_->stages; },
                    "stage " + std::to_string(stage_) + ": reduction " + std::to_string(key_.first) + " incomplete");
    Hub::Sum& s = hub_->sums[key_];
    std::vector<double> out = s.total;
    if (++s.arrived == 2 * hub_->stages) hub_->sums.erase(key_);  // everyone has read it
    return out;
  }

 private:
  std::shared_ptr<Hub> hub_;
  std::pair<uint32_t, int64_t> key_;
  int stage_;
};

class InprocTransport : public Transport {
 public:
  InprocTransport(std::shared_ptr<Hub> hub, int stage) : hub_(std::move(hub)), stage_(stage) {}
  int stage() const override { return stage_; }
  int stages() const override { return hub_->stages; }

  void send(int peer, uint32_t tag, const float* data, int64_t n) override {
    Message msg(hub_->device);
    {
      std::lock_guard<std::mutex> lock(hub_->mu);
      if (!hub_->spare.empty()) msg = std::move(hub_->spare.back()), hub_->spare.pop_back();
    }
    const size_t bytes = sizeof(float) * static_cast<size_t>(n);
    if (hub_->device == Device::cpu) {
      if (msg.buf.size() != static_cast<size_t>(n)) msg.buf.zeros(static_cast<size_t>(n));
      std::memcpy(msg.buf.data(), data, bytes);
    } else {
      if (msg.free_after) device_memory::wait(std::exchange(msg.free_after, nullptr));  // its last reader is done
      if (msg.buf.size() != static_cast<size_t>(n)) msg.buf.zeros(static_cast<size_t>(n));
      device_memory::copy_async(msg.buf.data(), data, bytes);
      msg.ready = device_memory::mark();
    }
    {
      std::lock_guard<std::mutex> lock(hub_->mu);
      hub_->boxes[{stage_, peer, tag}].push_back(std::move(msg));
    }
    hub_->cv.notify_all();
  }

  void recv(int peer, uint32_t tag, float* data, int64_t n) override {
    std::unique_lock<std::mutex> lock(hub_->mu);
    auto& box = hub_->boxes[{peer, stage_, tag}];
    wait_or_timeout(lock, hub_->cv, [&] { return !box.empty(); },
                    "stage " + std::to_string(stage_) + ": no message from stage " + std::to_string(peer) +
                        " (tag " + std::to_string(tag) + ")");
    Message& msg = box.front();
    if (static_cast<int64_t>(msg.buf.size()) != n)
      internal_error("stage " + std::to_string(stage_) + ": message of " + std::to_string(msg.buf.size()) +
                     " floats, expected " + std::to_string(n));
    const size_t bytes = sizeof(float) * static_cast<size_t>(n);
    if (hub_->device == Device::cpu) {
      std::memcpy(data, msg.buf.data(), bytes);
    } else {  // this thread's stream waits for the sender's copy, then copies out; the host goes on
      device_memory::wait(std::exchange(msg.ready, nullptr));
      device_memory::copy_async(data, msg.buf.data(), bytes);
      msg.free_after = device_memory::mark();
    }
    hub_->spare.push_back(std::move(msg));
    box.pop_front();
  }

  std::unique_ptr<PendingSum> start_sum(uint32_t tag, std::vector<double> local) override {
    const std::pair<uint32_t, int64_t> key{tag, calls_++};
    {
      std::lock_guard<std::mutex> lock(hub_->mu);
      Hub::Sum& s = hub_->sums[key];
      if (s.total.empty()) s.total.assign(local.size(), 0.0);
      if (s.total.size() != local.size()) internal_error("start_sum: stages passed vectors of different lengths");
      for (size_t i = 0; i < local.size(); ++i) s.total[i] += local[i];
      ++s.arrived;
    }
    hub_->cv.notify_all();
    return std::make_unique<InprocSum>(hub_, key, stage_);
  }

 private:
  std::shared_ptr<Hub> hub_;
  int stage_;
  int64_t calls_ = 0;
};

}  // namespace

std::vector<std::unique_ptr<Transport>> make_inproc_transports(int stages, Device device) {
  auto hub = std::make_shared<Hub>(stages, device);
  std::vector<std::unique_ptr<Transport>> out;
  for (int s = 0; s < stages; ++s) out.push_back(std::make_unique<InprocTransport>(hub, s));
  return out;
}

}  // namespace onestep::pipeline
