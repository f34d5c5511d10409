// CPU emulation of the CUDA runtime's host API (tests/cuda_emu). Device memory is host memory with a ledger:
// each emulated device has a capacity (CUDA_EMU_MEMORY_MIB, default 8192), allocations past it fail like a full
// GPU, new memory is filled with 0xFF bytes (NaN as floats) so reads of memory nobody wrote show, and the copies
// check that a pointer said to be on the device is inside a live allocation. Each allocation ends against a page
// the process may not touch (and a page past its start is one too), so a kernel that reads or writes past its end
// faults at once (the emulation names the
// kernel, block and thread); the few bytes between the end and that page (allocations are 256-byte aligned, as
// CUDA's are) hold a canary that is checked when the allocation is freed. CUDA_EMU_DEVICES (default 1) sets
// how many devices there are, CUDA_EMU_ARCH (default 90) their compute capability and shared memory. Device work
// runs in stream order (streams.h): at once by default, or on one worker thread per stream with
// CUDA_EMU_STREAMS=async, where events and synchronizations are what orders the streams.
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "cuda_runtime_api.h"
#include "streams.h"

namespace {

int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::atoi(v) : fallback;
}
int device_count() {
  static const int n = env_int("CUDA_EMU_DEVICES", 1);
  return n;
}
// The compute capability the emulated devices report (CUDA_EMU_ARCH, default 90: Hopper) and the shared memory per
// block a kernel may opt in to on it: what the host code checks before it launches.
int arch() {
  static const int a = env_int("CUDA_EMU_ARCH", 90);
  return a;
}
size_t capacity() {
  static const size_t bytes = static_cast<size_t>(env_int("CUDA_EMU_MEMORY_MIB", 8192)) << 20;
  return bytes;
}

bool valid_device(int d) { return d >= 0 && d < device_count(); }

thread_local int current_device = 0;
thread_local cudaError_t last_error = cudaSuccess;

cudaError_t fail_with(cudaError_t e) {
  last_error = e;
  return e;
}

struct Allocation {
  size_t bytes;
  int device;
  char* mapping;  // the pages holding it, the guard page last
  size_t mapped;
};
struct Ledger {
  std::mutex mu;
  std::map<const char*, Allocation> live;
  std::vector<size_t> used, high;
  std::set<std::pair<int, int>> peers;
  Ledger() : used(static_cast<size_t>(device_count()), 0), high(used) {}
};
Ledger& ledger() {
  static Ledger* l = new Ledger;  // never destroyed: frees may come from static destructors
  return *l;
}

}  // namespace

namespace emu {
// The device of the live allocation that holds [p, p + n) (n = 0: p may also be one past its end), or -1.
int device_of(const void* p, size_t n) {
  Ledger& L = ledger();
  std::lock_guard<std::mutex> lock(L.mu);
  const char* c = static_cast<const char*>(p);
  auto it = L.live.upper_bound(c);
  if (it == L.live.begin()) return -1;
  --it;
  return c >= it->first && c + n <= it->first + it->second.bytes ? it->second.device : -1;
}
size_t shared_optin_bytes() {
  switch (arch()) {
    case 80: return 163 * 1024;  // A100
    case 86: case 89: return 99 * 1024;  // consumer Ampere and Ada
    default: return 227 * 1024;  // Hopper
  }
}
}  // namespace emu

namespace {
bool on_device(const void* p, size_t n) { return emu::device_of(p, n) >= 0; }

constexpr unsigned char kCanary = 0xA5;
size_t aligned_size(size_t n) { return std::max<size_t>(256, (n + 255) / 256 * 256); }

// A fault in a guard page (or anywhere): the kernel and thread that made it, then abort.
void on_fault(int, siginfo_t* info, void*) { emu::report_fault(info->si_addr); }
void install_fault_handler() {
  static const bool installed = [] {
    struct sigaction sa {};
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    return sigaction(SIGSEGV, &sa, nullptr) == 0;
  }();
  (void)installed;
}

cudaError_t allocate(void** p, size_t n) {
  Ledger& L = ledger();
  std::lock_guard<std::mutex> lock(L.mu);
  size_t& used = L.used[static_cast<size_t>(current_device)];
  if (n > capacity() - used) return fail_with(cudaErrorMemoryAllocation);
  install_fault_handler();
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE)), span = aligned_size(n);
  const size_t mapped = (span + page - 1) / page * page + 2 * page;
  void* m = mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) return fail_with(cudaErrorMemoryAllocation);
  char* mapping = static_cast<char*>(m);
  mprotect(mapping, page, PROT_NONE);                  // a guard page before (an index below 0 that far faults)
  mprotect(mapping + mapped - page, page, PROT_NONE);  // and the one after
  char* mem = mapping + mapped - page - span;          // ends at the guard, 256-byte aligned
  std::memset(mem, 0xFF, n);
  std::memset(mem + n, kCanary, span - n);
  L.live[mem] = {n, current_device, mapping, mapped};
  used += n;
  size_t& high = L.high[static_cast<size_t>(current_device)];
  if (used > high) high = used;
  *p = mem;
  return cudaSuccess;
}

bool is_allocation(const void* p) {
  Ledger& L = ledger();
  std::lock_guard<std::mutex> lock(L.mu);
  return L.live.count(static_cast<const char*>(p)) > 0;
}

// Checked when called; the memory goes back when the stream reaches the free (cudaFreeAsync) or at once.
cudaError_t release(void* p, cudaStream_t stream, bool in_stream_order) {
  if (!p) return cudaSuccess;
  if (!is_allocation(p)) return fail_with(cudaErrorInvalidValue);  // not from cudaMalloc, or freed twice
  auto give_back = [p] {
    Ledger& L = ledger();
    std::lock_guard<std::mutex> lock(L.mu);
    auto it = L.live.find(static_cast<const char*>(p));
    const Allocation a = it->second;
    const char* end = it->first + a.bytes;
    size_t overrun = 0;  // how far past the end the last changed canary byte lies
    for (size_t i = 0; i < aligned_size(a.bytes) - a.bytes; ++i)
      if (static_cast<unsigned char>(end[i]) != kCanary) overrun = i + 1;
    if (overrun) {
      std::fprintf(stderr, "CUDA emulation: something wrote up to %zu byte(s) past the end of a device allocation of "
                           "%zu bytes (found when it was freed)\n", overrun, a.bytes);
      std::abort();
    }
    L.used[static_cast<size_t>(a.device)] -= a.bytes;
    L.live.erase(it);
    munmap(a.mapping, a.mapped);
  };
  if (in_stream_order) {
    emu::enqueue(stream, give_back);
  } else {
    emu::wait_all_streams();  // cudaFree waits for the device's work
    give_back();
  }
  return cudaSuccess;
}

// A copy in stream order. From host memory, the source is read when called (CUDA stages pageable memory);
// into host memory, or when `blocking`, the call returns once the stream has done it.
cudaError_t copy(void* dst, const void* src, size_t n, cudaMemcpyKind kind, cudaStream_t stream, bool blocking) {
  if (n == 0) return cudaSuccess;
  bool dst_device = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
  bool src_device = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
  if ((dst_device && !on_device(dst, n)) || (src_device && !on_device(src, n))) return fail_with(cudaErrorInvalidValue);
  if (kind == cudaMemcpyDefault) {
    dst_device = on_device(dst, n), src_device = on_device(src, n);
    if (!dst_device && !src_device) return fail_with(cudaErrorInvalidValue);
  }
  if (src_device) {
    emu::enqueue(stream, [=] { std::memmove(dst, src, n); });
  } else {
    auto staged = std::make_shared<std::vector<char>>(static_cast<const char*>(src), static_cast<const char*>(src) + n);
    emu::enqueue(stream, [=] { std::memcpy(dst, staged->data(), n); });
  }
  if (blocking || !dst_device) emu::wait_stream(stream);
  return cudaSuccess;
}

cudaError_t fill(void* p, int value, size_t n, cudaStream_t stream) {
  if (n && !on_device(p, n)) return fail_with(cudaErrorInvalidValue);
  emu::enqueue(stream, [=] { std::memset(p, value, n); });
  return cudaSuccess;
}

// An event: the record that was issued last, the last one a stream has reached, and when.
struct EventState {
  std::mutex mu;
  std::condition_variable reached;
  uint64_t issued = 0, done = 0;
  std::chrono::steady_clock::time_point at{};
};
struct Event {
  std::shared_ptr<EventState> state = std::make_shared<EventState>();  // queued waits keep it past a destroy
};
const std::shared_ptr<EventState>& state_of(cudaEvent_t e) { return reinterpret_cast<Event*>(e)->state; }

}  // namespace

cudaError_t cudaGetDeviceCount(int* n) {
  *n = device_count();
  return *n > 0 ? cudaSuccess : fail_with(cudaErrorNoDevice);
}
cudaError_t cudaGetDevice(int* d) {
  *d = current_device;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int d) {
  if (!valid_device(d)) return fail_with(cudaErrorInvalidDevice);
  current_device = d;
  return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int d) {
  if (!valid_device(d)) return fail_with(cudaErrorInvalidDevice);
  std::memset(p, 0, sizeof *p);
  std::snprintf(p->name, sizeof p->name, "CUDA emulation on the CPU");
  p->totalGlobalMem = capacity();
  p->multiProcessorCount = 1;
  p->major = arch() / 10;
  p->minor = arch() % 10;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr a, int d) {
  if (!valid_device(d)) return fail_with(cudaErrorInvalidDevice);
  switch (a) {
    case cudaDevAttrComputeCapabilityMajor: *v = arch() / 10; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *v = static_cast<int>(emu::shared_optin_bytes()); return cudaSuccess;
  }
  return fail_with(cudaErrorInvalidValue);
}
cudaError_t cudaDeviceCanAccessPeer(int* can, int d, int peer) {
  *can = d != peer && valid_device(d) && valid_device(peer);
  return cudaSuccess;
}
cudaError_t cudaDeviceEnablePeerAccess(int peer, unsigned) {
  if (!valid_device(peer) || peer == current_device) return fail_with(cudaErrorInvalidDevice);
  Ledger& L = ledger();
  std::lock_guard<std::mutex> lock(L.mu);
  if (!L.peers.insert({current_device, peer}).second) return fail_with(cudaErrorPeerAccessAlreadyEnabled);
  return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize() {
  emu::wait_all_streams();
  return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  Ledger& L = ledger();
  std::lock_guard<std::mutex> lock(L.mu);
  *total_bytes = capacity();
  *free_bytes = capacity() - L.used[static_cast<size_t>(current_device)];
  return cudaSuccess;
}
// A device's default pool is a handle that encodes the device (one ledger per device holds its memory).
constexpr uintptr_t kPoolBase = 0x1000;
cudaError_t cudaDeviceGetDefaultMemPool(cudaMemPool_t* p, int d) {
  if (!valid_device(d)) return fail_with(cudaErrorInvalidDevice);
  *p = reinterpret_cast<cudaMemPool_t>(kPoolBase + static_cast<uintptr_t>(d));
  return cudaSuccess;
}
static size_t pool_device(cudaMemPool_t p) { return reinterpret_cast<uintptr_t>(p) - kPoolBase; }
// The pool's high-water mark: here that of all the device's memory (the emulation has one ledger).
cudaError_t cudaMemPoolGetAttribute(cudaMemPool_t p, cudaMemPoolAttr a, void* v) {
  if (a != cudaMemPoolAttrUsedMemHigh) return fail_with(cudaErrorInvalidValue);
  Ledger& L = ledger();
  std::lock_guard<std::mutex> lock(L.mu);
  *static_cast<uint64_t*>(v) = L.high[pool_device(p)];
  return cudaSuccess;
}
cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t p, cudaMemPoolAttr a, void* v) {
  if (a != cudaMemPoolAttrUsedMemHigh || *static_cast<uint64_t*>(v) != 0) return fail_with(cudaErrorInvalidValue);
  Ledger& L = ledger();
  std::lock_guard<std::mutex> lock(L.mu);
  const size_t d = pool_device(p);
  L.high[d] = L.used[d];
  return cudaSuccess;
}

cudaError_t cudaMalloc(void** p, size_t n) { return allocate(p, n); }
cudaError_t cudaFree(void* p) { return release(p, nullptr, false); }
cudaError_t cudaMallocAsync(void** p, size_t n, cudaStream_t) { return allocate(p, n); }
cudaError_t cudaFreeAsync(void* p, cudaStream_t s) { return release(p, s, true); }
cudaError_t cudaMemcpy(void* dst, const void* src, size_t n, cudaMemcpyKind kind) {
  return copy(dst, src, n, kind, nullptr, true);
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t n, cudaMemcpyKind kind, cudaStream_t s) {
  return copy(dst, src, n, kind, s, false);
}
cudaError_t cudaMemset(void* p, int value, size_t n) { return fill(p, value, n, nullptr); }
cudaError_t cudaMemsetAsync(void* p, int value, size_t n, cudaStream_t s) { return fill(p, value, n, s); }

cudaError_t cudaStreamCreate(cudaStream_t* s) {
  *s = emu::create_stream();
  return cudaSuccess;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) { return cudaStreamCreate(s); }
cudaError_t cudaStreamDestroy(cudaStream_t s) {
  if (!s || s == cudaStreamPerThread || s == cudaStreamLegacy) return fail_with(cudaErrorInvalidValue);
  emu::destroy_stream(s);
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t s) {
  emu::wait_stream(s);
  return cudaSuccess;
}
cudaError_t cudaStreamQuery(cudaStream_t s) { return emu::stream_idle(s) ? cudaSuccess : cudaErrorNotReady; }
// The stream waits for the event's latest record as of this call; an event never recorded is no wait.
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned) {
  if (!e) return fail_with(cudaErrorInvalidValue);
  std::shared_ptr<EventState> st = state_of(e);
  uint64_t target;
  {
    std::lock_guard<std::mutex> lock(st->mu);
    target = st->issued;
  }
  if (target == 0) return cudaSuccess;
  emu::enqueue(s, [st, target] {
    std::unique_lock<std::mutex> lock(st->mu);
    st->reached.wait(lock, [&] { return st->done >= target; });
  });
  return cudaSuccess;
}
cudaError_t cudaEventCreate(cudaEvent_t* e) {
  *e = reinterpret_cast<cudaEvent_t>(new Event);
  return cudaSuccess;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned) { return cudaEventCreate(e); }
cudaError_t cudaEventDestroy(cudaEvent_t e) {
  if (!e) return fail_with(cudaErrorInvalidValue);
  delete reinterpret_cast<Event*>(e);
  return cudaSuccess;
}
// A record is reached when the stream gets to it: then its time is taken (cudaEventElapsedTime measures the
// emulated work between two records).
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
  if (!e) return fail_with(cudaErrorInvalidValue);
  std::shared_ptr<EventState> st = state_of(e);
  uint64_t id;
  {
    std::lock_guard<std::mutex> lock(st->mu);
    id = ++st->issued;
  }
  emu::enqueue(s, [st, id] {
    std::lock_guard<std::mutex> lock(st->mu);
    if (id > st->done) st->done = id, st->at = std::chrono::steady_clock::now();
    st->reached.notify_all();
  });
  return cudaSuccess;
}
cudaError_t cudaEventQuery(cudaEvent_t e) {
  if (!e) return fail_with(cudaErrorInvalidValue);
  EventState& st = *state_of(e);
  std::lock_guard<std::mutex> lock(st.mu);
  return st.done >= st.issued ? cudaSuccess : cudaErrorNotReady;
}
cudaError_t cudaEventSynchronize(cudaEvent_t e) {
  if (!e) return fail_with(cudaErrorInvalidValue);
  EventState& st = *state_of(e);
  std::unique_lock<std::mutex> lock(st.mu);
  const uint64_t target = st.issued;
  st.reached.wait(lock, [&] { return st.done >= target; });
  return cudaSuccess;
}
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t stop) {
  if (!start || !stop) return fail_with(cudaErrorInvalidValue);
  struct Seen {
    uint64_t issued, done;
    std::chrono::steady_clock::time_point at;
  };
  auto look = [](EventState& st) {
    std::lock_guard<std::mutex> lock(st.mu);
    return Seen{st.issued, st.done, st.at};
  };
  const Seen a = look(*state_of(start)), b = look(*state_of(stop));
  if (a.issued == 0 || b.issued == 0) return fail_with(cudaErrorInvalidValue);
  if (a.done < a.issued || b.done < b.issued) return cudaErrorNotReady;
  *ms = std::chrono::duration<float, std::milli>(b.at - a.at).count();
  return cudaSuccess;
}

cudaError_t cudaGetLastError() {
  const cudaError_t e = last_error;
  last_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() { return last_error; }
const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorNotReady: return "cudaErrorNotReady";
    case cudaErrorPeerAccessAlreadyEnabled: return "cudaErrorPeerAccessAlreadyEnabled";
  }
  return "cudaErrorUnknown";
}
const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    default: return cudaGetErrorName(e);
  }
}

namespace emu {
// Called by launch.cpp on a bad launch configuration: the error the next cudaGetLastError returns.
void set_launch_error(cudaError_t e) { last_error = e; }
}  // namespace emu
