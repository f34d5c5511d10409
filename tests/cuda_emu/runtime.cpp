// CPU emulation of the CUDA runtime's host API (tests/cuda_emu). Device memory is host memory with a ledger:
// each emulated device has a capacity (CUDA_EMU_MEMORY_MIB, default 8192), allocations past it fail like a full
// GPU, new memory is filled with 0xFF bytes (NaN as floats) so reads of memory nobody wrote show, and the copies
// check that a pointer said to be on the device is inside a live allocation. CUDA_EMU_DEVICES (default 1) sets
// how many devices there are. Work is done when the call returns, so streams and events only keep time.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "cuda_runtime_api.h"

namespace {

int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::atoi(v) : fallback;
}
int device_count() {
  static const int n = env_int("CUDA_EMU_DEVICES", 1);
  return n;
}
size_t capacity() {
  static const size_t bytes = static_cast<size_t>(env_int("CUDA_EMU_MEMORY_MIB", 8192)) << 20;
  return bytes;
}

thread_local int current_device = 0;
thread_local cudaError_t last_error = cudaSuccess;

cudaError_t fail_with(cudaError_t e) {
  last_error = e;
  return e;
}

struct Allocation {
  size_t bytes;
  int device;
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

// Inside a live allocation: [p, p + n).
bool on_device(const void* p, size_t n) {
  Ledger& L = ledger();
  std::lock_guard<std::mutex> lock(L.mu);
  const char* c = static_cast<const char*>(p);
  auto it = L.live.upper_bound(c);
  if (it == L.live.begin()) return false;
  --it;
  return c >= it->first && c + n <= it->first + it->second.bytes;
}

cudaError_t allocate(void** p, size_t n) {
  Ledger& L = ledger();
  std::lock_guard<std::mutex> lock(L.mu);
  size_t& used = L.used[static_cast<size_t>(current_device)];
  if (n > capacity() - used) return fail_with(cudaErrorMemoryAllocation);
  char* mem = static_cast<char*>(std::aligned_alloc(256, (n + 255) / 256 * 256 + 256));
  if (!mem) return fail_with(cudaErrorMemoryAllocation);
  std::memset(mem, 0xFF, n);
  L.live[mem] = {n, current_device};
  used += n;
  size_t& high = L.high[static_cast<size_t>(current_device)];
  if (used > high) high = used;
  *p = mem;
  return cudaSuccess;
}

cudaError_t release(void* p) {
  if (!p) return cudaSuccess;
  Ledger& L = ledger();
  std::lock_guard<std::mutex> lock(L.mu);
  auto it = L.live.find(static_cast<const char*>(p));
  if (it == L.live.end()) return fail_with(cudaErrorInvalidValue);  // not from cudaMalloc, or freed twice
  L.used[static_cast<size_t>(it->second.device)] -= it->second.bytes;
  L.live.erase(it);
  std::free(p);
  return cudaSuccess;
}

cudaError_t copy(void* dst, const void* src, size_t n, cudaMemcpyKind kind) {
  if (n == 0) return cudaSuccess;
  const bool dst_device = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
  const bool src_device = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
  if ((dst_device && !on_device(dst, n)) || (src_device && !on_device(src, n)) ||
      (kind == cudaMemcpyDefault && !on_device(dst, n) && !on_device(src, n)))
    return fail_with(cudaErrorInvalidValue);
  std::memmove(dst, src, n);
  return cudaSuccess;
}

cudaError_t fill(void* p, int value, size_t n) {
  if (n && !on_device(p, n)) return fail_with(cudaErrorInvalidValue);
  std::memset(p, value, n);
  return cudaSuccess;
}

struct Event {
  std::chrono::steady_clock::time_point at{};
  bool recorded = false;
};
struct Stream {};

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
  if (d < 0 || d >= device_count()) return fail_with(cudaErrorInvalidDevice);
  current_device = d;
  return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int d) {
  if (d < 0 || d >= device_count()) return fail_with(cudaErrorInvalidDevice);
  std::memset(p, 0, sizeof *p);
  std::snprintf(p->name, sizeof p->name, "CUDA emulation on the CPU");
  p->totalGlobalMem = capacity();
  p->multiProcessorCount = 1;
  p->major = 9;  // what the kernels are written for: Hopper (tensor cores, 227 KiB of shared memory)
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr a, int d) {
  if (d < 0 || d >= device_count()) return fail_with(cudaErrorInvalidDevice);
  switch (a) {
    case cudaDevAttrComputeCapabilityMajor: *v = 9; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *v = 227 * 1024; return cudaSuccess;
  }
  return fail_with(cudaErrorInvalidValue);
}
cudaError_t cudaDeviceCanAccessPeer(int* can, int d, int peer) {
  *can = d != peer && d >= 0 && peer >= 0 && d < device_count() && peer < device_count();
  return cudaSuccess;
}
cudaError_t cudaDeviceEnablePeerAccess(int peer, unsigned) {
  if (peer < 0 || peer >= device_count() || peer == current_device) return fail_with(cudaErrorInvalidDevice);
  Ledger& L = ledger();
  std::lock_guard<std::mutex> lock(L.mu);
  if (!L.peers.insert({current_device, peer}).second) return fail_with(cudaErrorPeerAccessAlreadyEnabled);
  return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  Ledger& L = ledger();
  std::lock_guard<std::mutex> lock(L.mu);
  *total_bytes = capacity();
  *free_bytes = capacity() - L.used[static_cast<size_t>(current_device)];
  return cudaSuccess;
}
cudaError_t cudaDeviceGetDefaultMemPool(cudaMemPool_t* p, int d) {
  if (d < 0 || d >= device_count()) return fail_with(cudaErrorInvalidDevice);
  *p = reinterpret_cast<cudaMemPool_t>(static_cast<uintptr_t>(0x1000 + d));
  return cudaSuccess;
}
// The pool's high-water mark: here that of all the device's memory (the emulation has one ledger).
cudaError_t cudaMemPoolGetAttribute(cudaMemPool_t p, cudaMemPoolAttr a, void* v) {
  if (a != cudaMemPoolAttrUsedMemHigh) return fail_with(cudaErrorInvalidValue);
  Ledger& L = ledger();
  std::lock_guard<std::mutex> lock(L.mu);
  *static_cast<uint64_t*>(v) = L.high[reinterpret_cast<uintptr_t>(p) - 0x1000];
  return cudaSuccess;
}
cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t p, cudaMemPoolAttr a, void* v) {
  if (a != cudaMemPoolAttrUsedMemHigh || *static_cast<uint64_t*>(v) != 0) return fail_with(cudaErrorInvalidValue);
  Ledger& L = ledger();
  std::lock_guard<std::mutex> lock(L.mu);
  const size_t d = reinterpret_cast<uintptr_t>(p) - 0x1000;
  L.high[d] = L.used[d];
  return cudaSuccess;
}

cudaError_t cudaMalloc(void** p, size_t n) { return allocate(p, n); }
cudaError_t cudaFree(void* p) { return release(p); }
cudaError_t cudaMallocAsync(void** p, size_t n, cudaStream_t) { return allocate(p, n); }
cudaError_t cudaFreeAsync(void* p, cudaStream_t) { return release(p); }
cudaError_t cudaMemcpy(void* dst, const void* src, size_t n, cudaMemcpyKind kind) { return copy(dst, src, n, kind); }
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t n, cudaMemcpyKind kind, cudaStream_t) {
  return copy(dst, src, n, kind);
}
cudaError_t cudaMemset(void* p, int value, size_t n) { return fill(p, value, n); }
cudaError_t cudaMemsetAsync(void* p, int value, size_t n, cudaStream_t) { return fill(p, value, n); }

cudaError_t cudaStreamCreate(cudaStream_t* s) {
  *s = reinterpret_cast<cudaStream_t>(new Stream);
  return cudaSuccess;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) { return cudaStreamCreate(s); }
cudaError_t cudaStreamDestroy(cudaStream_t s) {
  delete reinterpret_cast<Stream*>(s);
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaStreamQuery(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t e, unsigned) {
  return e ? cudaSuccess : fail_with(cudaErrorInvalidValue);
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
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t) {
  if (!e) return fail_with(cudaErrorInvalidValue);
  auto* ev = reinterpret_cast<Event*>(e);
  ev->at = std::chrono::steady_clock::now();
  ev->recorded = true;
  return cudaSuccess;
}
cudaError_t cudaEventQuery(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t stop) {
  auto *a = reinterpret_cast<Event*>(start), *b = reinterpret_cast<Event*>(stop);
  if (!a || !b || !a->recorded || !b->recorded) return fail_with(cudaErrorInvalidValue);
  *ms = std::chrono::duration<float, std::milli>(b->at - a->at).count();
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
