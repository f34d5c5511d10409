#include "core/buffer.h"

#include <algorithm>
#include <cstdio>
#include <mutex>
#include <string>
#include <unordered_map>

#include "core/error.h"

#ifdef ONESTEP_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace onestep {

const char* device_name(Device d) { return d == Device::cpu ? "cpu" : "cuda"; }

#ifdef ONESTEP_HAVE_CUDA

namespace device_memory {
namespace {
void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) internal_error(std::string("CUDA ") + what + ": " + cudaGetErrorString(e));
}

// cudaMalloc; out of memory is bad input naming the bytes needed and free.
void* raw_alloc(size_t bytes) {
  void* p = nullptr;
  const cudaError_t e = cudaMalloc(&p, bytes);
  if (e == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    auto mib = [](size_t b) {  // one decimal: a small allocation that does not fit must not read "0 MiB"
      char s[32];
      std::snprintf(s, sizeof s, "%.1f MiB", static_cast<double>(b) / (1 << 20));
      return std::string(s);
    };
    bad_input("cuda", "out of GPU memory: " + mib(bytes) + " more were needed, " + mib(free_b) + " of " +
                          mib(total_b) + " are free (use a smaller train.micro_batch_size or model)");
  }
  check(e, "cudaMalloc");
  return p;
}

std::mutex g_stats_mu;
std::unordered_map<const void*, size_t> g_sizes;  // live allocations
MemoryStats g_stats;
}  // namespace

MemoryStats memory_stats() {
  std::lock_guard<std::mutex> lock(g_stats_mu);
  return g_stats;
}
void reset_peak() {
  std::lock_guard<std::mutex> lock(g_stats_mu);
  g_stats.peak = g_stats.in_use;
}

void* alloc(size_t bytes) {
  void* p = raw_alloc(bytes);
  std::lock_guard<std::mutex> lock(g_stats_mu);
  g_sizes[p] = bytes;
  g_stats.in_use += static_cast<int64_t>(bytes);
  g_stats.peak = std::max(g_stats.peak, g_stats.in_use);
  return p;
}
void release(void* p) {  // never throws: called from destructors
  {
    std::lock_guard<std::mutex> lock(g_stats_mu);
    auto it = g_sizes.find(p);
    if (it != g_sizes.end()) g_stats.in_use -= static_cast<int64_t>(it->second), g_sizes.erase(it);
  }
  cudaFree(p);
  cudaGetLastError();  // a failed free must not be reported later as the error of an unrelated launch
}

// Every host thread queues its work on its own default stream (CUDA_API_PER_THREAD_DEFAULT_STREAM, set by the
// build): the stages of an in-process pipeline run concurrently on one GPU. A buffer one thread fills may be
// read by another (a message, a weight version, a whole-model gather), so these calls return only when the
// device has finished them: cudaMemset, device-to-device cudaMemcpy and a cudaMemcpy from pageable host memory
// (which returns once the data is staged, maybe before it lands) would otherwise return early.
void zero(void* p, size_t bytes) {
  check(cudaMemset(p, 0, bytes), "cudaMemset");
  check(cudaStreamSynchronize(cudaStreamPerThread), "cudaStreamSynchronize");
}
// cudaMemcpyDefault: the runtime tells the sides apart by address (unified addressing), so a copy may reach a
// buffer on a GPU other than the calling thread's.
void copy(void* dst, const void* src, size_t bytes, Copy kind) {
  check(cudaMemcpy(dst, src, bytes, cudaMemcpyDefault), "cudaMemcpy");
  if (kind != Copy::device_to_host) check(cudaStreamSynchronize(cudaStreamPerThread), "cudaStreamSynchronize");
}
void copy_async(void* dst, const void* src, size_t bytes) {
  check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, cudaStreamPerThread), "cudaMemcpyAsync");
}
StreamMark mark() {
  cudaEvent_t e = nullptr;
  check(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate");
  check(cudaEventRecord(e, cudaStreamPerThread), "cudaEventRecord");
  return e;
}
void wait(StreamMark m) {
  auto e = static_cast<cudaEvent_t>(m);
  check(cudaStreamWaitEvent(cudaStreamPerThread, e, 0), "cudaStreamWaitEvent");
  check(cudaEventDestroy(e), "cudaEventDestroy");  // the queued wait keeps what it needs
}
void drop(StreamMark m) { cudaEventDestroy(static_cast<cudaEvent_t>(m)); }
int gpu_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // no driver or no device: clear the error so that no later call reports it
    return 0;
  }
  return n;
}
void use_gpu(int ordinal) { check(cudaSetDevice(ordinal), "cudaSetDevice"); }
int current_gpu() {
  int d = 0;
  check(cudaGetDevice(&d), "cudaGetDevice");
  return d;
}
void connect_gpus(int n) {
  const int before = current_gpu();
  for (int a = 0; a < n; ++a)
    for (int b = 0; b < n; ++b) {
      int can = 0;
      if (a == b || cudaDeviceCanAccessPeer(&can, a, b) != cudaSuccess || !can) continue;
      use_gpu(a);
      const cudaError_t e = cudaDeviceEnablePeerAccess(b, 0);
      if (e == cudaErrorPeerAccessAlreadyEnabled) cudaGetLastError();
      else check(e, "cudaDeviceEnablePeerAccess");
    }
  cudaGetLastError();  // a refused cudaDeviceCanAccessPeer leaves nothing behind
  use_gpu(before);
}
}  // namespace device_memory

#else  // a build without the CUDA backend

namespace device_memory {
namespace {
[[noreturn]] void no_cuda() {
  bad_input("train.device", "'cuda' needs a build with the CUDA backend (cmake -DONESTEP_CUDA=ON, nvcc present)");
}
}  // namespace
MemoryStats memory_stats() { return {}; }
void reset_peak() {}
void* alloc(size_t) { no_cuda(); }
void release(void*) {}
void zero(void*, size_t) { no_cuda(); }
void copy(void*, const void*, size_t, Copy) { no_cuda(); }
void copy_async(void*, const void*, size_t) { no_cuda(); }
StreamMark mark() { no_cuda(); }
void wait(StreamMark) { no_cuda(); }
void drop(StreamMark) {}
int gpu_count() { return 0; }
void use_gpu(int) { no_cuda(); }
int current_gpu() { no_cuda(); }
void connect_gpus(int) { no_cuda(); }
}  // namespace device_memory

#endif

}  // namespace onestep
