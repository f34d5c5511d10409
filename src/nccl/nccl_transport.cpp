#include "nccl/nccl_transport.h"

#include <cuda_runtime_api.h>
#include <dlfcn.h>
#include <mpi.h>
#include <nccl.h>

#include <cstdio>
#include <map>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "core/error.h"
#include "mpi/mpi_transport.h"
#include "mpi/mpi_util.h"
#include "mpi/staged_transport.h"

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
  decltype(&ncclGetVersion) get_version = nullptr;
};

const NcclApi& nccl() {
  static const NcclApi api = [] {
#ifdef ONESTEP_NCCL_LINKED  // the CPU emulation of NCCL (tests/cuda_emu) is linked in, not loaded
    return NcclApi{&ncclGetUniqueId, &ncclCommInitRank, &ncclCommDestroy, &ncclCommAbort, &ncclGroupStart,
                   &ncclGroupEnd,    &ncclSend,         &ncclRecv,        &ncclGetErrorString, &ncclGetVersion};
#else
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
    sym(a.get_version, "ncclGetVersion");
    return a;
#endif
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
    remove_done(busy_, [&](Staging* s) {  // reclaim the finished ones
      if (!event_done(s->done)) return false;
      free_.push_back(s);
      return true;
    });
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

// The payloads on the GPU: a 2-rank communicator and stream per direction of every pair that talks, and device
// staging buffers ordered by CUDA events against the caller's stream.
class NcclPlane : public DataPlane {
 public:
  NcclPlane() {
    ensure_mpi();
    check(MPI_Comm_rank(MPI_COMM_WORLD, &rank_), "MPI_Comm_rank");
    check(MPI_Comm_size(MPI_COMM_WORLD, &size_), "MPI_Comm_size");
    connect();
  }
  // In the global order of connect(): destroying a communicator may wait for its other rank to destroy it too, and
  // with one order on every rank the first communicator left is always the next one of both its ranks.
  ~NcclPlane() override {
    for (const auto& [from, to] : pairs_) {
      Link& l = from == rank_ ? send_links_[to] : recv_links_[from];
      if (abandoned_) {
        nccl().comm_abort(l.comm);  // its stream and staging buffers stay: kernels may still be queued there
      } else {
        nccl().comm_destroy(l.comm);
        cudaStreamDestroy(l.stream);
      }
    }
  }

  void send(int peer, const float* data, int64_t n) override {
    Link& l = link(send_links_, peer, "send to");
    Staging* s = pool_.take(static_cast<size_t>(n));
    const cudaStream_t caller = cudaStreamPerThread;
    check_cuda(cudaMemcpyAsync(s->buf, data, sizeof(float) * static_cast<size_t>(n), cudaMemcpyDeviceToDevice, caller),
               "cudaMemcpyAsync (staging a send)");
    check_cuda(cudaEventRecord(s->ready, caller), "cudaEventRecord");
    check_cuda(cudaStreamWaitEvent(l.stream, s->ready, 0), "cudaStreamWaitEvent");
    check_nccl(nccl().send(s->buf, static_cast<size_t>(n), ncclFloat32, 1, l.comm, l.stream), "ncclSend");
    check_cuda(cudaEventRecord(s->done, l.stream), "cudaEventRecord");
    pool_.give_back(s);
  }

  int64_t post_recv(int peer, int64_t n) override {
    Link& l = link(recv_links_, peer, "receive from");
    Staging* s = pool_.take(static_cast<size_t>(n));
    check_nccl(nccl().recv(s->buf, static_cast<size_t>(n), ncclFloat32, 0, l.comm, l.stream), "ncclRecv");
    check_cuda(cudaEventRecord(s->ready, l.stream), "cudaEventRecord");
    received_[next_] = {s, n};
    return next_++;
  }

  void deliver(int64_t handle, float* data) override {
    const auto [s, n] = take(handle);
    const cudaStream_t caller = cudaStreamPerThread;
    check_cuda(cudaStreamWaitEvent(caller, s->ready, 0), "cudaStreamWaitEvent");
    check_cuda(cudaMemcpyAsync(data, s->buf, sizeof(float) * static_cast<size_t>(n), cudaMemcpyDeviceToDevice, caller),
               "cudaMemcpyAsync (a received message)");
    check_cuda(cudaEventRecord(s->done, caller), "cudaEventRecord");
    pool_.give_back(s);
  }

  void discard(int64_t handle) override {
    Staging* s = take(handle).first;  // free once its receive has completed
    check_cuda(cudaStreamWaitEvent(cudaStreamPerThread, s->ready, 0), "cudaStreamWaitEvent");
    check_cuda(cudaEventRecord(s->done, cudaStreamPerThread), "cudaEventRecord");
    pool_.give_back(s);
  }

  bool sends_done() override {
    for (auto& [peer, l] : send_links_) {
      const cudaError_t e = cudaStreamQuery(l.stream);
      if (e == cudaErrorNotReady) return false;
      check_cuda(e, "cudaStreamQuery");
    }
    return true;
  }

  void abandon() override {
    abandoned_ = true;
    pool_.keep_alive();
  }

 private:
  // The communicators of every pair this rank belongs to: the sender of each makes its id and sends it over MPI,
  // then all of this rank's communicators start together (one NCCL group: no order to deadlock on). NCCL connects a
  // communicator's point-to-point channel lazily, on its first send or receive, and that setup blocks the host until
  // the other rank reaches it too; a first ncclSend would then wait for an ncclRecv its peer only posts after the
  // send's MPI header arrives. So every link exchanges one float here, where all ranks are present, in one group.
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
    sent.reserve(mine.size());
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
      pairs_.emplace_back(pr.from, pr.to);  // (from, to) ascending: the same order on every rank
    }
    check_nccl(nccl().group_end(), "ncclGroupEnd (starting the communicators)");

    float* warm = nullptr;  // one float per link, so no two receives write the same bytes
    check_cuda(cudaMalloc(&warm, sizeof(float) * pairs_.size()), "cudaMalloc (connecting the NCCL links)");
    check_cuda(cudaMemset(warm, 0, sizeof(float) * pairs_.size()), "cudaMemset");
    check_nccl(nccl().group_start(), "ncclGroupStart");
    for (size_t i = 0; i < pairs_.size(); ++i) {
      const auto [from, to] = pairs_[i];
      if (from == rank_) {
        const Link& l = send_links_[to];
        check_nccl(nccl().send(warm + i, 1, ncclFloat32, 1, l.comm, l.stream), "ncclSend (connecting)");
      } else {
        const Link& l = recv_links_[from];
        check_nccl(nccl().recv(warm + i, 1, ncclFloat32, 0, l.comm, l.stream), "ncclRecv (connecting)");
      }
    }
    check_nccl(nccl().group_end(), "ncclGroupEnd (connecting the links)");
    for (auto* links : {&send_links_, &recv_links_})
      for (auto& [peer, l] : *links) check_cuda(cudaStreamSynchronize(l.stream), "cudaStreamSynchronize (connecting)");
    check_cuda(cudaFree(warm), "cudaFree");
  }

  Link& link(std::map<int, Link>& links, int peer, const char* what) {
    auto it = links.find(peer);
    if (it == links.end())
      internal_error("stage " + std::to_string(rank_) + ": " + what + " stage " + std::to_string(peer) +
                     ": no NCCL link between them (nccl_transport.cpp: talks)");
    return it->second;
  }

  std::pair<Staging*, int64_t> take(int64_t handle) {
    auto it = received_.find(handle);
    if (it == received_.end()) internal_error("NCCL plane: unknown receive " + std::to_string(handle));
    const auto out = it->second;
    received_.erase(it);
    return out;
  }

  int rank_ = 0, size_ = 1;
  std::map<int, Link> send_links_;  // by receiver
  std::map<int, Link> recv_links_;  // by sender
  std::vector<std::pair<int, int>> pairs_;  // (from, to) of every link, in one order shared by all ranks
  StagingPool pool_;
  std::map<int64_t, std::pair<Staging*, int64_t>> received_;  // by handle: the staging slot and its length
  int64_t next_ = 0;
  bool abandoned_ = false;
};

}  // namespace

int nccl_version() {
  int v = 0;
  check_nccl(nccl().get_version(&v), "ncclGetVersion");
  return v;
}

std::vector<float> nccl_loopback(const std::vector<float>& data) {
  const size_t n = data.size();
  float *src = nullptr, *dst = nullptr;
  cudaStream_t stream = nullptr;
  ncclComm_t comm = nullptr;
  ncclUniqueId id;
  check_nccl(nccl().get_unique_id(&id), "ncclGetUniqueId");
  check_nccl(nccl().comm_init_rank(&comm, 1, id, 0), "ncclCommInitRank");
  check_cuda(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
  check_cuda(cudaMalloc(&src, sizeof(float) * (n ? n : 1)), "cudaMalloc");
  check_cuda(cudaMalloc(&dst, sizeof(float) * (n ? n : 1)), "cudaMalloc");
  check_cuda(cudaMemcpy(src, data.data(), sizeof(float) * n, cudaMemcpyHostToDevice), "cudaMemcpy");
  check_nccl(nccl().group_start(), "ncclGroupStart");  // a send to oneself needs its receive in the same group
  check_nccl(nccl().send(src, n, ncclFloat32, 0, comm, stream), "ncclSend");
  check_nccl(nccl().recv(dst, n, ncclFloat32, 0, comm, stream), "ncclRecv");
  check_nccl(nccl().group_end(), "ncclGroupEnd");
  check_cuda(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  std::vector<float> out(n);
  check_cuda(cudaMemcpy(out.data(), dst, sizeof(float) * n, cudaMemcpyDeviceToHost), "cudaMemcpy");
  cudaFree(src), cudaFree(dst), cudaStreamDestroy(stream);
  check_nccl(nccl().comm_destroy(comm), "ncclCommDestroy");
  return out;
}

std::unique_ptr<Transport> make_nccl_transport() {
  nccl();  // a missing library is bad input, before any collective
  return make_staged_transport(std::make_unique<NcclPlane>());
}

}  // namespace onestep::pipeline
