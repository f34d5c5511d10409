// CPU emulation of NCCL (tests/cuda_emu): communicators and point-to-point sends and receives, the part of NCCL
// the nccl transport (src/nccl) uses, so that its pipelines of one process per emulated GPU run under mpirun.
//
// A communicator is named by its unique id: the MPI world rank that made the id and a serial number there.
// Starting one (ncclCommInitRank) sends every member's world rank to the id's maker, which sends the table back.
// Payloads are MPI messages on MPI_COMM_WORLD with one tag per communicator, so MPI's in-order matching per
// (source, tag) is NCCL's in-order matching per (peer, communicator). The project's own MPI traffic runs on
// communicators of its own (MPI_Comm_dup), so these tags meet none of it.
//
// When an operation runs: NCCL queues it on a stream and returns. Here a group's operations run when the group ends
// (a call outside ncclGroupStart/End is a group of its own), once the streams of its sends have done the work queued
// before them. A send copies its bytes out then, and they leave at once (as NCCL's buffered small messages do: the
// stream does not wait for the peer); a receive waits, with a deadline, until its bytes arrive and then queues
// their copy into its buffer on its stream, so that with CUDA_EMU_STREAMS=async a caller that reads the buffer
// without waiting for that stream reads stale memory, as it would on a GPU.
//
// What fails loudly here and would hang or corrupt on a GPU: a receive whose send never comes (within
// CUDA_EMU_NCCL_TIMEOUT_S, default 120 s), a message shorter than its receive (a longer one is MPI_ERR_TRUNCATE),
// a buffer outside the communicator's device memory, a peer out of range, a send to oneself without its receive in
// the same group, a communicator whose start some member never joins. Not emulated: collectives, and ids made by
// a process outside the communicator (the maker must be a member).
#include "nccl.h"

#include <mpi.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "streams.h"

struct ncclComm {
  int nranks = 1, rank = 0, device = 0;
  int maker = 0, serial = 0;                // the id: who made it, and its number there
  std::vector<int> world;                   // MPI world rank of each rank
  std::deque<std::vector<char>> to_self;    // sends to oneself, until the receive of the same group
  int tag() const;
};

namespace {

// Inside ncclUniqueId::internal.
constexpr char kMagic[] = "onestep cuda_emu nccl";
struct IdFields {
  char magic[sizeof kMagic];
  int maker, serial;
};
static_assert(sizeof(IdFields) <= NCCL_UNIQUE_ID_BYTES);

// MPI tags on MPI_COMM_WORLD: joining a communicator, its table, and each communicator's payloads.
constexpr int kJoinTag = 1 << 28, kTableTag = 2 << 28, kDataTag = 3 << 28;
constexpr int kMaxSerial = 1 << 16;  // ids one process may make
constexpr int kMaxWorld = 1 << 12;   // world ranks: kDataTag + maker * kMaxSerial + serial < 2^30

std::mutex mu;  // guards everything below (the ops of one group run under it)
int next_serial = 0;

[[noreturn]] void fail(const std::string& what);

bool mpi_up() {
  int up = 0, down = 0;
  MPI_Initialized(&up);
  MPI_Finalized(&down);
  return up && !down;
}
int world_rank() {
  int r = 0;
  if (mpi_up()) MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}

void fail(const std::string& what) {
  std::fprintf(stderr, "NCCL emulation (world rank %d): %s\n", world_rank(), what.c_str());
  std::fflush(stderr);
  std::abort();
}

double timeout_s() {
  const char* v = std::getenv("CUDA_EMU_NCCL_TIMEOUT_S");
  return v && *v ? std::atof(v) : 120.0;
}

// Every request complete (MPI progressing meanwhile), or a loud failure naming what never came.
std::vector<MPI_Status> wait_all(std::vector<MPI_Request>& reqs, const std::string& what) {
  std::vector<MPI_Status> st(reqs.size());
  if (reqs.empty()) return st;  // (a one-rank communicator needs no MPI at all)
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s());
  for (;;) {
    int done = 0;
    MPI_Testall(static_cast<int>(reqs.size()), reqs.data(), &done, st.data());
    if (done) return st;
    if (std::chrono::steady_clock::now() > deadline)
      fail(what + ": nothing within " + std::to_string(timeout_s()) + " s (on a GPU the stream would hang)");
    std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
}

// Sends whose bytes MPI still holds.
struct InFlight {
  ncclComm* comm;
  std::vector<char> bytes;
  MPI_Request req = MPI_REQUEST_NULL;
};
std::list<InFlight> in_flight;
void reap() {
  if (in_flight.empty()) return;
  for (auto it = in_flight.begin(); it != in_flight.end();) {
    int done = 0;
    MPI_Test(&it->req, &done, MPI_STATUS_IGNORE);
    it = done ? in_flight.erase(it) : std::next(it);
  }
}

size_t type_size(ncclDataType_t t) {
  switch (t) {
    case ncclInt8: case ncclUint8: return 1;
    case ncclFloat16: case ncclBfloat16: return 2;
    case ncclInt32: case ncclUint32: case ncclFloat32: return 4;
    case ncclInt64: case ncclUint64: case ncclFloat64: return 8;
    default: fail("data type " + std::to_string(static_cast<int>(t)) + " is not emulated");
  }
}

// The tags above must be valid MPI tags (MPI promises only up to 32767; Open MPI allows 2^31 - 1).
void check_tag_space() {
  int* ub = nullptr;
  int found = 0;
  MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_TAG_UB, &ub, &found);
  if (!found || *ub < kDataTag + kMaxWorld * kMaxSerial - 1)
    fail("this MPI's largest tag is below the " + std::to_string(kDataTag + kMaxWorld * kMaxSerial - 1) + " it needs");
}

// Every member's world rank, for communicators started together (one group, or one call): members tell the maker,
// the maker answers with the table. Non-blocking throughout, so a group may start communicators in any order.
void start(const std::vector<ncclComm*>& comms) {
  const int me = world_rank();
  std::vector<MPI_Request> reqs;
  std::vector<std::vector<int>> joined(comms.size());  // at the maker: (rank, world rank) of each other member
  std::vector<int> mine(2 * comms.size());             // at a member: its own (rank, world rank)
  for (size_t i = 0; i < comms.size(); ++i) {
    ncclComm& c = *comms[i];
    c.world.assign(static_cast<size_t>(c.nranks), -1);
    c.world[static_cast<size_t>(c.rank)] = me;
    if (c.nranks == 1) continue;
    if (!mpi_up()) fail("a communicator of " + std::to_string(c.nranks) + " ranks needs MPI, which is not initialized");
    check_tag_space();
    if (c.maker == me) {
      joined[i].resize(2 * static_cast<size_t>(c.nranks - 1));
      for (int k = 0; k < c.nranks - 1; ++k) {
        reqs.emplace_back();
        MPI_Irecv(&joined[i][2 * static_cast<size_t>(k)], 2, MPI_INT, MPI_ANY_SOURCE, kJoinTag + c.serial,
                  MPI_COMM_WORLD, &reqs.back());
      }
    } else {
      mine[2 * i] = c.rank, mine[2 * i + 1] = me;
      reqs.emplace_back();
      MPI_Isend(&mine[2 * i], 2, MPI_INT, c.maker, kJoinTag + c.serial, MPI_COMM_WORLD, &reqs.back());
    }
  }
  wait_all(reqs, "ncclCommInitRank: a member never joined");
  reqs.clear();
  for (size_t i = 0; i < comms.size(); ++i) {
    ncclComm& c = *comms[i];
    if (c.nranks == 1) continue;
    if (c.maker == me) {
      for (size_t k = 0; k < joined[i].size(); k += 2) {
        const int r = joined[i][k];
        if (r < 0 || r >= c.nranks || c.world[static_cast<size_t>(r)] != -1)
          fail("ncclCommInitRank: two processes joined one communicator as rank " + std::to_string(r));
        c.world[static_cast<size_t>(r)] = joined[i][k + 1];
      }
      for (int r = 0; r < c.nranks; ++r)
        if (r != c.rank) {
          reqs.emplace_back();
          MPI_Isend(c.world.data(), c.nranks, MPI_INT, c.world[static_cast<size_t>(r)], kTableTag + c.serial,
                    MPI_COMM_WORLD, &reqs.back());
        }
    } else {
      reqs.emplace_back();
      MPI_Irecv(c.world.data(), c.nranks, MPI_INT, c.maker, kTableTag + c.serial, MPI_COMM_WORLD, &reqs.back());
    }
  }
  wait_all(reqs, "ncclCommInitRank: the communicator's table never came (the process that made the id must be a "
                 "member, and every member must start it)");
}

struct Op {
  bool send;
  ncclComm* comm;
  void* buf;
  size_t bytes;
  int peer;
  cudaStream_t stream;
};

// Queues the received bytes' copy into the receive's buffer on its stream. With async streams the copy first waits
// a little, as if the bytes were still on the wire: a reader that does not wait for the stream then reads stale
// memory nearly every time instead of now and then.
void land(const Op& op, std::shared_ptr<std::vector<char>> bytes) {
  emu::enqueue(op.stream, [buf = op.buf, bytes] {
    if (emu::async_streams()) std::this_thread::sleep_for(std::chrono::milliseconds(2));
    std::memcpy(buf, bytes->data(), bytes->size());
  });
}

// The operations of one group, run as the group ends: sends leave first, then the receives wait for their bytes.
void run(const std::vector<ncclComm*>& starting, const std::vector<Op>& ops) {
  std::lock_guard<std::mutex> lock(mu);
  reap();
  if (!starting.empty()) start(starting);
  for (const Op& op : ops) {
    if (!op.send || op.bytes == 0) continue;
    emu::wait_stream(op.stream);  // the work queued before the send has written its bytes
    const char* data = static_cast<const char*>(op.buf);
    if (op.peer == op.comm->rank) {
      op.comm->to_self.emplace_back(data, data + op.bytes);
      continue;
    }
    InFlight& f = in_flight.emplace_back(InFlight{op.comm, std::vector<char>(data, data + op.bytes)});
    MPI_Isend(f.bytes.data(), static_cast<int>(op.bytes), MPI_BYTE, op.comm->world[static_cast<size_t>(op.peer)],
              op.comm->tag(), MPI_COMM_WORLD, &f.req);
  }
  std::vector<MPI_Request> reqs;
  std::vector<std::pair<const Op*, std::shared_ptr<std::vector<char>>>> arrivals;
  for (const Op& op : ops) {
    if (op.send || op.bytes == 0) continue;
    auto bytes = std::make_shared<std::vector<char>>(op.bytes);
    if (op.peer == op.comm->rank) {
      if (op.comm->to_self.empty())
        fail("ncclRecv from rank " + std::to_string(op.peer) + " (itself) with no send to itself in the same group");
      *bytes = std::move(op.comm->to_self.front());
      op.comm->to_self.pop_front();
      if (bytes->size() != op.bytes)
        fail("ncclRecv of " + std::to_string(op.bytes) + " bytes matched a send of " + std::to_string(bytes->size()));
      land(op, std::move(bytes));
      continue;
    }
    reqs.emplace_back();
    MPI_Irecv(bytes->data(), static_cast<int>(op.bytes), MPI_BYTE, op.comm->world[static_cast<size_t>(op.peer)],
              op.comm->tag(), MPI_COMM_WORLD, &reqs.back());
    arrivals.emplace_back(&op, bytes);
  }
  std::string what = "ncclRecv";
  for (const auto& [op, bytes] : arrivals) what += " from rank " + std::to_string(op->peer);
  const std::vector<MPI_Status> st = wait_all(reqs, what);
  for (size_t i = 0; i < arrivals.size(); ++i) {
    const auto& [op, bytes] = arrivals[i];
    int got = 0;
    MPI_Get_count(&st[i], MPI_BYTE, &got);
    if (static_cast<size_t>(got) != op->bytes)
      fail("ncclRecv of " + std::to_string(op->bytes) + " bytes from rank " + std::to_string(op->peer) +
           " matched a send of " + std::to_string(got) + " bytes");
    land(*op, bytes);
  }
  for (const Op& op : ops)
    if (!op.comm->to_self.empty()) fail("ncclSend to itself with no receive from itself in the same group");
}

struct Group {
  int depth = 0;
  std::vector<ncclComm*> starting;
  std::vector<Op> ops;
};
thread_local Group group;

ncclResult_t queue(Op op, ncclDataType_t type, size_t count) {
  if (!op.comm) return ncclInvalidArgument;
  const char* name = op.send ? "ncclSend" : "ncclRecv";
  if (op.peer < 0 || op.peer >= op.comm->nranks)
    fail(std::string(name) + ": peer " + std::to_string(op.peer) + " of a communicator of " +
         std::to_string(op.comm->nranks) + " ranks");
  op.bytes = count * type_size(type);
  if (op.bytes > static_cast<size_t>(INT32_MAX)) fail(std::string(name) + ": messages over 2 GiB are not emulated");
  if (op.bytes && emu::device_of(op.buf, op.bytes) != op.comm->device)
    fail(std::string(name) + ": the buffer (" + std::to_string(op.bytes) + " bytes) is not memory of device " +
         std::to_string(op.comm->device) + ", the communicator's");
  if (group.depth > 0) {
    group.ops.push_back(op);
  } else {
    run({}, {op});
  }
  return ncclSuccess;
}

}  // namespace

int ncclComm::tag() const { return kDataTag + maker * kMaxSerial + serial; }

ncclResult_t ncclGetVersion(int* version) {
  *version = NCCL_VERSION_CODE;
  return ncclSuccess;
}

ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
  std::lock_guard<std::mutex> lock(mu);
  IdFields f{};
  std::memcpy(f.magic, kMagic, sizeof kMagic);
  f.maker = world_rank();
  f.serial = next_serial++;
  if (f.serial >= kMaxSerial || f.maker >= kMaxWorld) fail("more ids or ranks than the emulation's MPI tags hold");
  std::memset(id->internal, 0, sizeof id->internal);
  std::memcpy(id->internal, &f, sizeof f);
  return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank) {
  IdFields f;
  std::memcpy(&f, id.internal, sizeof f);
  if (std::memcmp(f.magic, kMagic, sizeof kMagic) != 0 || nranks < 1 || rank < 0 || rank >= nranks)
    return ncclInvalidArgument;
  auto* c = new ncclComm;
  c->nranks = nranks, c->rank = rank, c->maker = f.maker, c->serial = f.serial;
  cudaGetDevice(&c->device);
  *comm = c;
  if (group.depth > 0) {
    group.starting.push_back(c);
  } else {
    run({c}, {});
  }
  return ncclSuccess;
}

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  if (!comm) return ncclInvalidArgument;
  std::lock_guard<std::mutex> lock(mu);
  std::vector<MPI_Request> mine;
  for (InFlight& f : in_flight)
    if (f.comm == comm) mine.push_back(f.req);
  if (!mine.empty()) wait_all(mine, "ncclCommDestroy: a peer never received what this rank sent it");
  in_flight.remove_if([&](const InFlight& f) { return f.comm == comm; });
  delete comm;
  return ncclSuccess;
}

// The error path: nothing waits. Sends still in flight keep their bytes until they complete or MPI ends.
ncclResult_t ncclCommAbort(ncclComm_t comm) {
  if (!comm) return ncclInvalidArgument;
  std::lock_guard<std::mutex> lock(mu);
  for (InFlight& f : in_flight)
    if (f.comm == comm) f.comm = nullptr;
  delete comm;
  return ncclSuccess;
}

const char* ncclGetErrorString(ncclResult_t r) {
  switch (r) {
    case ncclSuccess: return "no error";
    case ncclInvalidArgument: return "invalid argument (run with NCCL_DEBUG=WARN for details)";
    case ncclInvalidUsage: return "invalid usage (run with NCCL_DEBUG=WARN for details)";
    default: return "unhandled error (emulated NCCL)";
  }
}

ncclResult_t ncclGroupStart() {
  ++group.depth;
  return ncclSuccess;
}

ncclResult_t ncclGroupEnd() {
  if (group.depth == 0) return ncclInvalidUsage;
  if (--group.depth > 0) return ncclSuccess;
  std::vector<ncclComm*> starting = std::move(group.starting);
  std::vector<Op> ops = std::move(group.ops);
  group.starting.clear(), group.ops.clear();
  run(starting, ops);
  return ncclSuccess;
}

ncclResult_t ncclSend(const void* sendbuff, size_t count, ncclDataType_t datatype, int peer, ncclComm_t comm,
                      cudaStream_t stream) {
  return queue({true, comm, const_cast<void*>(sendbuff), 0, peer, stream}, datatype, count);
}

ncclResult_t ncclRecv(void* recvbuff, size_t count, ncclDataType_t datatype, int peer, ncclComm_t comm,
                      cudaStream_t stream) {
  return queue({false, comm, recvbuff, 0, peer, stream}, datatype, count);
}
