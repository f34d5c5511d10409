#include "nccl/nccl_transport.h"

#include <cuda_runtime_api.h>
#include <dlfcn.h>
#include <mpi.h>
#include <nccl.h>

#include <cstdio>
#include <deque>
#include <exception>
#include <map>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "core/error.h"
#include "mpi/mpi_transport.h"
#include "mpi/mpi_util.h"

namespace onestep::pipeline {

namespace {

using namespace mpi_detail;

// The few NCCL entry points the transport uses, from libnccl.so.2 loaded at run time.
struct NcclApi {
  decltype(&ncclGetUniqueId) get_unique_id = nullptr;
  decltype(&ncclCommInitRank) comm_init_rank = nullptr;
  decltype(&ncclCommDestroy) comm_destroy = nullptr;
  decltype(&ncclCommAbort) comm_abort = nullptr;
  decltype(&ncclGroupStart) group_start = nullptr;
  decltype(&ncclGroupEnd) group_end = nullptr;
  decltype(&ncclSend) send = nullptr;
  decltype(&ncclRecv) recv = nullptr;
  decltype(&ncclGetErrorString) error_string = nullptr;
};

const NcclApi& nccl() {
  static const NcclApi api = [] {
    void* lib = dlopen("libnccl.so.2", RTLD_NOW | RTLD_LOCAL);
#ifdef ONESTEP_NCCL_LIBRARY
    if (!lib) lib = dlopen(ONESTEP_NCCL_LIBRARY, RTLD_NOW | RTLD_LOCAL);  // the one CMake found at build time
#endif
    if (!lib)
      bad_input("pipeline.transport", std::string("'nccl' needs NCCL's libnccl.so.2, which does not load here (") +
                                          dlerror() + "); add its folder to LD_LIBRARY_PATH");
    NcclApi a;
    auto sym = [&](auto& fn, const char* name) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(lib, name));
      if (!fn) bad_input("pipeline.transport", std::string("'nccl': libnccl.so.2 lacks ") + name + " (too old?)");
    };
    sym(a.get_unique_id, "ncclGetUniqueId");
    sym(a.comm_init_rank, "ncclCommInitRank");
    sym(a.comm_destroy, "ncclCommDestroy");
    sym(a.comm_abort, "ncclCommAbort");
    sym(a.group_start, "ncclGroupStart");
    sym(a.group_end, "ncclGroupEnd");
    sym(a.send, "ncclSend");
    sym(a.recv, "ncclRecv");
    sym(a.error_string, "ncclGetErrorString");
    return a;
  }();
  return api;
}

void check_nccl(ncclResult_t r, const char* what) {
  if (r != ncclSuccess) internal_error(std::string("NCCL: ") + what + ": " + nccl().error_string(r));
}
void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) internal_error(std::string("CUDA: ") + what + ": " + cudaGetErrorString(e));
}
bool event_done(cudaEvent_t e) {
  const cudaError_t r = cudaEventQuery(e);
  if (r == cudaErrorNotReady) return false;
  check_cuda(r, "cudaEventQuery");
  return true;
}

// The ordered pairs of stages that exchange messages (train/stage_runner.cpp, train/pipeline_trainer.cpp):
// neighbours, the first and last stage (the tied embedding's gradient) and every stage to stage 0 (the gather).
bool talks(int from, int to, int stages) {
  if (from == to) return false;
  return from - to == 1 || to - from == 1 || to == 0 || (from == 0 && to == stages - 1);
}

// A device buffer a message passes through, with the events that order its use: `ready` when its contents are
// complete (the staging copy of a send, the ncclRecv of a receive), `done` when the last reader has finished.
struct Staging {
  float* buf = nullptr;
  size_t cap = 0;
  cudaEvent_t ready = nullptr, done = nullptr;
};

// Staging buffers, reused once their `done` event has passed (message sizes repeat: a few distinct ones per run).
class StagingPool {
 public:
  StagingPool() = default;
  StagingPool(const StagingPool&) = delete;
  StagingPool& operator=(const StagingPool&) = delete;
  ~StagingPool() {
    for (auto* list : {&free_, &busy_})
      for (Staging* s : *list) {
        if (keep_) continue;  // error path: the GPU may still use them
        cudaFree(s->buf), cudaEventDestroy(s->ready), cudaEventDestroy(s->done);
        delete s;
      }
  }
  void keep_alive() { keep_ = true; }

  Staging* take(size_t n) {
    for (size_t i = 0; i < busy_.size();) {  // reclaim the finished ones
      if (event_done(busy_[i]->done)) {
        free_.push_back(busy_[i]);
        busy_[i] = busy_.back();
        busy_.pop_back();
      } else {
        ++i;
      }
    }
    for (size_t i = 0; i < free_.size(); ++i)
      if (free_[i]->cap >= n) {
        Staging* s = free_[i];
        free_[i] = free_.back();
        free_.pop_back();
        return s;
      }
    auto* s = new Staging;
    s->cap = n;
    check_cuda(cudaMalloc(&s->buf, sizeof(float) * (n ? n : 1)), "cudaMalloc (NCCL staging)");
    check_cuda(cudaEventCreateWithFlags(&s->ready, cudaEventDisableTiming), "cudaEventCreate");
    check_cuda(cudaEventCreateWithFlags(&s->done, cudaEventDisableTiming), "cudaEventCreate");
    return s;
  }
  void give_back(Staging* s) { busy_.push_back(s); }  // after recording s->done

 private:
  std::vector<Staging*> free_, busy_;
  bool keep_ = false;
};

// One direction of one pair: a 2-rank communicator (sender rank 0, receiver rank 1) and this side's stream.
struct Link {
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;
};

class NcclTransport : public Transport {
 public:
  NcclTransport() : sums_(make_mpi_transport()) {
    ensure_mpi();
    rank_ = sums_->stage();
    size_ = sums_->stages();
    check(MPI_Comm_dup(MPI_COMM_WORLD, &hdr_), "MPI_Comm_dup");
    MPI_Comm_set_errhandler(hdr_, MPI_ERRORS_RETURN);
    connect();
  }

  ~NcclTransport() override {
    const bool failing = std::uncaught_exceptions() > 0 || peer_was_lost() || mpi_finalized();
    bool drained = !failing;
    if (!failing) {
      try {  // the peers still receive what we sent: wait for it, so that the communicators close cleanly
        drained = poll_until(
            [&] {
              reap();
              bool idle = out_.empty();
              for (auto& [peer, l] : send_links_) idle = idle && cudaStreamQuery(l.stream) == cudaSuccess;
              return idle;
            },
            deadline_from_now());
        if (!drained) std::fprintf(stderr, "stage %d: NCCL sends not received within %s s\n", rank_,
                                   seconds_text(peer_timeout_s()).c_str());
      } catch (const std::exception& e) {
        std::fprintf(stderr, "%s\n", e.what());
        drained = false;
      }
    }
    for (auto* links : {&send_links_, &recv_links_})
      for (auto& [peer, l] : *links) {
        if (drained) nccl().comm_destroy(l.comm), cudaStreamDestroy(l.stream);
        else nccl().comm_abort(l.comm);  // streams and staging stay: kernels may still be queued on them
      }
    if (!drained) {
      pool_.keep_alive();
      for (auto& o : out_) leak(std::move(o.len));
      return;
    }
    MPI_Comm_free(&hdr_);
  }

  int stage() const override { return rank_; }
  int stages() const override { return size_; }

  void send(int peer, uint32_t tag, const float* data, int64_t n) override {
    Link& l = link(send_links_, peer, "send to");
    reap();
    drain_headers();
    Staging* s = pool_.take(static_cast<size_t>(n));
    const cudaStream_t caller = cudaStreamPerThread;
    check_cuda(cudaMemcpyAsync(s->buf, data, sizeof(float) * static_cast<size_t>(n), cudaMemcpyDeviceToDevice, caller),
               "cudaMemcpyAsync (staging a send)");
    check_cuda(cudaEventRecord(s->ready, caller), "cudaEventRecord");
    check_cuda(cudaStreamWaitEvent(l.stream, s->ready, 0), "cudaStreamWaitEvent");
    check_nccl(nccl().send(s->buf, static_cast<size_t>(n), ncclFloat32, 1, l.comm, l.stream), "ncclSend");
    check_cuda(cudaEventRecord(s->done, l.stream), "cudaEventRecord");
    pool_.give_back(s);
    // The header goes after ncclSend is queued: the receiver queues its ncclRecv when the header arrives.
    Outgoing o;
    o.len = std::make_unique<int64_t>(n);
    check(MPI_Isend(o.len.get(), 1, MPI_INT64_T, peer, static_cast<int>(tag), hdr_, &o.req), "MPI_Isend (header)");
    out_.push_back(std::move(o));
  }

  void recv(int peer, uint32_t tag, float* data, int64_t n) override {
    link(recv_links_, peer, "receive from");
    auto& box = inbox_[{peer, tag}];
    const bool arrived = poll_until(
        [&] {
          reap();
          drain_headers();
          return !box.empty();
        },
        deadline_from_now());
    if (!arrived)
      peer_lost("stage " + std::to_string(rank_) + ": no message from stage " + std::to_string(peer) + " (tag " +
                std::to_string(tag) + ") within " + seconds_text(peer_timeout_s()) + " s; the peer died or hung");
    auto [s, len] = box.front();
    box.pop_front();
    if (box.empty()) inbox_.erase({peer, tag});  // tags carry the batch: keep the map small
    if (len != n)
      internal_error("stage " + std::to_string(rank_) + ": message from stage " + std::to_string(peer) + " (tag " +
                     std::to_string(tag) + ") has " + std::to_string(len) + " floats, expected " + std::to_string(n));
    const cudaStream_t caller = cudaStreamPerThread;
    check_cuda(cudaStreamWaitEvent(caller, s->ready, 0), "cudaStreamWaitEvent");
    check_cuda(cudaMemcpyAsync(data, s->buf, sizeof(float) * static_cast<size_t>(n), cudaMemcpyDeviceToDevice, caller),
               "cudaMemcpyAsync (a received message)");
    check_cuda(cudaEventRecord(s->done, caller), "cudaEventRecord");
    pool_.give_back(s);
  }

  std::unique_ptr<PendingSum> start_sum(uint32_t tag, std::vector<double> local) override {
    return sums_->start_sum(tag, std::move(local));
  }

 private:
  struct Outgoing {  // a header in flight
    std::unique_ptr<int64_t> len;
    MPI_Request req = MPI_REQUEST_NULL;
  };

  // The communicators of every pair this rank belongs to: the sender of each makes its id and sends it over MPI,
  // then all of this rank's communicators start together (one NCCL group: no order to deadlock on).
  void connect() {
    MPI_Comm boot = MPI_COMM_NULL;
    check(MPI_Comm_dup(MPI_COMM_WORLD, &boot), "MPI_Comm_dup");
    struct Pending {
      int from, to;
      ncclUniqueId id;
    };
    std::vector<Pending> mine;
    for (int a = 0; a < size_; ++a)
      for (int b = 0; b < size_; ++b)
        if (talks(a, b, size_) && (a == rank_ || b == rank_)) mine.push_back({a, b, {}});
    std::vector<MPI_Request> sent;
    for (Pending& pr : mine)
      if (pr.from == rank_) {
        check_nccl(nccl().get_unique_id(&pr.id), "ncclGetUniqueId");
        sent.emplace_back();
        check(MPI_Isend(&pr.id, sizeof(ncclUniqueId), MPI_BYTE, pr.to, pr.from * size_ + pr.to, boot, &sent.back()),
              "MPI_Isend (NCCL id)");
      }
    for (Pending& pr : mine)
      if (pr.to == rank_)
        check(MPI_Recv(&pr.id, sizeof(ncclUniqueId), MPI_BYTE, pr.from, pr.from * size_ + pr.to, boot, MPI_STATUS_IGNORE),
              "MPI_Recv (NCCL id)");
    check(MPI_Waitall(static_cast<int>(sent.size()), sent.data(), MPI_STATUSES_IGNORE), "MPI_Waitall (NCCL ids)");
    MPI_Comm_free(&boot);

    check_nccl(nccl().group_start(), "ncclGroupStart");
    for (Pending& pr : mine) {
      const bool sender = pr.from == rank_;
      Link& l = sender ? send_links_[pr.to] : recv_links_[pr.from];
      check_cuda(cudaStreamCreateWithFlags(&l.stream, cudaStreamNonBlocking), "cudaStreamCreate");
      check_nccl(nccl().comm_init_rank(&l.comm, 2, pr.id, sender ? 0 : 1), "ncclCommInitRank");
    }
    check_nccl(nccl().group_end(), "ncclGroupEnd (starting the communicators)");
  }

  Link& link(std::map<int, Link>& links, int peer, const char* what) {
    auto it = links.find(peer);
    if (it == links.end())
      internal_error("stage " + std::to_string(rank_) + ": " + what + " stage " + std::to_string(peer) +
                     ": no NCCL link between them (nccl_transport.cpp: talks)");
    return it->second;
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
      const int peer = st.MPI_SOURCE;
      Link& l = link(recv_links_, peer, "header from");
      Staging* s = pool_.take(static_cast<size_t>(n));
      check_nccl(nccl().recv(s->buf, static_cast<size_t>(n), ncclFloat32, 0, l.comm, l.stream), "ncclRecv");
      check_cuda(cudaEventRecord(s->ready, l.stream), "cudaEventRecord");
      inbox_[{peer, static_cast<uint32_t>(st.MPI_TAG)}].push_back({s, n});
    }
  }

  void reap() {
    for (size_t i = 0; i < out_.size();) {
      int flag = 0;
      check(MPI_Test(&out_[i].req, &flag, MPI_STATUS_IGNORE), "MPI_Test (header)");
      if (flag) {
        if (i + 1 != out_.size()) out_[i] = std::move(out_.back());
        out_.pop_back();
      } else {
        ++i;
      }
    }
  }

  std::unique_ptr<Transport> sums_;  // MPI: the all-stage sums
  int rank_ = 0, size_ = 1;
  MPI_Comm hdr_ = MPI_COMM_NULL;        // headers: tag = the message's tag, payload = its length
  std::map<int, Link> send_links_;      // by receiver
  std::map<int, Link> recv_links_;      // by sender
  StagingPool pool_;
  std::vector<Outgoing> out_;
  std::map<std::pair<int, uint32_t>, std::deque<std::pair<Staging*, int64_t>>> inbox_;  // (peer, tag): received
};

}  // namespace

std::unique_ptr<Transport> make_nccl_transport() {
  nccl();  // a missing library is bad input, before any collective
  return std::make_unique<NcclTransport>();
}

}  // namespace onestep::pipeline
