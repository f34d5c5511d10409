// Tests of the CPU emulation of CUDA itself (tests/cuda_emu): the emulator is what tells the CUDA tests that a
// kernel is right, so each of its promises (thread indices, real interleaving at barriers, poisoned memory,
// launch errors, loud deadlocks, cuBLAS/WMMA numerics, the source rewrite) is checked here against values worked
// out independently. Kernels are plain functions launched the way rewrite_cuda.py writes launches; they may
// touch host memory directly, since emulated device memory is host memory.
#include <gtest/gtest.h>
#include <mma.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "cublas_v2.h"
#include "cuda_runtime_api.h"

namespace {
// A small device and a second one, set before the runtime's first call reads them (its values are cached).
const bool kEnvironment = setenv("CUDA_EMU_MEMORY_MIB", "64", 1) == 0 && setenv("CUDA_EMU_DEVICES", "2", 1) == 0;
constexpr size_t MiB = size_t{1} << 20;

// The death tests: threadsafe style re-runs the binary, so OpenMP/OpenBLAS threads do not meet a fork.
class EmuDeathTest : public ::testing::Test {
  void SetUp() override {
    ASSERT_TRUE(kEnvironment);
    GTEST_FLAG_SET(death_test_style, "threadsafe");
  }
};

// ---- thread indices ---------------------------------------------------------------------------------------
struct Seen {
  unsigned count = 0;
  dim3 tid{0, 0, 0}, bid{0, 0, 0}, bdim{0, 0, 0}, gdim{0, 0, 0};
};
void index_kernel(Seen* seen) {
  const unsigned per_block = blockDim.x * blockDim.y * blockDim.z;
  const unsigned block = blockIdx.x + gridDim.x * blockIdx.y;
  const unsigned t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  Seen& s = seen[block * per_block + t];
  ++s.count;
  s.tid = threadIdx, s.bid = blockIdx, s.bdim = blockDim, s.gdim = gridDim;
}
bool same(dim3 a, dim3 b) { return a.x == b.x && a.y == b.y && a.z == b.z; }

TEST(CudaEmu, EveryThreadOfA2DGridAnd3DBlockRunsOnceWithItsIndices) {
  const dim3 grid(3, 2), block(4, 3, 2);
  std::vector<Seen> seen(3 * 2 * 24);
  emu::launch(grid, block, 0, nullptr, nullptr, [&] { index_kernel(seen.data()); }, "index_kernel");
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  size_t i = 0;  // the slots in the order the kernel's formula assigns them, decoded by nested loops
  for (unsigned by = 0; by < 2; ++by)
    for (unsigned bx = 0; bx < 3; ++bx)
      for (unsigned tz = 0; tz < 2; ++tz)
        for (unsigned ty = 0; ty < 3; ++ty)
          for (unsigned tx = 0; tx < 4; ++tx, ++i) {
            SCOPED_TRACE(i);
            EXPECT_EQ(seen[i].count, 1u);
            EXPECT_TRUE(same(seen[i].tid, dim3(tx, ty, tz)));
            EXPECT_TRUE(same(seen[i].bid, dim3(bx, by, 0)));
            EXPECT_TRUE(same(seen[i].bdim, block) && same(seen[i].gdim, grid));
          }
}

// ---- barriers and shared memory ---------------------------------------------------------------------------
void reverse_kernel(const float* in, float* out, bool barrier) {
  EMU_SHARED(float, s, [64]);
  const unsigned t = threadIdx.x, n = blockDim.x, base = blockIdx.x * n;
  s[t] = in[base + t];
  if (barrier) __syncthreads();
  out[base + t] = s[n - 1 - t];  // another thread's write
}

TEST(CudaEmu, SyncthreadsOrdersSharedMemoryAndItsAbsenceShows) {
  std::vector<float> in(128), out(128);
  for (int i = 0; i < 128; ++i) in[i] = static_cast<float>(i);
  emu::launch(dim3(2), dim3(64), 0, nullptr, nullptr, [&] { reverse_kernel(in.data(), out.data(), true); }, "reverse");
  for (int b = 0; b < 2; ++b)
    for (int t = 0; t < 64; ++t) EXPECT_EQ(out[b * 64 + t], in[b * 64 + 63 - t]);
  // Without the barrier a thread reads its partner's slot before the partner ran: the 0xFF poison (NaN).
  emu::launch(dim3(2), dim3(64), 0, nullptr, nullptr, [&] { reverse_kernel(in.data(), out.data(), false); }, "reverse");
  int stale = 0;
  for (float x : out) stale += std::isnan(x);
  EXPECT_TRUE(std::isnan(out[0]) && std::isnan(out[64]));  // thread 0 of each block runs before thread 63
  EXPECT_GT(stale, 0);
}

void poison_kernel(uint32_t* first_static, uint32_t* first_dynamic, uintptr_t* dynamic_at) {
  EMU_SHARED(uint32_t, s, [2][32]);
  auto* d = static_cast<uint32_t*>(::emu::dynamic_shared());
  const unsigned t = threadIdx.x, i = blockIdx.x * blockDim.x + t;
  first_static[i] = s[t / 32][t % 32];
  first_dynamic[i] = d[t];
  s[t / 32][t % 32] = d[t] = i;  // what the next block would read if the memory were reused unfilled
  if (t == 0) dynamic_at[blockIdx.x] = reinterpret_cast<uintptr_t>(d);
}

TEST(CudaEmu, SharedMemoryStartsAsNaNBytesInEveryBlockAndDynamicIs128Aligned) {
  std::vector<uint32_t> st(192), dy(192);
  std::vector<uintptr_t> at(3);
  emu::launch(dim3(3), dim3(64), 64 * 4 + 4, nullptr, nullptr, [&] { poison_kernel(st.data(), dy.data(), at.data()); },
              "poison");
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  for (int i = 0; i < 192; ++i) {
    EXPECT_EQ(st[i], 0xFFFFFFFFu) << i;
    EXPECT_EQ(dy[i], 0xFFFFFFFFu) << i;
  }
  for (uintptr_t a : at) EXPECT_EQ(a % 128, 0u);
}

void big_smem_kernel(int* ran) {
  static_cast<unsigned char*>(::emu::dynamic_shared())[64 * 1024 - 1] = 1;  // the last byte exists
  if (threadIdx.x == 0) ++*ran;
}

TEST(CudaEmu, DynamicSharedMemoryOver48KiBNeedsTheOptIn) {
  int ran = 0;
  const void* key = reinterpret_cast<const void*>(&big_smem_kernel);
  auto launch = [&](size_t bytes, const void* k) {
    emu::launch(dim3(1), dim3(32), bytes, nullptr, k, [&] { big_smem_kernel(&ran); }, "big_smem");
    return cudaGetLastError();
  };
  (void)cudaGetLastError();
  EXPECT_EQ(launch(64 * 1024, key), cudaErrorInvalidValue);
  EXPECT_EQ(ran, 0);
  EXPECT_EQ(launch(48 * 1024 + 1, nullptr), cudaErrorInvalidValue);  // the default limit, exactly
  EXPECT_EQ(ran, 0);
  ASSERT_EQ(cudaFuncSetAttribute(big_smem_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024), cudaSuccess);
  EXPECT_EQ(launch(64 * 1024, key), cudaSuccess);
  EXPECT_EQ(ran, 1);
  EXPECT_EQ(launch(64 * 1024 + 1, key), cudaErrorInvalidValue);  // past what it opted in to
  cudaFuncSetAttribute(big_smem_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 228 * 1024);
  EXPECT_EQ(launch(228 * 1024, key), cudaErrorInvalidValue);  // past the device's 227 KiB
  EXPECT_EQ(ran, 1);
}

TEST(CudaEmu, InvalidLaunchConfigurationsSetAnErrorThatOneReadClears) {
  int ran = 0;
  (void)cudaGetLastError();
  const std::vector<std::pair<dim3, dim3>> bad = {{dim3(1), dim3(1025)}, {dim3(1), dim3(32, 32, 2)},
                                                  {dim3(1), dim3(1, 1, 65)}, {dim3(0), dim3(32)},
                                                  {dim3(4, 0), dim3(32)},   {dim3(1, 1, 65536), dim3(32)}};
  for (auto [grid, block] : bad) {
    emu::launch(grid, block, 0, nullptr, nullptr, [&] { ++ran; }, "never_runs");
    EXPECT_EQ(cudaPeekAtLastError(), cudaErrorInvalidConfiguration);  // peeking keeps it
    EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
    EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  }
  EXPECT_EQ(ran, 0);
  emu::launch(dim3(1), dim3(1024), 0, nullptr, nullptr, [&] { ++ran; }, "largest_block");
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  EXPECT_EQ(ran, 1024);
}

// ---- warp shuffles ----------------------------------------------------------------------------------------
// A butterfly over the lanes that exist: 32, or fewer in the last warp of a block that is not a multiple of 32
// (the emulator wants the mask to name exactly those lanes). first_offset > 0 forces a wider first step.
void warp_sum_kernel(const float* in, float* out, bool full_mask, int first_offset) {
  const unsigned t = threadIdx.x, lanes = min(32u, blockDim.x - t / 32 * 32);
  const unsigned mask = full_mask || lanes == 32 ? 0xffffffffu : (1u << lanes) - 1u;
  float x = in[t];
  for (int o = first_offset ? first_offset : static_cast<int>(lanes) / 2; o > 0; o >>= 1)
    x += __shfl_xor_sync(mask, x, o);
  out[t] = x;
}

TEST(CudaEmu, ShuffleButterflySumsEqualTheSerialSumsAlsoInAPartialWarp) {
  const int n = 72;  // two full warps and one of 8 lanes
  std::vector<float> in(n), out(n);
  for (int i = 0; i < n; ++i) in[i] = static_cast<float>((i * 7) % 13 - 6);  // small integers: exact sums
  emu::launch(dim3(1), dim3(n), 0, nullptr, nullptr, [&] { warp_sum_kernel(in.data(), out.data(), false, 0); }, "warp_sum");
  for (int w = 0; w < 3; ++w) {
    float serial = 0;
    for (int i = w * 32; i < std::min(n, w * 32 + 32); ++i) serial += in[i];
    for (int i = w * 32; i < std::min(n, w * 32 + 32); ++i) EXPECT_EQ(out[i], serial) << "lane " << i;
  }
}

TEST_F(EmuDeathTest, ShufflesOutsideTheWarpsLanesAbort) {
  std::vector<float> in(40, 1.0f), out(40);
  auto run = [&](bool full_mask, int first_offset) {
    emu::launch(dim3(1), dim3(40), 0, nullptr, nullptr, [&] { warp_sum_kernel(in.data(), out.data(), full_mask, first_offset); },
                "k");
  };
  EXPECT_DEATH(run(true, 0), "shuffle over part of a warp");  // the full mask names 24 lanes the last warp lacks
  EXPECT_DEATH(run(false, 16), "outside the mask");  // offset 16 in the 8-lane warp: lane 16 does not exist
}

// ---- what would hang or fault on a GPU aborts here --------------------------------------------------------
TEST_F(EmuDeathTest, BarrierMisuseAndTrapAbortWithTheirPlace) {
  // The lower half returns first; the upper half then waits at a __syncthreads nobody else will reach.
  EXPECT_DEATH(emu::launch(dim3(1), dim3(64), 0, nullptr, nullptr, [] { if (threadIdx.x < 32) return; __syncthreads(); }, "k"),
               "__syncthreads that can never complete \\(32 of 64");
  // Half the block waits at __syncthreads, the rest at __syncwarp: neither barrier completes.
  EXPECT_DEATH(emu::launch(dim3(1), dim3(32), 0, nullptr, nullptr,
                           [] { threadIdx.x < 16 ? __syncthreads() : __syncwarp(); }, "k"),
               "never complete");
  // The upper half returns while the lower half already waits.
  EXPECT_DEATH(emu::launch(dim3(1), dim3(64), 0, nullptr, nullptr, [] { if (threadIdx.x >= 32) return; __syncthreads(); }, "k"),
               "returned while other threads of its block or warp wait");
  EXPECT_DEATH(emu::launch(dim3(2), dim3(8), 0, nullptr, nullptr, [] { if (blockIdx.x == 1 && threadIdx.x == 3) __trap(); },
                           "trap_kernel"),
               "kernel trap_kernel, block \\(1,0,0\\), thread \\(3,0,0\\): __trap\\(\\)");
}

// A shared-memory overrun (on the GPU: silent corruption of the next buffer) is found when the block ends.
TEST_F(EmuDeathTest, SharedMemoryOverrunsAbortWhenTheBlockEnds) {
  EXPECT_DEATH(emu::launch(dim3(2), dim3(32), 200, nullptr, nullptr, [] {
    if (blockIdx.x == 1 && threadIdx.x == 5) static_cast<unsigned char*>(::emu::dynamic_shared())[200] = 0;
  }, "k"), "block \\(1,0,0\\).*past the end of its dynamic shared memory");
  EXPECT_DEATH(emu::launch(dim3(1), dim3(32), 0, nullptr, nullptr, [] {
    EMU_SHARED(float, s, [8]);
    volatile unsigned past = 8;  // an index the compiler cannot see
    float* p = s;
    if (threadIdx.x == 0) p[past] = 1.0f;
  }, "k"), "past the end of a __shared__ array");
}

// ---- what a GPU would fault on -----------------------------------------------------------------------------
void store_one(float* x) { *x = 1.0f; }
TEST_F(EmuDeathTest, KernelsAndProductsRefuseHostPointersAndOverruns) {
  float* d = nullptr;
  ASSERT_EQ(cudaMalloc(&d, 16 * sizeof(float)), cudaSuccess);
  std::vector<float> host(16);
  auto store = [](auto... v) { store_one(v...); };
  emu::launch_kernel(dim3(1), dim3(1), 0, nullptr, nullptr, "store_one", store, d + 15);  // inside: runs
  float last = 0;
  ASSERT_EQ(cudaMemcpy(&last, d + 15, sizeof last, cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(last, 1.0f);
  EXPECT_DEATH(emu::launch_kernel(dim3(1), dim3(1), 0, nullptr, nullptr, "store_one", store, host.data()),
               "store_one refused: a pointer argument points to host memory");
  cublasHandle_t h = nullptr;
  cublasCreate(&h);
  const float one = 1.0f, zero = 0.0f;
  EXPECT_EQ(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 4, 4, 4, &one, d, 4, d, 4, &zero, d, 4), CUBLAS_STATUS_SUCCESS);
  EXPECT_DEATH(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 4, 4, 4, &one, d, 4, host.data(), 4, &zero, d, 4),
               "operand points to host memory");
  // 4 x 4 with leading dimension 5 spans 19 floats: past the 16 of d (the last 3 rows of A's last column).
  EXPECT_DEATH(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 4, 4, 4, &one, d, 5, d, 4, &zero, d, 4),
               "an operand runs past the end of its allocation");
  cublasDestroy(h);
  cudaFree(d);
}

// ---- thread order (CUDA_EMU_THREAD_ORDER=reverse) -------------------------------------------------------
// A race: each thread reads its left neighbour's shared slot with no barrier in between. In index order the
// neighbour has always written it (the race passes unseen); from the last thread to the first it never has.
void left_neighbour_kernel(float* out) {
  EMU_SHARED(float, slot, [64]);
  slot[threadIdx.x] = static_cast<float>(threadIdx.x);
  out[threadIdx.x] = threadIdx.x > 0 ? slot[threadIdx.x - 1] : 0.0f;  // missing __syncthreads()
}
int unwritten_reads(bool reverse) {  // in a child process: the order is read once per process
  if (reverse) setenv("CUDA_EMU_THREAD_ORDER", "reverse", 1);
  std::vector<float> out(64);
  emu::launch(dim3(1), dim3(64), 0, nullptr, nullptr, [&] { left_neighbour_kernel(out.data()); }, "left_neighbour");
  int nans = 0;
  for (float v : out) nans += std::isnan(v);
  return nans;
}

TEST_F(EmuDeathTest, ReverseThreadOrderShowsReadsThatNoBarrierOrders) {
  EXPECT_EXIT(std::exit(unwritten_reads(false)), ::testing::ExitedWithCode(0), "");
  EXPECT_EXIT(std::exit(unwritten_reads(true)), ::testing::ExitedWithCode(63), "");
}

// ---- block order (CUDA_EMU_BLOCK_ORDER=shuffle) ----------------------------------------------------------
// Each block of a 2-D grid records its turn. In grid order the turns follow the linear block index; shuffled,
// every block still runs once, in an order that differs from grid order and from launch to launch. Exit code: 0
// as expected, else the number of the check that failed.
std::vector<int> block_turns(unsigned gx, unsigned gy) {
  std::vector<int> turn(gx * gy, -1);
  int next = 0;
  emu::launch(dim3(gx, gy), dim3(4), 0, nullptr, nullptr, [&] {
    if (threadIdx.x == 0) turn[blockIdx.y * gx + blockIdx.x] = next++;
  }, "block_turns");
  return turn;
}
int block_order_scenario(const char* order) {  // in a child process: the order is read once per process
  setenv("CUDA_EMU_BLOCK_ORDER", order, 1);
  const std::vector<int> a = block_turns(8, 5), b = block_turns(8, 5);
  std::vector<int> sorted = a, grid_order(a.size());
  std::sort(sorted.begin(), sorted.end());
  for (size_t i = 0; i < grid_order.size(); ++i) grid_order[i] = static_cast<int>(i);
  if (sorted != grid_order) return 1;  // a block ran twice or not at all
  const bool shuffled = std::string(order) == "shuffle";
  if ((a == grid_order) == shuffled) return 2;
  if ((a == b) == shuffled) return 3;
  return 0;
}

TEST_F(EmuDeathTest, ShuffledBlocksRunEachOnceInAnOrderThatChangesPerLaunch) {
  EXPECT_EXIT(std::exit(block_order_scenario("grid")), ::testing::ExitedWithCode(0), "");
  EXPECT_EXIT(std::exit(block_order_scenario("shuffle")), ::testing::ExitedWithCode(0),
              "blocks in a random order, CUDA_EMU_BLOCK_SEED=[0-9]+ repeats it");
}

// ---- asynchronous streams (CUDA_EMU_STREAMS=async) -------------------------------------------------------
// The mode is read once per process, so these run in a child process (EXPECT_EXIT) that turns it on first. A
// slow kernel on stream A writes x; stream B waits for an event recorded after it and copies x, and, without
// waiting, copies x2 (written by A later): only the event orders the streams, so the second copy sees the
// poison. The child exits with the number of the first failed check.
void slow_write(float* x, float value) {
  std::this_thread::sleep_for(std::chrono::milliseconds(500));  // margin for a loaded machine
  *x = value;
}
void copy_one(float* dst, const float* src) { *dst = *src; }
int streams_scenario() {
  setenv("CUDA_EMU_STREAMS", "async", 1);
  float* d = nullptr;  // x, x2, y, y2
  if (cudaMalloc(&d, 4 * sizeof(float)) != cudaSuccess) return 1;
  cudaStream_t a = nullptr, b = nullptr;
  cudaEvent_t start = nullptr, after_x = nullptr;
  cudaStreamCreate(&a), cudaStreamCreate(&b), cudaEventCreate(&start), cudaEventCreate(&after_x);
  cudaEventRecord(start, a);
  emu::launch_kernel(dim3(1), dim3(1), 0, a, nullptr, "slow_write", [](auto... v) { slow_write(v...); }, d, 1.0f);
  cudaEventRecord(after_x, a);
  emu::launch_kernel(dim3(1), dim3(1), 0, a, nullptr, "slow_write", [](auto... v) { slow_write(v...); }, d + 1, 2.0f);
  if (cudaStreamQuery(a) != cudaErrorNotReady || cudaEventQuery(after_x) != cudaErrorNotReady) return 2;  // host ran ahead
  cudaStreamWaitEvent(b, after_x);
  emu::launch_kernel(dim3(1), dim3(1), 0, b, nullptr, "copy", [](auto... v) { copy_one(v...); }, d + 2, d);
  cudaStream_t c = nullptr;  // no wait: runs at once, beside A
  cudaStreamCreate(&c);
  emu::launch_kernel(dim3(1), dim3(1), 0, c, nullptr, "copy", [](auto... v) { copy_one(v...); }, d + 3, d + 1);
  cudaStreamSynchronize(b), cudaStreamSynchronize(c);
  float h[4];
  if (cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost) != cudaSuccess) return 3;  // (x2 may still be pending)
  if (h[2] != 1.0f) return 4;        // B waited for the event
  if (!std::isnan(h[3])) return 5;   // C did not wait for A
  if (cudaEventSynchronize(after_x) != cudaSuccess || cudaEventQuery(after_x) != cudaSuccess) return 6;
  float ms = 0;
  if (cudaEventElapsedTime(&ms, start, after_x) != cudaSuccess || ms < 450) return 7;  // timed when reached
  cudaDeviceSynchronize();
  if (cudaStreamQuery(a) != cudaSuccess) return 8;
  cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost);
  if (h[1] != 2.0f) return 9;
  cudaEventDestroy(start), cudaEventDestroy(after_x);
  cudaStreamDestroy(a), cudaStreamDestroy(b), cudaStreamDestroy(c);
  return cudaFree(d) == cudaSuccess ? 0 : 10;
}

TEST_F(EmuDeathTest, AsyncStreamsRunBesideEachOtherAndAreOrderedByEventsOnly) {
  EXPECT_EXIT(std::exit(streams_scenario()), ::testing::ExitedWithCode(0), "");
}

// ---- memory ledger ----------------------------------------------------------------------------------------
TEST(CudaEmu, AllocationsAreLimitedByTheCapacityPerDeviceAndShowInMemGetInfo) {
  size_t free0 = 0, total = 0, free1 = 0;
  ASSERT_EQ(cudaMemGetInfo(&free0, &total), cudaSuccess);
  ASSERT_EQ(total, 64 * MiB);
  void *a = nullptr, *b = nullptr, *c = nullptr;
  ASSERT_EQ(cudaMalloc(&a, 40 * MiB), cudaSuccess);
  cudaMemGetInfo(&free1, &total);
  EXPECT_EQ(free1, free0 - 40 * MiB);
  EXPECT_EQ(cudaMalloc(&b, free1 + 1), cudaErrorMemoryAllocation);
  EXPECT_EQ(cudaGetLastError(), cudaErrorMemoryAllocation);
  ASSERT_EQ(cudaMalloc(&b, free1), cudaSuccess);  // exactly what is left
  cudaMemGetInfo(&free1, &total);
  EXPECT_EQ(free1, 0u);
  EXPECT_EQ(cudaMalloc(&c, 1), cudaErrorMemoryAllocation);
  // The second device has a ledger of its own.
  ASSERT_EQ(cudaSetDevice(1), cudaSuccess);
  cudaMemGetInfo(&free1, &total);
  EXPECT_EQ(free1, 64 * MiB);
  ASSERT_EQ(cudaMalloc(&c, MiB), cudaSuccess);
  ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  EXPECT_EQ(cudaFree(c), cudaSuccess);  // freed from device 0: returns to device 1's ledger
  cudaSetDevice(1);
  cudaMemGetInfo(&free1, &total);
  EXPECT_EQ(free1, 64 * MiB);
  cudaSetDevice(0);
  EXPECT_EQ(cudaFree(a), cudaSuccess);
  EXPECT_EQ(cudaFree(b), cudaSuccess);
  cudaMemGetInfo(&free1, &total);
  EXPECT_EQ(free1, free0);
}

TEST(CudaEmu, FreshMemoryIsPoisonedAndCopiesAndFreesAreChecked) {
  char* p = nullptr;
  ASSERT_EQ(cudaMalloc(&p, 1000), cudaSuccess);
  std::vector<unsigned char> h(1001, 0);
  ASSERT_EQ(cudaMemcpy(h.data(), p, 1000, cudaMemcpyDeviceToHost), cudaSuccess);
  for (int i = 0; i < 1000; ++i) ASSERT_EQ(h[i], 0xFF) << i;
  std::vector<unsigned char> host(1001, 7);
  EXPECT_EQ(cudaMemcpy(host.data(), h.data(), 8, cudaMemcpyHostToDevice), cudaErrorInvalidValue);  // not device
  EXPECT_EQ(host[0], 7);
  EXPECT_EQ(cudaMemcpy(p, h.data(), 1001, cudaMemcpyHostToDevice), cudaErrorInvalidValue);  // one byte past the end
  EXPECT_EQ(cudaMemcpy(h.data(), p + 1, 1000, cudaMemcpyDeviceToHost), cudaErrorInvalidValue);
  EXPECT_EQ(cudaMemcpy(p + 1, p, 999, cudaMemcpyDeviceToDevice), cudaSuccess);  // inside: fine
  EXPECT_EQ(cudaMemset(host.data(), 0, 8), cudaErrorInvalidValue);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);
  EXPECT_EQ(cudaFree(host.data()), cudaErrorInvalidValue);  // not from cudaMalloc
  EXPECT_EQ(cudaFree(p + 8), cudaErrorInvalidValue);        // inside an allocation, not its start
  EXPECT_EQ(cudaFree(p), cudaSuccess);
  EXPECT_EQ(cudaFree(p), cudaErrorInvalidValue);  // twice
  EXPECT_EQ(cudaFree(nullptr), cudaSuccess);
  (void)cudaGetLastError();
}

// A kernel that reads past the end of an allocation faults at once (the allocation ends against a guard page) and
// is named; a write into the few bytes before that page is found when the allocation is freed.
void read_one_past(const float* x, float* out) { out[threadIdx.x] = x[threadIdx.x + 1]; }
void write_one_past(float* x) { x[threadIdx.x + 1] = 0.0f; }
TEST_F(EmuDeathTest, AccessesPastTheEndOfAnAllocationAbort) {
  float *x = nullptr, *out = nullptr;
  ASSERT_EQ(cudaMalloc(&x, 64 * sizeof(float)), cudaSuccess);  // 256 bytes: its end is the guard page
  ASSERT_EQ(cudaMalloc(&out, 64 * sizeof(float)), cudaSuccess);
  EXPECT_DEATH(emu::launch(dim3(1), dim3(64), 0, nullptr, nullptr, [&] { read_one_past(x, out); }, "read_one_past"),
               "kernel read_one_past, block \\(0,0,0\\), thread \\(63,0,0\\): memory fault at");
  const float* far_below = x - 1024;  // 4 KiB below the start of x: inside the guard page before it
  EXPECT_DEATH(emu::launch(dim3(1), dim3(1), 0, nullptr, nullptr, [&] { out[0] = far_below[0]; }, "read_below"),
               "kernel read_below, block \\(0,0,0\\), thread \\(0,0,0\\): memory fault at");
  float* y = nullptr;
  ASSERT_EQ(cudaMalloc(&y, 10 * sizeof(float)), cudaSuccess);  // 40 bytes, then 216 canary bytes before the guard
  EXPECT_DEATH(
      {
        emu::launch(dim3(1), dim3(10), 0, nullptr, nullptr, [&] { write_one_past(y); }, "write_one_past");
        cudaFree(y);
      },
      "wrote up to 4 byte\\(s\\) past the end of a device allocation of 40 bytes");
  emu::launch(dim3(1), dim3(9), 0, nullptr, nullptr, [&] { write_one_past(y); }, "write_within");
  EXPECT_EQ(cudaFree(y), cudaSuccess);  // the last float written is the allocation's own
  cudaFree(x), cudaFree(out);
}

TEST(CudaEmu, DevicesOutOfRangeAreRefused) {
  int n = 0, d = -1;
  ASSERT_EQ(cudaGetDeviceCount(&n), cudaSuccess);
  EXPECT_EQ(n, 2);
  EXPECT_EQ(cudaSetDevice(2), cudaErrorInvalidDevice);
  EXPECT_EQ(cudaSetDevice(-1), cudaErrorInvalidDevice);
  cudaGetDevice(&d);
  EXPECT_EQ(d, 0);
  cudaDeviceProp prop;
  EXPECT_EQ(cudaGetDeviceProperties(&prop, 2), cudaErrorInvalidDevice);
  (void)cudaGetLastError();
}

TEST(CudaEmu, PoolHighWaterMarkTracksThePeakAndResets) {
  cudaMemPool_t pool;
  ASSERT_EQ(cudaDeviceGetDefaultMemPool(&pool, 0), cudaSuccess);
  size_t free_bytes, total;
  cudaMemGetInfo(&free_bytes, &total);
  const uint64_t base = total - free_bytes;
  uint64_t zero = 0, high = 0;
  ASSERT_EQ(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrUsedMemHigh, &zero), cudaSuccess);
  cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemHigh, &high);
  EXPECT_EQ(high, base);
  void *a, *b;
  ASSERT_EQ(cudaMalloc(&a, 10 * MiB), cudaSuccess);
  cudaFree(a);
  ASSERT_EQ(cudaMalloc(&b, 2 * MiB), cudaSuccess);
  cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemHigh, &high);
  EXPECT_EQ(high, base + 10 * MiB);  // the peak, not what is in use
  cudaMemPoolSetAttribute(pool, cudaMemPoolAttrUsedMemHigh, &zero);
  cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemHigh, &high);
  EXPECT_EQ(high, base + 2 * MiB);  // reset to what is in use now
  uint64_t one = 1;
  EXPECT_EQ(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrUsedMemHigh, &one), cudaErrorInvalidValue);
  cudaFree(b);
  (void)cudaGetLastError();
}

// ---- cuBLAS -----------------------------------------------------------------------------------------------
// Roundings written independently of the emulator's: TF32 keeps 11 significant bits (nearest, ties away),
// bf16 is round-to-nearest-even on the top 16 bits.
float tf32(float x) {
  int e;
  const double m = std::frexp(x, &e);
  return static_cast<float>(std::ldexp(std::round(std::ldexp(m, 11)), e - 11));
}
float bf16(float x) {
  uint32_t u = std::bit_cast<uint32_t>(x);
  u = (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
  return std::bit_cast<float>(u);
}
float identity(float x) { return x; }

// A column-major matrix with a leading dimension larger than its rows; the padding holds `pad`.
struct Mat {
  int rows, cols, ld;
  std::vector<float> v;
  Mat(int r, int c, int ld_, std::mt19937& rng, float pad) : rows(r), cols(c), ld(ld_), v(size_t(ld_) * c, pad) {
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    for (int j = 0; j < c; ++j)
      for (int i = 0; i < r; ++i) v[i + size_t(j) * ld] = u(rng);
  }
  // op(X)[i][j], rounded as the GEMM reads it.
  double op(bool t, int i, int j, float (*round)(float)) const {
    return round(t ? v[j + size_t(i) * ld] : v[i + size_t(j) * ld]);
  }
};
template <class T>
T* to_device(const std::vector<T>& h) {
  T* d = nullptr;
  EXPECT_EQ(cudaMalloc(&d, h.size() * sizeof(T)), cudaSuccess);
  cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice);
  return d;
}
template <class T>
std::vector<T> to_host(const T* d, size_t n) {
  std::vector<T> h(n);
  EXPECT_EQ(cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
  return h;
}

// C = alpha op(A) op(B) + beta C in fp32 through cublasSgemm (compute < 0) or cublasGemmEx, checked against a
// double reference on operands rounded by `round`; C's padding must come back bit for bit.
void check_gemm(cublasHandle_t h, int compute, bool ta, bool tb, float alpha, float beta, float (*round)(float)) {
  std::mt19937 rng(17 + 4 * ta + 2 * tb);
  const int m = 5, n = 7, k = 33;
  const Mat A(ta ? k : m, ta ? m : k, (ta ? k : m) + 3, rng, NAN);
  const Mat B(tb ? n : k, tb ? k : n, (tb ? n : k) + 2, rng, NAN);
  Mat C(m, n, m + 4, rng, 7777.0f);
  if (beta == 0)  // NaN where C's values are: cuBLAS must not read them
    for (int j = 0; j < n; ++j)
      for (int i = 0; i < m; ++i) C.v[i + size_t(j) * C.ld] = NAN;
  float *dA = to_device(A.v), *dB = to_device(B.v), *dC = to_device(C.v);
  const auto opa = ta ? CUBLAS_OP_T : CUBLAS_OP_N, opb = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasStatus_t s =
      compute < 0 ? cublasSgemm(h, opa, opb, m, n, k, &alpha, dA, A.ld, dB, B.ld, &beta, dC, C.ld)
                  : cublasGemmEx(h, opa, opb, m, n, k, &alpha, dA, CUDA_R_32F, A.ld, dB, CUDA_R_32F, B.ld, &beta, dC,
                                 CUDA_R_32F, C.ld, static_cast<cublasComputeType_t>(compute), CUBLAS_GEMM_DEFAULT);
  ASSERT_EQ(s, CUBLAS_STATUS_SUCCESS);
  const std::vector<float> out = to_host(dC, C.v.size());
  for (int j = 0; j < n; ++j)
    for (int i = 0; i < C.ld; ++i) {
      const size_t at = i + size_t(j) * C.ld;
      if (i >= m) {
        EXPECT_EQ(std::bit_cast<uint32_t>(out[at]), std::bit_cast<uint32_t>(7777.0f)) << "padding " << i << "," << j;
        continue;
      }
      double ref = 0, mag = 0;
      for (int p = 0; p < k; ++p) {
        ref += A.op(ta, i, p, round) * B.op(tb, p, j, round);
        mag += std::abs(A.op(ta, i, p, round) * B.op(tb, p, j, round));
      }
      const double c_term = beta == 0 ? 0.0 : beta * double(C.v[at]);
      ref = alpha * ref + c_term;
      EXPECT_NEAR(out[at], ref, 4e-7 * k * (std::abs(alpha) * mag + std::abs(c_term)) + 1e-7) << i << "," << j;
    }
  cudaFree(dA), cudaFree(dB), cudaFree(dC);
}

TEST(CudaEmu, GemmMatchesTheReferenceForAllTransposesWithPaddedOperands) {
  cublasHandle_t h;
  ASSERT_EQ(cublasCreate(&h), CUBLAS_STATUS_SUCCESS);
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      SCOPED_TRACE(testing::Message() << "ta " << ta << " tb " << tb);
      check_gemm(h, -1, ta, tb, 1.5f, -0.5f, identity);
      check_gemm(h, -1, ta, tb, 0.75f, 0.0f, identity);  // beta 0 over NaN
      check_gemm(h, CUBLAS_COMPUTE_32F, ta, tb, -1.0f, 2.0f, identity);
      check_gemm(h, CUBLAS_COMPUTE_32F_FAST_TF32, ta, tb, 1.0f, 0.0f, tf32);
      check_gemm(h, CUBLAS_COMPUTE_32F_FAST_16BF, ta, tb, 1.0f, 1.0f, bf16);
    }
  cublasSetMathMode(h, CUBLAS_TF32_TENSOR_OP_MATH);
  check_gemm(h, -1, true, false, 1.0f, 0.5f, tf32);
  check_gemm(h, CUBLAS_COMPUTE_32F, false, true, 1.0f, 0.0f, tf32);
  cublasDestroy(h);
}

// Inputs whose rounding decides the result: 16 products of a * 1. a1 = 1 + 2^-11 + 2^-13 is 1 + 2^-10 in TF32
// (and 1 if the low bits were dropped); a2 = 1 + 2^-8 + 2^-10 is 1 + 2^-7 in bf16.
float sum16(cublasHandle_t h, int compute, float a) {
  std::vector<float> A(16 * 2, a), B(16 * 2, 1.0f), C(4, NAN);
  float *dA = to_device(A), *dB = to_device(B), *dC = to_device(C);
  const float one = 1, zero = 0;
  if (compute < 0)
    EXPECT_EQ(cublasSgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, 2, 2, 16, &one, dA, 16, dB, 16, &zero, dC, 2),
              CUBLAS_STATUS_SUCCESS);
  else
    EXPECT_EQ(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, 2, 2, 16, &one, dA, CUDA_R_32F, 16, dB, CUDA_R_32F, 16, &zero,
                           dC, CUDA_R_32F, 2, static_cast<cublasComputeType_t>(compute), CUBLAS_GEMM_DEFAULT),
              CUBLAS_STATUS_SUCCESS);
  const float r = to_host(dC, 4)[3];
  cudaFree(dA), cudaFree(dB), cudaFree(dC);
  return r;
}

TEST(CudaEmu, Tf32AndBf16ModesRoundTheOperands) {
  const float a1 = 1 + 0x1p-11f + 0x1p-13f, a2 = 1 + 0x1p-8f + 0x1p-10f;
  ASSERT_EQ(tf32(a1), 1 + 0x1p-10f);  // the test's own roundings agree with the hand computation
  ASSERT_EQ(bf16(a2), 1 + 0x1p-7f);
  cublasHandle_t h;
  cublasCreate(&h);
  EXPECT_EQ(sum16(h, -1, a1), 16 + 0x1p-7f + 0x1p-9f);  // fp32: exact
  EXPECT_EQ(sum16(h, CUBLAS_COMPUTE_32F, a1), 16 + 0x1p-7f + 0x1p-9f);
  EXPECT_EQ(sum16(h, CUBLAS_COMPUTE_32F_FAST_TF32, a1), 16 + 0x1p-6f);
  EXPECT_EQ(sum16(h, CUBLAS_COMPUTE_32F_FAST_16BF, a2), 16 + 0x1p-3f);
  cublasSetMathMode(h, CUBLAS_TF32_TENSOR_OP_MATH);
  EXPECT_EQ(sum16(h, -1, a1), 16 + 0x1p-6f);
  EXPECT_EQ(sum16(h, CUBLAS_COMPUTE_32F, a1), 16 + 0x1p-6f);
  cublasSetMathMode(h, CUBLAS_DEFAULT_MATH);
  EXPECT_EQ(sum16(h, -1, a1), 16 + 0x1p-7f + 0x1p-9f);
  cublasDestroy(h);
}

__nv_bfloat16 to_bf16(float x) { return {static_cast<unsigned short>(std::bit_cast<uint32_t>(bf16(x)) >> 16)}; }
float from_bf16(__nv_bfloat16 x) { return std::bit_cast<float>(uint32_t{x.__x} << 16); }

TEST(CudaEmu, GemmExOnBf16OperandsWritesBf16OutputAndLeavesPaddingAlone) {
  std::mt19937 rng(5);
  const int m = 6, n = 3, k = 20, lda = k + 2, ldb = k + 1, ldc = m + 3;  // C = A^T B, as the project calls it
  const Mat A(k, m, lda, rng, 0), B(k, n, ldb, rng, 0), C(m, n, ldc, rng, 0);
  std::vector<__nv_bfloat16> a(A.v.size()), b(B.v.size()), c(C.v.size(), __nv_bfloat16{0x7FC1});
  for (size_t i = 0; i < a.size(); ++i) a[i] = i % lda < size_t(k) ? to_bf16(A.v[i]) : __nv_bfloat16{0x7FC1};
  for (size_t i = 0; i < b.size(); ++i) b[i] = i % ldb < size_t(k) ? to_bf16(B.v[i]) : __nv_bfloat16{0x7FC1};
  for (size_t i = 0; i < c.size(); ++i)
    if (i % ldc < size_t(m)) c[i] = to_bf16(C.v[i]);
  auto *da = to_device(a), *db = to_device(b), *dc = to_device(c);
  cublasHandle_t h;
  cublasCreate(&h);
  const float alpha = 2.0f, beta = 0.5f;
  ASSERT_EQ(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &alpha, da, CUDA_R_16BF, lda, db, CUDA_R_16BF, ldb,
                         &beta, dc, CUDA_R_16BF, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
            CUBLAS_STATUS_SUCCESS);
  const auto out = to_host(dc, c.size());
  for (int j = 0; j < n; ++j)
    for (int i = 0; i < ldc; ++i) {
      const size_t at = i + size_t(j) * ldc;
      if (i >= m) {
        EXPECT_EQ(out[at].__x, 0x7FC1) << "padding";
        continue;
      }
      double ref = beta * from_bf16(c[at]);
      for (int p = 0; p < k; ++p)
        ref += alpha * double(from_bf16(a[p + size_t(i) * lda])) * from_bf16(b[p + size_t(j) * ldb]);
      EXPECT_NEAR(from_bf16(out[at]), ref, std::abs(ref) * 0x1p-8 + 1e-6) << i << "," << j;  // half a bf16 ulp + fp32
    }
  cublasDestroy(h);
  cudaFree(da), cudaFree(db), cudaFree(dc);
}

// ---- WMMA -------------------------------------------------------------------------------------------------
namespace wmma = nvcuda::wmma;
// D = C + A B with A row-major, B column-major (ld 24), C loaded column-major, D stored row-major and read back
// lane-strided (lane l: elements l, l + 32, ...), with or without the __syncwarp that orders the reads.
void wmma_kernel(const __nv_bfloat16* a, const __nv_bfloat16* b, const float* c, float* d, bool sync) {
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> fc;
  wmma::load_matrix_sync(fa, a, 16);
  wmma::load_matrix_sync(fb, b, 24);
  wmma::load_matrix_sync(fc, c, 16, wmma::mem_col_major);
  wmma::mma_sync(fc, fa, fb, fc);
  EMU_SHARED(float, tile, [256]);
  wmma::store_matrix_sync(tile, fc, 16, wmma::mem_row_major);
  if (sync) __syncwarp();
  for (unsigned e = threadIdx.x; e < 256; e += 32) d[e] = tile[e];
}

TEST(CudaEmu, WmmaTileProductMatchesTheReferenceAndUnsyncedReadsAreStale) {
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(-2.0f, 2.0f);
  std::vector<__nv_bfloat16> a(256), b(16 * 24, __nv_bfloat16{0x7FC1});
  std::vector<float> c(256), d(256), ref(256);
  for (auto& x : a) x = to_bf16(u(rng));
  for (int j = 0; j < 16; ++j)
    for (int p = 0; p < 16; ++p) b[p + j * 24] = to_bf16(u(rng));
  for (auto& x : c) x = u(rng);
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) {
      double s = c[i + j * 16];
      for (int p = 0; p < 16; ++p) s += double(from_bf16(a[i * 16 + p])) * from_bf16(b[p + j * 24]);
      ref[i * 16 + j] = static_cast<float>(s);
    }
  auto *da = to_device(a), *db = to_device(b);  // cudaMalloc: 256-byte aligned, as WMMA wants
  float* dc = to_device(c);
  emu::launch(dim3(1), dim3(32), 0, nullptr, nullptr, [&] { wmma_kernel(da, db, dc, d.data(), true); }, "wmma");
  for (int e = 0; e < 256; ++e) EXPECT_NEAR(d[e], ref[e], 1e-5f * 16) << e;
  // Without it, lanes read elements other lanes have not stored yet (the shared tile's NaN poison).
  emu::launch(dim3(1), dim3(32), 0, nullptr, nullptr, [&] { wmma_kernel(da, db, dc, d.data(), false); }, "wmma");
  int stale = 0;
  for (int e = 0; e < 256; ++e)
    if (std::isnan(d[e]))
      ++stale;
    else
      EXPECT_NEAR(d[e], ref[e], 1e-5f * 16) << e;  // what a lane stored itself
  EXPECT_GT(stale, 0);
  cudaFree(da), cudaFree(db), cudaFree(dc);
}

// mma.sync.m16n8k16 (emu::mma_m16n8k16_bf16): each lane packs its registers from A [16, 16] and B [16, 8] as the
// PTX ISA's fragment tables place them (written out here element by element, independently of the emulation),
// and writes its four results where the accumulator table puts them: D = C + A B.
TEST(CudaEmu, MmaM16n8k16FollowsThePtxFragmentLayout) {
  std::mt19937 rng(4);
  std::uniform_real_distribution<float> u(-2.0f, 2.0f);
  std::vector<__nv_bfloat16> A(16 * 16), B(16 * 8);
  std::vector<float> C(16 * 8), D(16 * 8, NAN);
  for (auto& x : A) x = to_bf16(u(rng));
  for (auto& x : B) x = to_bf16(u(rng));
  for (auto& x : C) x = u(rng);
  auto pack = [](__nv_bfloat16 lo, __nv_bfloat16 hi) { return uint32_t{lo.__x} | uint32_t{hi.__x} << 16; };
  emu::launch(dim3(1), dim3(32), 0, nullptr, nullptr, [&] {
    const int lane = threadIdx.x, g = lane / 4, t = lane % 4;
    auto a = [&](int r, int k) { return A[r * 16 + k]; };
    auto b = [&](int k, int n) { return B[k * 8 + n]; };
    const uint32_t ra[4] = {pack(a(g, 2 * t), a(g, 2 * t + 1)), pack(a(g + 8, 2 * t), a(g + 8, 2 * t + 1)),
                            pack(a(g, 2 * t + 8), a(g, 2 * t + 9)), pack(a(g + 8, 2 * t + 8), a(g + 8, 2 * t + 9))};
    const uint32_t rb[2] = {pack(b(2 * t, g), b(2 * t + 1, g)), pack(b(2 * t + 8, g), b(2 * t + 9, g))};
    float c[4] = {C[g * 8 + 2 * t], C[g * 8 + 2 * t + 1], C[(g + 8) * 8 + 2 * t], C[(g + 8) * 8 + 2 * t + 1]};
    emu::mma_m16n8k16_bf16(c, ra, rb);
    D[g * 8 + 2 * t] = c[0], D[g * 8 + 2 * t + 1] = c[1];
    D[(g + 8) * 8 + 2 * t] = c[2], D[(g + 8) * 8 + 2 * t + 1] = c[3];
  }, "mma");
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 8; ++j) {
      double ref = C[i * 8 + j];
      for (int k = 0; k < 16; ++k) ref += double(from_bf16(A[i * 16 + k])) * from_bf16(B[k * 8 + j]);
      EXPECT_NEAR(D[i * 8 + j], ref, 1e-5 * 16) << i << "," << j;
    }
}

TEST_F(EmuDeathTest, WmmaRefusesMisalignedTilesAndLeadingDimensions) {
  __nv_bfloat16* p = nullptr;
  ASSERT_EQ(cudaMalloc(&p, 4096), cudaSuccess);
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> f;
  EXPECT_DEATH(emu::launch(dim3(1), dim3(32), 0, nullptr, nullptr, [&] { wmma::load_matrix_sync(f, p + 8, 16); }, "k"),
               "not 32-byte aligned");  // 16 bytes off
  EXPECT_DEATH(emu::launch(dim3(1), dim3(32), 0, nullptr, nullptr, [&] { wmma::load_matrix_sync(f, p, 12); }, "k"),
               "leading dimension not a multiple of 16 bytes");  // 24 bytes
  cudaFree(p);
}

// ldmatrix .x4: every lane gives one row address (lane 8 i + j: row j of matrix i), here scattered over a shared
// buffer so that each row is found only through its own lane's address. The expected registers are written from
// the PTX ISA's description: lane l (g = l / 4, t = l % 4) holds, of matrix i, row g's elements 2t and 2t + 1;
// with .trans, column g's elements in rows 2t and 2t + 1; the first element in the lower half.
TEST(CudaEmu, LdmatrixFollowsThePtxLayoutWithEveryLanesOwnRowAddress) {
  constexpr int kRowSlots = 64;  // 16-byte slots of the shared buffer; row (i, j) sits in slot (37 (8 i + j) + 5) % 64
  auto slot_of = [](int i, int j) { return (37 * (8 * i + j) + 5) % kRowSlots; };
  auto value = [](int i, int r, int c) { return static_cast<uint16_t>(1000 * i + 10 * r + c + 1); };
  std::vector<uint32_t> plain(32 * 4), trans(32 * 4);
  emu::launch(dim3(1), dim3(32), kRowSlots * 16, nullptr, nullptr, [&] {
    auto* smem = static_cast<uint16_t*>(emu::dynamic_shared());
    const int lane = threadIdx.x;
    if (lane == 0)
      for (int i = 0; i < 4; ++i)
        for (int r = 0; r < 8; ++r)
          for (int c = 0; c < 8; ++c) smem[8 * slot_of(i, r) + c] = value(i, r, c);
    __syncwarp();
    uint32_t r[4], rt[4];
    emu::ldmatrix_x4(r, smem + 8 * slot_of(lane / 8, lane % 8), false);
    emu::ldmatrix_x4(rt, smem + 8 * slot_of(lane / 8, lane % 8), true);
    for (int i = 0; i < 4; ++i) plain[4 * lane + i] = r[i], trans[4 * lane + i] = rt[i];
  }, "ldmatrix");
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane / 4, t = lane % 4;
    for (int i = 0; i < 4; ++i) {
      EXPECT_EQ(plain[4 * lane + i], value(i, g, 2 * t) | uint32_t{value(i, g, 2 * t + 1)} << 16) << lane << "," << i;
      EXPECT_EQ(trans[4 * lane + i], value(i, 2 * t, g) | uint32_t{value(i, 2 * t + 1, g)} << 16) << lane << "," << i;
    }
  }
}

TEST_F(EmuDeathTest, LdmatrixRefusesMisalignedRowsAndGlobalMemory) {
  float* global = nullptr;
  ASSERT_EQ(cudaMalloc(&global, 4096), cudaSuccess);
  uint32_t r[4];
  EXPECT_DEATH(emu::launch(dim3(1), dim3(32), 1024, nullptr, nullptr, [&] {
    emu::ldmatrix_x4(r, static_cast<char*>(emu::dynamic_shared()) + 16 * threadIdx.x + (threadIdx.x == 3 ? 8 : 0), false);
  }, "k"), "ldmatrix: a row address not 16-byte aligned");
  EXPECT_DEATH(emu::launch(dim3(1), dim3(32), 1024, nullptr, nullptr, [&] { emu::ldmatrix_x4(r, global, true); }, "k"),
               "ldmatrix: a row outside the block's shared memory");
  cudaFree(global);
}

// cp.async: a copy lands when its thread waits for its group (wait_group N: all but the N newest committed groups),
// not before, so a kernel that reads too early reads the old bytes; a source size below the copy's fills zeros.
TEST(CudaEmu, CpAsyncLandsAtTheWaitForItsGroupAndZeroFills) {
  float* src = nullptr;
  ASSERT_EQ(cudaMalloc(&src, 64 * sizeof(float)), cudaSuccess);
  std::vector<float> host(64);
  for (int i = 0; i < 64; ++i) host[i] = 1.0f + i;
  ASSERT_EQ(cudaMemcpy(src, host.data(), sizeof(float) * 64, cudaMemcpyHostToDevice), cudaSuccess);
  // seen[stage][k]: shared float k (of 12) after each stage, as its one thread reads it.
  std::vector<std::vector<float>> seen(4, std::vector<float>(12));
  emu::launch(dim3(1), dim3(1), 12 * sizeof(float), nullptr, nullptr, [&] {
    auto* sm = static_cast<float*>(emu::dynamic_shared());
    auto look = [&](int stage) { std::copy(sm, sm + 12, seen[stage].begin()); };
    emu::cp_async(sm, src, 16, 16);             // group 0: floats 0-3 <- src[0..4)
    emu::cp_async_commit();
    emu::cp_async(sm + 4, src + 8, 16, 8);      // group 1: floats 4-7 <- src[8], src[9], then zeros
    emu::cp_async(sm + 8, src + 20, 4, 4);      //          float 8 <- src[20]
    emu::cp_async_commit();
    look(0);
    emu::cp_async_wait(1);
    look(1);
    emu::cp_async(sm + 9, src + 30, 4, 0);      // uncommitted: a wait does not land it
    emu::cp_async_wait(0);
    look(2);
    emu::cp_async_commit();
    emu::cp_async_wait(0);
    look(3);
  }, "cp_async");
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  const float want3[12] = {1, 2, 3, 4, 9, 10, 0, 0, 21, 0, NAN, NAN};
  for (int k = 0; k < 12; ++k) {
    EXPECT_TRUE(std::isnan(seen[0][k])) << "before any wait, float " << k << ": " << seen[0][k];
    if (k < 4) EXPECT_EQ(seen[1][k], want3[k]) << k;
    else EXPECT_TRUE(std::isnan(seen[1][k])) << "group 1 landed at wait_group 1, float " << k;
    if (k < 9) EXPECT_EQ(seen[2][k], want3[k]) << k;
    else EXPECT_TRUE(std::isnan(seen[2][k])) << "an uncommitted copy landed, float " << k;
    if (k < 10) EXPECT_EQ(seen[3][k], want3[k]) << k;
    else EXPECT_TRUE(std::isnan(seen[3][k])) << "float " << k << " was never copied";
  }
  cudaFree(src);
}

TEST_F(EmuDeathTest, CpAsyncRefusesBadCopiesAndCopiesNeverWaitedFor) {
  float* src = nullptr;
  ASSERT_EQ(cudaMalloc(&src, 4096), cudaSuccess);
  std::vector<float> host(16);
  auto in_kernel = [&](auto f) { emu::launch(dim3(1), dim3(1), 256, nullptr, nullptr, f, "k"); };
  auto smem = [] { return static_cast<float*>(emu::dynamic_shared()); };
  EXPECT_DEATH(in_kernel([&] { emu::cp_async(smem(), src, 16, 16); }),
               "returned with cp.async copies it never waited for");
  EXPECT_DEATH(in_kernel([&] { emu::cp_async(smem() + 1, src, 16, 16); }), "not aligned to the copy's size");
  EXPECT_DEATH(in_kernel([&] { emu::cp_async(smem(), src + 2, 16, 16); }), "not aligned to the copy's size");
  EXPECT_DEATH(in_kernel([&] { emu::cp_async(smem(), src, 12, 12); }), "other than 4, 8 or 16 bytes");
  EXPECT_DEATH(in_kernel([&] { emu::cp_async(host.data(), src, 16, 16); }), "the destination is not the block's shared");
  EXPECT_DEATH(in_kernel([&] { emu::cp_async(smem(), host.data(), 16, 16); }), "the source is not device memory");
  cudaFree(src);
}

// ---- rewrite_cuda.py --------------------------------------------------------------------------------------
std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string l; std::getline(in, l);) out.push_back(l);
  return out;
}
std::string squeeze(const std::string& s) {  // runs of blanks to one, leading blanks removed
  std::string out;
  for (char ch : s)
    if (ch != ' ' || (!out.empty() && out.back() != ' ')) out += ch;
  return out;
}

TEST(CudaEmu, RewriteTurnsLaunchesAndSharedDeclarationsIntoHostCppKeepingLines) {
  const std::string src =
      "template <int N> void k(float* x, int n) {}\n"
      "void k2(float* x) {}\n"
      "void run(float* x, int n, cudaStream_t s) {\n"
      "  k<4><<<dim3(n, 2), 128,\n"
      "         64 * sizeof(float), s>>>(x,\n"
      "                                  n);\n"
      "  k2<<<1, 32>>>(x);  // no shared memory\n"
      "  // k2<<<1, 1>>>(x); in a comment\n"
      "}\n"
      "void g() {\n"
      "  extern __shared__ __align__(128) unsigned char smem[];\n"
      "  __shared__ float a[32], b[4][8];\n"
      "}\n";
  const auto dir = std::filesystem::temp_directory_path() / ("cuda_emu_rewrite_" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  const auto in = dir / "in.cu", out = dir / "out.cpp";
  std::ofstream(in) << src;
  const std::string cmd =
      std::string(EMU_PYTHON) + " " + EMU_SOURCE_DIR + "/rewrite_cuda.py " + in.string() + " " + out.string();
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  std::stringstream got;
  got << std::ifstream(out).rdbuf();
  std::filesystem::remove_all(dir);
  const auto before = lines_of(src), after = lines_of(got.str());
  ASSERT_EQ(after.size(), before.size() + 1) << got.str();  // the #line directive, then line for line
  EXPECT_EQ(after[0], "#line 1 \"" + in.string() + "\"");
  EXPECT_EQ(squeeze(after[4]),
            "::emu::launch_kernel(dim3(dim3(n, 2)), dim3(128), static_cast<size_t>(64 * sizeof(float)), s, "
            "reinterpret_cast<const void*>(k<4>), \"k<4>\", [=](auto... a) { k<4>(a...); }, x, n);");
  EXPECT_EQ(after[5], "");
  EXPECT_EQ(after[6], "");
  EXPECT_EQ(after[7], "  ::emu::launch_kernel(dim3(1), dim3(32), static_cast<size_t>(0), nullptr, nullptr, \"k2\", "
                      "[=](auto... a) { k2(a...); }, x);  // no shared memory");
  EXPECT_EQ(after[11], "  unsigned char* smem = static_cast<unsigned char*>(::emu::dynamic_shared());");
  EXPECT_EQ(after[12], "  EMU_SHARED(float, a, [32]); EMU_SHARED(float, b, [4][8]);");
  for (int l : {1, 2, 3, 8, 9, 10, 13}) EXPECT_EQ(after[l], before[l - 1]) << "line " << l;
}
}  // namespace
