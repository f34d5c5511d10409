// A transport for payloads that MPI should not carry itself (GPU memory through NCCL): the payloads travel on a
// DataPlane that, like NCCL, has no tags and matches each pair's sends to its receives in the order they were
// queued; MPI carries a small header per message (its tag and length) and the all-stage sums.
//
// The protocol, which makes any order of sends and receives on the two sides safe:
// - send(): the plane copies the data into a staging slot of its own (the caller may reuse its buffer at once)
//   and queues it to the peer; then the header goes out over MPI. Nothing waits for the peer.
// - At every call, the receiver drains every header that has arrived and at once queues a receive for it on the
//   plane, in header order, which per sender is its send order, so the plane pairs them correctly. recv() waits
//   (with the peer timeout) only for the wanted header and then takes that message from its slot.
// A plane queues each (sender, receiver) direction separately (NCCL: a communicator and stream per direction), so
// a send never waits behind a receive or behind another pair's traffic.
#pragma once
#include <cstdint>
#include <memory>

#include "pipeline/transport.h"

namespace onestep::pipeline {

class DataPlane {
 public:
  virtual ~DataPlane() = default;
  // Stages data[0, n) and queues it to `peer`, after everything queued to `peer` before.
  virtual void send(int peer, const float* data, int64_t n) = 0;
  // Queues the receive of the next message from `peer` (n floats, as its header said); returns a handle.
  virtual int64_t post_recv(int peer, int64_t n) = 0;
  // The received message into data[0, n), then frees the slot; `discard` frees it unread (a wrong length).
  virtual void deliver(int64_t handle, float* data) = 0;
  virtual void discard(int64_t handle) = 0;
  virtual bool sends_done() = 0;  // every queued send has left this process
  virtual void abandon() = 0;     // error path: operations may still run; keep their memory
};

// Collective over MPI_COMM_WORLD. Arguments are checked like the MPI transport's (peer range, tag, length).
std::unique_ptr<Transport> make_staged_transport(std::unique_ptr<DataPlane> plane);

// The data plane on host memory over MPI messages of one tag per direction (MPI, too, matches those in order):
// the protocol on any machine, for its tests. Collective.
std::unique_ptr<DataPlane> make_mpi_data_plane();

}  // namespace onestep::pipeline
