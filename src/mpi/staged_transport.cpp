#include "mpi/staged_transport.h"

#include <mpi.h>

#include <cstdio>
#include <cstring>
#include <deque>
#include <exception>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/error.h"
#include "mpi/mpi_transport.h"
#include "mpi/mpi_util.h"

namespace onestep::pipeline {

namespace {

using namespace mpi_detail;

class StagedTransport : public Transport {
 public:
  explicit StagedTransport(std::unique_ptr<DataPlane> plane) : sums_(make_mpi_transport()), plane_(std::move(plane)) {
    rank_ = sums_->stage();
    size_ = sums_->stages();
    check(MPI_Comm_dup(MPI_COMM_WORLD, &hdr_), "MPI_Comm_dup");
    MPI_Comm_set_errhandler(hdr_, MPI_ERRORS_RETURN);
    tag_ub_ = tag_upper_bound();
  }

  ~StagedTransport() override {
    const bool failing = std::uncaught_exceptions() > 0 || peer_was_lost() || mpi_finalized();
    bool drained = false;
    if (!failing) {
      try {  // the peers still receive what we sent: wait for it to leave
        drained = poll_until(
            [&] {
              reap();
              return out_.empty() && plane_->sends_done();
            },
            deadline_from_now());
        if (!drained)
          std::fprintf(stderr, "stage %d: sent messages not received within %s s\n", rank_,
                       seconds_text(peer_timeout_s()).c_str());
      } catch (const std::exception& e) {
        std::fprintf(stderr, "%s\n", e.what());
      }
    }
    if (!drained) {
      plane_->abandon();
      for (auto& o : out_) leak(std::move(o.len));
      return;
    }
    MPI_Comm_free(&hdr_);
  }

  int stage() const override { return rank_; }
  int stages() const override { return size_; }

  void send(int peer, uint32_t tag, const float* data, int64_t n) override {
    check_args("send to", peer, tag, n);
    reap();
    drain_headers();
    plane_->send(peer, data, n);
    // The header leaves after the payload is queued: the receiver queues its receive when the header arrives.
    Outgoing o;
    o.len = std::make_unique<int64_t>(n);
    check(MPI_Isend(o.len.get(), 1, MPI_INT64_T, peer, static_cast<int>(tag), hdr_, &o.req), "MPI_Isend (header)");
    out_.push_back(std::move(o));
  }

  void recv(int peer, uint32_t tag, float* data, int64_t n) override {
    check_args("receive from", peer, tag, n);
    const std::pair<int, uint32_t> key{peer, tag};
    const bool arrived = poll_until(
        [&] {
          reap();
          drain_headers();
          return inbox_.count(key) > 0;
        },
        deadline_from_now());
    if (!arrived)
      peer_lost("stage " + std::to_string(rank_) + ": no message from stage " + std::to_string(peer) + " (tag " +
                std::to_string(tag) + ") within " + seconds_text(peer_timeout_s()) + " s; the peer died or hung");
    auto& box = inbox_.at(key);
    const auto [handle, len] = box.front();
    box.pop_front();
    if (box.empty()) inbox_.erase(key);  // tags carry the batch: keep the map small
    if (len != n) {
      plane_->discard(handle);
      internal_error("stage " + std::to_string(rank_) + ": message from stage " + std::to_string(peer) + " (tag " +
                     std::to_string(tag) + ") has " + std::to_string(len) + " floats, expected " + std::to_string(n));
    }
    plane_->deliver(handle, data);
  }

  std::unique_ptr<PendingSum> start_sum(uint32_t tag, std::vector<double> local) override {
    return sums_->start_sum(tag, std::move(local));
  }

 private:
  struct Outgoing {  // a header in flight
    std::unique_ptr<int64_t> len;
    MPI_Request req = MPI_REQUEST_NULL;
  };

  void check_args(const char* what, int peer, uint32_t tag, int64_t n) const {
    check_message(rank_, size_, tag_ub_, what, peer, tag, n, false);
  }

  // Queues a receive for every header that has arrived, in arrival order (per sender, its send order).
  void drain_headers() {
    for (;;) {
      int flag = 0;
      MPI_Message msg = MPI_MESSAGE_NULL;
      MPI_Status st;
      check(MPI_Improbe(MPI_ANY_SOURCE, MPI_ANY_TAG, hdr_, &flag, &msg, &st), "MPI_Improbe (header)");
      if (!flag) return;
      int64_t n = 0;
      check(MPI_Mrecv(&n, 1, MPI_INT64_T, &msg, MPI_STATUS_IGNORE), "MPI_Mrecv (header)");
      const int64_t handle = plane_->post_recv(st.MPI_SOURCE, n);
      inbox_[{st.MPI_SOURCE, static_cast<uint32_t>(st.MPI_TAG)}].push_back({handle, n});
    }
  }

  void reap() {
    remove_done(out_, [](Outgoing& o) { return test_done(o.req, "MPI_Test (header)"); });
  }

  std::unique_ptr<Transport> sums_;  // MPI: the all-stage sums
  std::unique_ptr<DataPlane> plane_;
  int rank_ = 0, size_ = 1, tag_ub_ = 32767;
  MPI_Comm hdr_ = MPI_COMM_NULL;  // headers: tag = the message's tag, payload = its length
  std::vector<Outgoing> out_;
  std::map<std::pair<int, uint32_t>, std::deque<std::pair<int64_t, int64_t>>> inbox_;  // (peer, tag): (handle, n)
};

// Host payloads as MPI messages of tag 0 on a communicator of their own.
class MpiDataPlane : public DataPlane {
 public:
  MpiDataPlane() {
    ensure_mpi();
    check(MPI_Comm_dup(MPI_COMM_WORLD, &comm_), "MPI_Comm_dup");
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
  }
  ~MpiDataPlane() override {
    if (!abandoned_ && !mpi_finalized()) MPI_Comm_free(&comm_);
  }

  void send(int peer, const float* data, int64_t n) override {
    reap();
    Slot s;
    s.buf.assign(data, data + n);
    check(MPI_Isend(s.buf.data(), static_cast<int>(n), MPI_FLOAT, peer, 0, comm_, &s.req), "MPI_Isend (payload)");
    sending_.push_back(std::move(s));
  }
  int64_t post_recv(int peer, int64_t n) override {
    Slot& s = receiving_[next_];
    s.buf.resize(static_cast<size_t>(n));
    check(MPI_Irecv(s.buf.data(), static_cast<int>(n), MPI_FLOAT, peer, 0, comm_, &s.req), "MPI_Irecv (payload)");
    return next_++;
  }
  void deliver(int64_t handle, float* data) override {
    Slot& s = receiving_.at(handle);
    if (!wait_all(&s.req, 1, deadline_from_now(), [&] { reap(); }, "MPI_Test (payload)"))
      peer_lost("a message's payload did not arrive within " + seconds_text(peer_timeout_s()) + " s");
    if (!s.buf.empty()) std::memcpy(data, s.buf.data(), sizeof(float) * s.buf.size());
    receiving_.erase(handle);
  }
  void discard(int64_t handle) override { receiving_.at(handle).unread = true; }
  bool sends_done() override {
    reap();
    return sending_.empty();
  }
  void abandon() override {
    abandoned_ = true;
    for (auto& s : sending_) leak(std::move(s.buf));
    for (auto& [h, s] : receiving_) leak(std::move(s.buf));
  }

 private:
  struct Slot {
    std::vector<float> buf;
    MPI_Request req = MPI_REQUEST_NULL;
    bool unread = false;
  };
  void reap() {
    remove_done(sending_, [](Slot& s) { return test_done(s.req, "MPI_Test (payload)"); });
    for (auto it = receiving_.begin(); it != receiving_.end();)  // discarded ones, once they have arrived
      it = it->second.unread && test_done(it->second.req, "MPI_Test (payload)") ? receiving_.erase(it) : std::next(it);
  }

  MPI_Comm comm_ = MPI_COMM_NULL;
  std::vector<Slot> sending_;
  std::map<int64_t, Slot> receiving_;  // by handle; std::map: a slot's buffer never moves while MPI writes to it
  int64_t next_ = 0;
  bool abandoned_ = false;
};

}  // namespace

std::unique_ptr<Transport> make_staged_transport(std::unique_ptr<DataPlane> plane) {
  return std::make_unique<StagedTransport>(std::move(plane));
}

std::unique_ptr<DataPlane> make_mpi_data_plane() { return std::make_unique<MpiDataPlane>(); }

}  // namespace onestep::pipeline
