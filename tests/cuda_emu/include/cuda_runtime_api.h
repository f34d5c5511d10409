// CPU emulation of the CUDA runtime (tests/cuda_emu): the subset of the runtime API that onestep calls, over host
// memory, and the device-side names its kernels use. Kernels run on the calling host thread at launch, one fiber
// per CUDA thread (launch.cpp); the stream and event calls are therefore already complete when they return.
#pragma once
#include <math.h>

#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>

typedef int cudaError_t;
enum : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevice = 101,
  cudaErrorNoDevice = 100,
  cudaErrorNotReady = 600,
  cudaErrorPeerAccessAlreadyEnabled = 704,
};
struct CUstream_st;
typedef CUstream_st* cudaStream_t;
struct CUevent_st;
typedef CUevent_st* cudaEvent_t;
struct CUmemPool_st;
typedef CUmemPool_st* cudaMemPool_t;
#define cudaStreamLegacy (reinterpret_cast<cudaStream_t>(0x1))
#define cudaStreamPerThread (reinterpret_cast<cudaStream_t>(0x2))
enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4
};
enum cudaDeviceAttr { cudaDevAttrComputeCapabilityMajor = 75, cudaDevAttrMaxSharedMemoryPerBlockOptin = 97 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
enum cudaMemPoolAttr { cudaMemPoolAttrUsedMemHigh = 8 };
enum : unsigned { cudaStreamNonBlocking = 1, cudaEventDisableTiming = 2 };

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
typedef dim3 uint3;
struct cudaDeviceProp {
  char name[256];
  size_t totalGlobalMem;
  int multiProcessorCount, major, minor;
};

cudaError_t cudaGetDeviceCount(int* n);
cudaError_t cudaGetDevice(int* d);
cudaError_t cudaSetDevice(int d);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int d);
cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr a, int d);
cudaError_t cudaDeviceCanAccessPeer(int* can, int d, int peer);
cudaError_t cudaDeviceEnablePeerAccess(int peer, unsigned flags);
cudaError_t cudaDeviceSynchronize();
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes);
cudaError_t cudaDeviceGetDefaultMemPool(cudaMemPool_t* p, int d);
cudaError_t cudaMemPoolGetAttribute(cudaMemPool_t p, cudaMemPoolAttr a, void* v);
cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t p, cudaMemPoolAttr a, void* v);

cudaError_t cudaMalloc(void** p, size_t n);
template <class T>
cudaError_t cudaMalloc(T** p, size_t n) { return cudaMalloc(reinterpret_cast<void**>(p), n); }
cudaError_t cudaFree(void* p);
cudaError_t cudaMallocAsync(void** p, size_t n, cudaStream_t s);
template <class T>
cudaError_t cudaMallocAsync(T** p, size_t n, cudaStream_t s) { return cudaMallocAsync(reinterpret_cast<void**>(p), n, s); }
cudaError_t cudaFreeAsync(void* p, cudaStream_t s);
cudaError_t cudaMemcpy(void* dst, const void* src, size_t n, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t n, cudaMemcpyKind kind, cudaStream_t s = nullptr);
cudaError_t cudaMemset(void* p, int value, size_t n);
cudaError_t cudaMemsetAsync(void* p, int value, size_t n, cudaStream_t s = nullptr);

cudaError_t cudaStreamCreate(cudaStream_t* s);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaStreamQuery(cudaStream_t s);
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned flags = 0);
cudaError_t cudaEventCreate(cudaEvent_t* e);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned flags);
cudaError_t cudaEventDestroy(cudaEvent_t e);
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s = nullptr);
cudaError_t cudaEventQuery(cudaEvent_t e);
cudaError_t cudaEventSynchronize(cudaEvent_t e);
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t stop);

cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
const char* cudaGetErrorName(cudaError_t e);
const char* cudaGetErrorString(cudaError_t e);

namespace emu {
void set_max_dynamic_shared(const void* kernel, int bytes);
}
template <class K>
cudaError_t cudaFuncSetAttribute(K kernel, cudaFuncAttribute, int bytes) {
  emu::set_max_dynamic_shared(reinterpret_cast<const void*>(kernel), bytes);
  return cudaSuccess;
}

// ---- device side: what the kernels see while emulated --------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)

namespace emu {
struct Block;
struct ThreadIndex {  // the running CUDA thread
  dim3 tid, bid, bdim, gdim;
  unsigned lin = 0;  // linear index in its block
  Block* block = nullptr;
};
extern thread_local ThreadIndex current;
[[noreturn]] void fail(const char* what);
[[noreturn]] void report_fault(const void* address);  // a memory fault: where it happened, then abort
// A kernel launch: body() runs once per CUDA thread, in the order of `stream`. The configuration is checked
// when called (an error is left for cudaGetLastError and nothing runs). key identifies the kernel for
// cudaFuncSetAttribute (nullptr where no opt-in is needed).
void launch(dim3 grid, dim3 block, size_t dynamic_smem, cudaStream_t stream, const void* key,
            std::function<void()> body, const char* name);
int device_of(const void* p, size_t n);  // the device whose live allocation holds [p, p + n), or -1
inline bool is_device_address(const void* p) { return device_of(p, 0) >= 0; }  // in an allocation, or one past it
size_t shared_optin_bytes();           // the most dynamic shared memory per block a kernel may opt in to
[[noreturn]] void refuse_launch(const char* name, const char* why);
// A kernel's pointer argument must point into device memory (or be null): on a GPU a host pointer faults.
template <class T>
void check_kernel_argument(T* p, const char* name) {
  if (p && !is_device_address(p)) refuse_launch(name, "a pointer argument points to host memory");
}
template <class T>
void check_kernel_argument(const T&, const char*) {}
// What rewrite_cuda.py turns `kernel<<<grid, block, smem, stream>>>(args...)` into: the arguments are checked
// and evaluated now, as CUDA does, and kept with the launch; call(args...) calls the kernel.
template <class Call, class... Args>
void launch_kernel(dim3 grid, dim3 block, size_t dynamic_smem, cudaStream_t stream, const void* key,
                   const char* name, Call call, Args... args) {
  (check_kernel_argument(args, name), ...);
  launch(grid, block, dynamic_smem, stream, key, [call, args...] { call(args...); }, name);
}
void* static_shared(const void* site, size_t bytes);  // a __shared__ variable's memory in the running block
void* dynamic_shared();                               // extern __shared__
void sync_block();
void sync_warp(unsigned mask);
uint64_t* warp_exchange();  // one slot per thread of the block, for the shuffles
bool is_shared_address(const void* p, size_t n);  // [p, p + n) lies in the running block's shared memory
// cp.async (sm_80+: src/kernels/cuda/cp_async.cuh): a copy of `bytes` (4, 8 or 16, both addresses aligned to it)
// from global to shared memory, of which the first src_bytes are read and the rest zero-filled. It lands when its
// thread waits for its group, not before: a read of the destination before cp_async_wait (or, for another
// thread's copies, before the barrier after that wait) sees the old bytes, NaN in fresh shared memory.
void cp_async(void* shared_dst, const void* global_src, unsigned bytes, unsigned src_bytes);
void cp_async_commit();                // closes the thread's group of copies issued since the last commit
void cp_async_wait(unsigned pending);  // lands all the thread's committed groups but the `pending` newest
}  // namespace emu

#define threadIdx (::emu::current.tid)
#define blockIdx (::emu::current.bid)
#define blockDim (::emu::current.bdim)
#define gridDim (::emu::current.gdim)
// `__shared__ T name[dims];` (rewritten by rewrite_cuda.py): per-block memory keyed by the declaration's site.
#define EMU_SHARED(T, name, dims)  \
  static char emu_site_##name;     \
  T(&name) dims = *reinterpret_cast<T(*) dims>(::emu::static_shared(&emu_site_##name, sizeof(T dims)))

inline void __syncthreads() { ::emu::sync_block(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { ::emu::sync_warp(mask); }
template <class T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  static_assert(sizeof(T) <= 8, "emulated shuffles move at most 8 bytes");
  if (width != 32) ::emu::fail("__shfl_xor_sync with width != 32 is not emulated");
  uint64_t* slots = ::emu::warp_exchange();
  const unsigned me = ::emu::current.lin, src = (me & 31u) ^ static_cast<unsigned>(lane_mask & 31);
  // A source lane outside the mask is undefined on the GPU (and past the exchange slots in a short last warp).
  if (!((mask >> src) & 1u)) ::emu::fail("__shfl_xor_sync from a lane outside the mask");
  ::emu::sync_warp(mask);  // every lane has read the previous exchange
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  slots[me] = bits;
  ::emu::sync_warp(mask);
  T r;
  std::memcpy(&r, &slots[(me & ~31u) | src], sizeof(T));
  return r;
}
inline float atomicAdd(float* p, float v) { return std::atomic_ref<float>(*p).fetch_add(v); }
inline double atomicAdd(double* p, double v) { return std::atomic_ref<double>(*p).fetch_add(v); }
inline int atomicAdd(int* p, int v) { return std::atomic_ref<int>(*p).fetch_add(v); }
inline unsigned atomicAdd(unsigned* p, unsigned v) { return std::atomic_ref<unsigned>(*p).fetch_add(v); }
[[noreturn]] inline void __trap() { ::emu::fail("__trap()"); }
inline float __expf(float x) { return std::exp(x); }
// A product rounded on its own, never fused into a following add (volatile: the host compiler may not contract it).
inline float __fmul_rn(float a, float b) {
  volatile float r = a * b;
  return r;
}
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
// CUDA's min/max overloads for the integer and float types device code calls them with.
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long min(long a, long b) { return a < b ? a : b; }
inline long max(long a, long b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
