#include "mpi/mpi_transport.h"

#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <initializer_list>
#include <string>
#include <vector>

#include "core/error.h"
#include "mpi/mpi_util.h"

namespace onestep::pipeline {

namespace {

using namespace mpi_detail;

// A sum over all stages as point-to-point messages rather than MPI_Iallreduce: every rank sends its vector to
// every other rank when it starts the sum (MpiTransport::start_sum) and pre-posts the receives here; waiting
// needs only the receives. A non-blocking collective advances only while every rank is inside MPI, so a rank
// busy with a forward held up the others' optimizer steps (a traced 2BW run under MPI lost 10-15% of a stage's
// time that way); a sent vector is in the receiver's queue the moment it is sent, and a rank's own sends
// complete in the background (their completion, too, can wait for the receiver, so nothing waits for them).
// Ranks add the vectors in rank order; every entry has one nonzero contribution (train/stage_runner.cpp), so the
// result equals the in-process transport's exactly.
class MpiSum : public PendingSum {
 public:
  MpiSum(int stage, int stages, uint32_t tag, std::vector<double> data)
      : stage_(stage), tag_(tag), parts_(static_cast<size_t>(stages)) {
    parts_[static_cast<size_t>(stage)] = std::move(data);
  }

  void start(MPI_Comm comm) {
    const int n = static_cast<int>(parts_[static_cast<size_t>(stage_)].size());
    for (int r = 0; r < static_cast<int>(parts_.size()); ++r) {
      if (r == stage_) continue;
      parts_[static_cast<size_t>(r)].assign(static_cast<size_t>(n), 0.0);
      reqs_.emplace_back();
      check(MPI_Irecv(parts_[static_cast<size_t>(r)].data(), n, MPI_DOUBLE, r, static_cast<int>(tag_), comm,
                      &reqs_.back()),
            "MPI_Irecv (sum)");
    }
  }

  std::vector<double> wait() override {
    if (done_)
      internal_error("stage " + std::to_string(stage_) + ": sum (tag " + std::to_string(tag_) + ") waited twice");
    complete(deadline_from_now());
    done_ = true;
    std::vector<double> total(parts_.front().size(), 0.0);
    for (const auto& part : parts_)
      for (size_t i = 0; i < total.size(); ++i) total[i] += part[i];
    return total;
  }

  ~MpiSum() override {
    if (done_ || reqs_.empty() || mpi_finalized()) return;
    if (std::uncaught_exceptions() == 0 && !peer_was_lost()) {
      try {  // started messages must complete before MPI_Finalize; finish them quietly
        complete(deadline_from_now());
        return;
      } catch (const std::exception& e) {
        std::fprintf(stderr, "%s\n", e.what());
      }
    }
    leak(std::move(parts_));
  }

 private:
  void complete(Clock::time_point deadline) {
    if (!wait_all(reqs_.data(), static_cast<int>(reqs_.size()), deadline, [] {}, "MPI_Testall (sum)"))
      peer_lost("stage " + std::to_string(stage_) + ": sum (tag " + std::to_string(tag_) + ") incomplete within " +
                seconds_text(peer_timeout_s()) + " s; a peer stage died or hung");
  }

  int stage_;
  uint32_t tag_;
  std::vector<std::vector<double>> parts_;  // parts_[r]: rank r's vector (ours, or received)
  std::vector<MPI_Request> reqs_;
  bool done_ = false;
};

class MpiTransport : public Transport {
 public:
  MpiTransport() {
    ensure_mpi();
    check(MPI_Comm_dup(MPI_COMM_WORLD, &p2p_), "MPI_Comm_dup");
    check(MPI_Comm_dup(MPI_COMM_WORLD, &coll_), "MPI_Comm_dup");
    MPI_Comm_set_errhandler(p2p_, MPI_ERRORS_RETURN);
    MPI_Comm_set_errhandler(coll_, MPI_ERRORS_RETURN);
    check(MPI_Comm_rank(p2p_, &rank_), "MPI_Comm_rank");
    check(MPI_Comm_size(p2p_, &size_), "MPI_Comm_size");
    tag_ub_ = tag_upper_bound();
  }

  ~MpiTransport() override {
    if (mpi_finalized()) return;
    try {
      reap();
      if (!out_.empty() && std::uncaught_exceptions() == 0 && !peer_was_lost()) {
        // Sends the peers will still receive: wait for them so MPI_Finalize finds nothing in flight.
        if (!poll_until(
                [&] {
                  reap();
                  return out_.empty();
                },
                deadline_from_now()))
          std::fprintf(stderr, "stage %d: %zu sent message(s) not received within %s s\n", rank_, out_.size(),
                       seconds_text(peer_timeout_s()).c_str());
      }
    } catch (const std::exception& e) {
      std::fprintf(stderr, "%s\n", e.what());
    }
    if (!out_.empty()) {  // error path: the process is going down; keep in-flight buffers alive
      for (auto& o : out_) leak(std::move(o.buf)), leak(std::move(o.sum_part));
      return;
    }
    MPI_Comm_free(&p2p_);
    MPI_Comm_free(&coll_);
  }

  int stage() const override { return rank_; }
  int stages() const override { return size_; }

  void send(int peer, uint32_t tag, const float* data, int64_t n) override {
    check_args("send to", peer, tag, n);
    reap();
    Outgoing o;
    o.buf.assign(data, data + n);
    check(MPI_Isend(o.buf.data(), static_cast<int>(n), MPI_FLOAT, peer, static_cast<int>(tag), p2p_, &o.req),
          "MPI_Isend");
    out_.push_back(std::move(o));  // moving the vector keeps its heap buffer where MPI expects it
  }

  void recv(int peer, uint32_t tag, float* data, int64_t n) override {
    check_args("receive from", peer, tag, n);
    const auto deadline = deadline_from_now();
    MPI_Message msg = MPI_MESSAGE_NULL;
    MPI_Status st;
    int flag = 0;
    int rc = MPI_SUCCESS;
    const bool arrived = poll_until(
        [&] {
          reap();
          rc = MPI_Improbe(peer, static_cast<int>(tag), p2p_, &flag, &msg, &st);
          return rc != MPI_SUCCESS || flag != 0;
        },
        deadline);
    check(rc, "MPI_Improbe");
    if (!arrived)
      peer_lost("stage " + std::to_string(rank_) + ": no message from stage " + std::to_string(peer) + " (tag " +
                std::to_string(tag) + ") within " + seconds_text(peer_timeout_s()) + " s; the peer died or hung");

    MPI_Count bytes = 0;
    check(MPI_Get_elements_x(&st, MPI_BYTE, &bytes), "MPI_Get_elements_x");
    if (bytes != static_cast<MPI_Count>(n) * static_cast<MPI_Count>(sizeof(float))) {
      // Consume it (so the next message with this tag is not this one), then report.
      std::vector<char> junk(static_cast<size_t>(std::max<MPI_Count>(bytes, 1)));
      if (bytes <= INT_MAX) complete_receive(junk.data(), static_cast<int>(bytes), MPI_BYTE, &msg, peer, tag);
      internal_error("stage " + std::to_string(rank_) + ": message from stage " + std::to_string(peer) + " (tag " +
                     std::to_string(tag) + ") has " + std::to_string(bytes / 4) + " floats, expected " +
                     std::to_string(n));
    }
    complete_receive(data, static_cast<int>(n), MPI_FLOAT, &msg, peer, tag);
  }

  std::unique_ptr<PendingSum> start_sum(uint32_t tag, std::vector<double> local) override {
    check_args("sum with", rank_, tag, static_cast<int64_t>(local.size()));
    reap();
    auto mine = std::make_shared<const std::vector<double>>(local);
    for (int r = 0; r < size_; ++r) {
      if (r == rank_) continue;
      Outgoing o;
      o.sum_part = mine;
      check(MPI_Isend(mine->data(), static_cast<int>(mine->size()), MPI_DOUBLE, r, static_cast<int>(tag), coll_,
                      &o.req),
            "MPI_Isend (sum)");
      out_.push_back(std::move(o));
    }
    auto sum = std::make_unique<MpiSum>(rank_, size_, tag, std::move(local));
    sum->start(coll_);
    return sum;
  }

 private:
  struct Outgoing {  // a send in flight and the data it reads
    std::vector<float> buf;
    std::shared_ptr<const std::vector<double>> sum_part;  // a sum's vector (shared by its sends to every rank)
    MPI_Request req = MPI_REQUEST_NULL;
  };

  void check_args(const char* what, int peer, uint32_t tag, int64_t n) const {
    check_message(rank_, size_, tag_ub_, what, peer, tag, n, true);
  }

  // Completes every finished send and drops its buffer.
  void reap() {
    remove_done(out_, [](Outgoing& o) { return test_done(o.req, "MPI_Test (send)"); });
  }

  // The matched message is ours; its data may still need the sender's progress (rendezvous).
  void complete_receive(void* buf, int count, MPI_Datatype type, MPI_Message* msg, int peer, uint32_t tag) {
    MPI_Request req = MPI_REQUEST_NULL;
    check(MPI_Imrecv(buf, count, type, msg, &req), "MPI_Imrecv");
    // The header arrived in time; the payload gets a full timeout of its own.
    if (!wait_all(&req, 1, deadline_from_now(), [&] { reap(); }, "MPI_Test (recv)"))
      peer_lost("stage " + std::to_string(rank_) + ": message from stage " + std::to_string(peer) + " (tag " +
                std::to_string(tag) + ") started but did not complete within " + seconds_text(peer_timeout_s()) +
                " s; the peer died or hung");
  }

  MPI_Comm p2p_ = MPI_COMM_NULL;   // point-to-point messages
  MPI_Comm coll_ = MPI_COMM_NULL;  // the sums' messages (their tags may repeat p2p_'s)
  int rank_ = 0;
  int size_ = 1;
  int tag_ub_ = 32767;
  std::vector<Outgoing> out_;  // sends not yet complete
};

}  // namespace

std::unique_ptr<Transport> make_mpi_transport() { return std::make_unique<MpiTransport>(); }

int mpi_world_size() {
  ensure_mpi();
  int size = 0;
  check(MPI_Comm_size(MPI_COMM_WORLD, &size), "MPI_Comm_size");
  return size;
}

int mpi_rank() {
  ensure_mpi();
  int rank = 0;
  check(MPI_Comm_rank(MPI_COMM_WORLD, &rank), "MPI_Comm_rank");
  return rank;
}

HostSlot host_slot() {
  ensure_mpi();
  MPI_Comm local = MPI_COMM_NULL;
  check(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &local), "MPI_Comm_split_type");
  HostSlot slot;
  check(MPI_Comm_rank(local, &slot.local_rank), "MPI_Comm_rank");
  check(MPI_Comm_size(local, &slot.local_ranks), "MPI_Comm_size");
  MPI_Comm_free(&local);
  char name[MPI_MAX_PROCESSOR_NAME];
  int len = 0;
  check(MPI_Get_processor_name(name, &len), "MPI_Get_processor_name");
  slot.host.assign(name, static_cast<size_t>(len));
  return slot;
}

bool launched_by_mpirun() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE", "PMI_RANK"}) {
    const char* s = std::getenv(v);
    if (s && *s) return true;
  }
  return false;
}

}  // namespace onestep::pipeline
