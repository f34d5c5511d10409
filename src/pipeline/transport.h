// How stages talk: point-to-point float messages (activations, gradients, the tied embedding's gradient)
// and one collective, an element-wise sum over all stages. The executor is written against this interface
// only; the in-process transport (threads) and the MPI transport (one rank per stage) implement it.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/buffer.h"

namespace onestep::pipeline {

// What a message carries; with (batch, micro) it forms the message tag.
enum class MsgKind : uint32_t { activation = 1, gradient = 2, tied_grad = 3, weights = 4 };
uint32_t message_tag(MsgKind kind, int64_t batch, int micro);  // fits in 31 bits (MPI's minimum tag range)

// An element-wise sum started on every stage; wait() returns the same vector on all of them.
class PendingSum {
 public:
  virtual ~PendingSum() = default;
  virtual std::vector<double> wait() = 0;
};

class Transport {
 public:
  virtual ~Transport() = default;
  virtual int stage() const = 0;
  virtual int stages() const = 0;
  // Buffered: returns once `data` may be reused. Messages between two stages with equal tags arrive in order.
  virtual void send(int peer, uint32_t tag, const float* data, int64_t n) = 0;
  // Blocks until the message arrives; throws onestep::Error (internal) after the timeout (a peer died or hung).
  virtual void recv(int peer, uint32_t tag, float* data, int64_t n) = 0;
  // Non-blocking element-wise sum of `local` over all stages (all stages pass vectors of the same length and
  // call in the same order). The executor passes vectors whose non-zero entries are disjoint between stages,
  // so the result is exact and independent of the summation order.
  virtual std::unique_ptr<PendingSum> start_sum(uint32_t tag, std::vector<double> local) = 0;
};

// Seconds a blocking receive or sum waits before giving up (a dead or hung peer): 60 by default,
// ONESTEP_PEER_TIMEOUT_S overrides.
double peer_timeout_s();

// p endpoints sharing in-memory mailboxes; endpoint s is used by the thread running stage s. Messages are
// copied on `device`; on the GPU the copies are queued on the sending and receiving threads' own streams and
// ordered by events (device_memory::mark / wait), so send and recv return without waiting for the GPU: work the
// caller queues afterwards on its stream sees the message, and may overwrite the sent data.
std::vector<std::unique_ptr<Transport>> make_inproc_transports(int stages, Device device = Device::cpu);

}  // namespace onestep::pipeline
