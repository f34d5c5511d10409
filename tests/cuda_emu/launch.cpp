// CPU emulation of kernel launches (tests/cuda_emu). A launch runs in its stream's order (streams.h), block after
// block; within a block each CUDA thread is a fiber that runs until it reaches a barrier or returns, so the
// threads interleave only at __syncthreads, __syncwarp and the shuffles, as far apart as the hardware allows.
// What the hardware would turn into a hang, a fault or silent garbage fails loudly here:
//   - a barrier that can never complete (a thread returned, or waits at a barrier the others skip);
//   - a launch configuration the device refuses (it sets the error cudaGetLastError reports, as CUDA does);
//   - more dynamic shared memory than the kernel was opted in to, or than the device has;
//   - shared memory is filled with 0xFF bytes (NaN) at the start of each block: reads of unwritten shared
//     memory show up as NaN in the results; writes past its end are found when the block ends.
// Blocks run in grid order, or with CUDA_EMU_BLOCK_ORDER=shuffle in a random order per launch (a GPU promises
// none): a kernel whose blocks depend on each other's order, or that sums across blocks with float atomics and is
// said to be deterministic, then gives different results from run to run. CUDA_EMU_BLOCK_SEED=N repeats an order.
#include <sys/mman.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "core/env.h"
#include "cuda_runtime_api.h"
#include "streams.h"

namespace emu {
void set_launch_error(cudaError_t e);  // runtime.cpp
thread_local ThreadIndex current;

namespace {
constexpr size_t kStackBytes = 256 * 1024;  // per CUDA thread; a guard page below each catches overflows
constexpr size_t kStaticSharedLimit = 48 * 1024;
constexpr size_t kDynamicSharedDefault = 48 * 1024;

std::mutex attributes_mu;
std::map<const void*, int> max_dynamic_shared;  // cudaFuncSetAttribute, by kernel

thread_local const char* kernel_name = "";
}  // namespace

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "CUDA emulation: kernel %s, block (%u,%u,%u), thread (%u,%u,%u): %s\n", kernel_name,
               current.bid.x, current.bid.y, current.bid.z, current.tid.x, current.tid.y, current.tid.z, what);
  std::fflush(stderr);
  std::abort();
}

// From the SIGSEGV handler (runtime.cpp): inside a kernel, an access past the end of a device allocation (its guard
// page) or to no memory at all; outside one, the host code's own fault.
void report_fault(const void* address) {
  char what[160];
  std::snprintf(what, sizeof what, "memory fault at %p: past the end of a device allocation, or outside any",
                address);
  if (*kernel_name) fail(what);
  std::fprintf(stderr, "CUDA emulation: host code: %s\n", what);
  std::fflush(stderr);
  std::abort();
}

void refuse_launch(const char* name, const char* why) {
  std::fprintf(stderr, "CUDA emulation: launch of kernel %s refused: %s\n", name, why);
  std::fflush(stderr);
  std::abort();
}

void set_max_dynamic_shared(const void* kernel, int bytes) {
  std::lock_guard<std::mutex> lock(attributes_mu);
  max_dynamic_shared[kernel] = bytes;
}

struct Barrier {
  unsigned expected = 0, arrived = 0;
  uint64_t generation = 0;
};

// Switching between the scheduler and the fibers: save the callee-saved registers on the current stack, swap
// stack pointers, restore (glibc's swapcontext also saves the signal mask, a system call per switch that made
// the emulation twice as slow). The floating-point control words are left alone: no kernel changes them.
// x86-64 System V only.
extern "C" void emu_switch_stack(void** save_sp, void* load_sp);
asm(R"(
  .text
  .p2align 4
  .globl emu_switch_stack
  .type emu_switch_stack, @function
emu_switch_stack:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size emu_switch_stack, .-emu_switch_stack
  .section .note.GNU-stack, "", @progbits
  .text
)");

struct AsyncCopy {
  void* dst;
  const void* src;
  unsigned bytes, src_bytes;
  void land() const {
    std::memcpy(dst, src, src_bytes);
    std::memset(static_cast<char*>(dst) + src_bytes, 0, bytes - src_bytes);
  }
};

struct Fiber {
  void* sp = nullptr;  // saved stack pointer while switched out
  ThreadIndex index;
  bool done = false;
  const Barrier* waiting_at = nullptr;
  const char* barrier_name = "";
  std::vector<AsyncCopy> uncommitted;               // cp.async copies since the last commit
  std::deque<std::vector<AsyncCopy>> copy_groups;  // committed and not yet waited for, oldest first
};

// Shared memory as the hardware lays it out: 128-byte aligned (the kernels declare __align__(128) buffers),
// filled with 0xFF bytes. A guard of 0xFF bytes follows; a write past the end (on the GPU: silently into the next
// buffer; here: into the heap) shows as a changed guard byte when the block ends.
struct SharedMemory {
  static constexpr size_t kGuard = 4096;
  unsigned char* bytes = nullptr;
  size_t size = 0, allocated = 0;  // what the kernel may use; that rounded up to 128 bytes, plus the guard
  SharedMemory() = default;
  explicit SharedMemory(size_t n)
      : bytes(static_cast<unsigned char*>(std::aligned_alloc(128, (n + 127) / 128 * 128 + kGuard))),
        size(n),
        allocated((n + 127) / 128 * 128 + kGuard) {
    poison();
  }
  void poison() { std::memset(bytes, 0xFF, allocated); }  // before each block: nothing left from the last
  bool overrun() const {
    for (size_t i = size; i < allocated; ++i)
      if (bytes[i] != 0xFF) return true;
    return false;
  }
  SharedMemory(SharedMemory&& o) noexcept : bytes(o.bytes), size(o.size), allocated(o.allocated) { o.bytes = nullptr; }
  SharedMemory& operator=(SharedMemory&& o) noexcept {
    std::swap(bytes, o.bytes);
    std::swap(size, o.size);
    std::swap(allocated, o.allocated);
    return *this;
  }
  ~SharedMemory() { std::free(bytes); }
};

struct Block {
  std::vector<Fiber> fibers;
  Barrier block_barrier;
  std::vector<Barrier> warp_barriers;
  std::vector<uint64_t> exchange;
  std::map<const void*, SharedMemory> statics;
  size_t static_bytes = 0;
  SharedMemory dynamic;
  bool progress = false;  // a thread arrived at a barrier or returned since the scheduler last looked
};

namespace {
// One per host thread: the fibers' stacks (kept between launches) and the scheduler's own context.
struct Scheduler {
  std::vector<unsigned char*> stacks;
  void* main_sp = nullptr;
  Fiber* running = nullptr;
  const std::function<void()>* body = nullptr;
  ~Scheduler() {
    for (unsigned char* s : stacks) munmap(s - 4096, kStackBytes + 4096);
  }
  unsigned char* stack(size_t i) {
    while (stacks.size() <= i) {
      void* m = mmap(nullptr, kStackBytes + 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (m == MAP_FAILED) fail("out of memory for the emulated threads' stacks");
      mprotect(m, 4096, PROT_NONE);  // the guard page
      stacks.push_back(static_cast<unsigned char*>(m) + 4096);
    }
    return stacks[i];
  }
};
thread_local Scheduler scheduler;

void yield() { emu_switch_stack(&scheduler.running->sp, scheduler.main_sp); }

[[noreturn]] void fiber_main() {
  (*scheduler.body)();
  Fiber* f = scheduler.running;
  // On a GPU the copies would still land, into memory the block no longer owns: a prefetch never used.
  if (!f->uncommitted.empty() || !f->copy_groups.empty()) fail("returned with cp.async copies it never waited for");
  f->done = true;
  Block& b = *f->index.block;
  b.progress = true;
  if (b.block_barrier.arrived || b.warp_barriers[f->index.lin / 32].arrived)
    fail("returned while other threads of its block or warp wait at a barrier");
  yield();  // never resumed
  std::abort();
}

// A fresh fiber's stack, laid out as emu_switch_stack leaves a switched-out one: six registers and the return
// address fiber_main, aligned as at a function's entry (rsp % 16 == 8 after the return).
void* initial_stack(unsigned char* stack) {
  auto* top = reinterpret_cast<uint64_t*>(stack + kStackBytes);  // 16-byte aligned
  uint64_t* sp = top - 8;
  for (int r = 0; r < 6; ++r) sp[r] = 0;
  sp[6] = reinterpret_cast<uint64_t>(&fiber_main);
  sp[7] = 0;
  return sp;
}

void wait(Barrier& bar, const char* what) {
  Block& b = *current.block;
  b.progress = true;
  if (++bar.arrived == bar.expected) {  // the last to arrive releases the others
    bar.arrived = 0;
    ++bar.generation;
    return;
  }
  const uint64_t g = bar.generation;
  Fiber* f = scheduler.running;
  f->waiting_at = &bar;
  f->barrier_name = what;
  while (bar.generation == g) yield();
  f->waiting_at = nullptr;
}

void run_block(Block& b, unsigned threads) {
  for (unsigned t = 0; t < threads; ++t) {
    Fiber& f = b.fibers[t];
    f.sp = initial_stack(scheduler.stack(t)), f.done = false;
    f.uncommitted.clear(), f.copy_groups.clear();
  }
  // Between barriers, the threads of a block run one after another: in index order, or with
  // CUDA_EMU_THREAD_ORDER=reverse from the last to the first, so that a read of what another thread writes
  // without a barrier in between sees the unwritten value in one of the two orders.
  static const bool reverse = onestep::env_is("CUDA_EMU_THREAD_ORDER", "reverse");
  for (unsigned left = threads; left > 0;) {
    b.progress = false;
    for (unsigned i = 0; i < threads; ++i) {
      Fiber& f = b.fibers[reverse ? threads - 1 - i : i];
      if (f.done) continue;
      current = f.index;
      scheduler.running = &f;
      emu_switch_stack(&scheduler.main_sp, f.sp);
      if (f.done) --left;
    }
    if (!b.progress) {  // a whole round in which no thread arrived anywhere or returned: a barrier never completes
      for (Fiber& f : b.fibers)
        if (!f.done && f.waiting_at) {
          current = f.index;
          const std::string m = std::string(f.barrier_name) + " that can never complete (" +
                                std::to_string(f.waiting_at->arrived) + " of " + std::to_string(f.waiting_at->expected) +
                                " threads arrived; the others returned or wait at another barrier)";
          fail(m.c_str());
        }
    }
  }
  current = ThreadIndex{};
}
}  // namespace

void* static_shared(const void* site, size_t bytes) {
  Block& b = *current.block;
  auto it = b.statics.find(site);
  if (it != b.statics.end()) return it->second.bytes;
  b.static_bytes += bytes;
  if (b.static_bytes > kStaticSharedLimit) fail("more than 48 KiB of static shared memory");
  return b.statics.emplace(site, SharedMemory(bytes)).first->second.bytes;
}
void* dynamic_shared() {
  if (!current.block->dynamic.bytes) fail("extern __shared__ memory used by a kernel launched without any");
  return current.block->dynamic.bytes;
}
void sync_block() { wait(current.block->block_barrier, "__syncthreads"); }
void sync_warp(unsigned mask) {
  Barrier& bar = current.block->warp_barriers[current.lin / 32];
  const unsigned lanes = bar.expected;
  if (mask != (lanes == 32 ? 0xffffffffu : (1u << lanes) - 1u)) fail("warp barrier or shuffle over part of a warp (not emulated)");
  wait(bar, "__syncwarp or shuffle");
}
uint64_t* warp_exchange() { return current.block->exchange.data(); }

bool is_shared_address(const void* p, size_t n) {
  const Block& b = *current.block;
  auto inside = [&](const SharedMemory& m) {
    const auto* c = static_cast<const unsigned char*>(p);
    return m.bytes && c >= m.bytes && c + n <= m.bytes + m.size;
  };
  if (inside(b.dynamic)) return true;
  for (const auto& site : b.statics)
    if (inside(site.second)) return true;
  return false;
}
void cp_async(void* shared_dst, const void* global_src, unsigned bytes, unsigned src_bytes) {
  if (bytes != 4 && bytes != 8 && bytes != 16) fail("cp.async of other than 4, 8 or 16 bytes");
  if (src_bytes > bytes) fail("cp.async: a source size larger than the copy");
  if (reinterpret_cast<uintptr_t>(shared_dst) % bytes || reinterpret_cast<uintptr_t>(global_src) % bytes)
    fail("cp.async: an address not aligned to the copy's size");
  if (!is_shared_address(shared_dst, bytes)) fail("cp.async: the destination is not the block's shared memory");
  if (src_bytes && device_of(global_src, src_bytes) < 0) fail("cp.async: the source is not device memory");
  scheduler.running->uncommitted.push_back({shared_dst, global_src, bytes, src_bytes});
}
void cp_async_commit() {
  Fiber& f = *scheduler.running;
  f.copy_groups.push_back(std::move(f.uncommitted));
  f.uncommitted.clear();
}
void cp_async_wait(unsigned pending) {
  Fiber& f = *scheduler.running;
  for (; f.copy_groups.size() > pending; f.copy_groups.pop_front())
    for (const AsyncCopy& c : f.copy_groups.front()) c.land();
}

// The order of a launch's blocks (linear indices): empty for grid order; with CUDA_EMU_BLOCK_ORDER=shuffle a random
// permutation, from one generator per process whose seed is printed once (CUDA_EMU_BLOCK_SEED sets it).
std::vector<uint64_t> block_order(uint64_t blocks) {
  static const bool shuffle = onestep::env_is("CUDA_EMU_BLOCK_ORDER", "shuffle");
  if (!shuffle || blocks < 2) return {};
  static std::mutex mu;
  static std::mt19937_64 rng = [] {
    const char* v = std::getenv("CUDA_EMU_BLOCK_SEED");
    const uint64_t seed = v && *v ? std::strtoull(v, nullptr, 10) : std::random_device{}();
    std::fprintf(stderr, "CUDA emulation: blocks in a random order, CUDA_EMU_BLOCK_SEED=%llu repeats it\n",
                 static_cast<unsigned long long>(seed));
    return std::mt19937_64(seed);
  }();
  std::vector<uint64_t> order(blocks);
  std::iota(order.begin(), order.end(), uint64_t{0});
  std::lock_guard<std::mutex> lock(mu);
  std::shuffle(order.begin(), order.end(), rng);
  return order;
}

// The blocks of a launch, one after another on the calling thread. One Block serves them all: its barriers end
// every block back at zero, and its shared memory (dynamic, and each __shared__ site once first used) is poisoned
// again before the next block.
void run_grid(dim3 grid, dim3 block, size_t dynamic_smem, const std::function<void()>& body, const char* name) {
  const char* outer_name = kernel_name;
  kernel_name = name;
  scheduler.body = &body;
  const unsigned n = block.x * block.y * block.z;
  Block b;
  b.fibers.resize(n);
  b.block_barrier.expected = n;
  b.warp_barriers.resize((n + 31) / 32);
  for (unsigned w = 0; w < b.warp_barriers.size(); ++w) b.warp_barriers[w].expected = std::min(32u, n - 32 * w);
  b.exchange.assign(n, 0);
  if (dynamic_smem) b.dynamic = SharedMemory(dynamic_smem);
  for (unsigned t = 0; t < n; ++t) {
    ThreadIndex& i = b.fibers[t].index;
    i.tid = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
    i.bdim = block, i.gdim = grid, i.lin = t, i.block = &b;
  }
  const uint64_t blocks = uint64_t{grid.x} * grid.y * grid.z;
  const std::vector<uint64_t> order = block_order(blocks);
  for (uint64_t k = 0; k < blocks; ++k) {
    const uint64_t lin = order.empty() ? k : order[k];
    const dim3 bid(static_cast<unsigned>(lin % grid.x), static_cast<unsigned>(lin / grid.x % grid.y),
                   static_cast<unsigned>(lin / (uint64_t{grid.x} * grid.y)));
    for (Fiber& f : b.fibers) f.index.bid = bid;
    run_block(b, n);
    const char* overrun = b.dynamic.overrun() ? "its dynamic shared memory" : nullptr;
    for (auto& site : b.statics) {
      if (site.second.overrun()) overrun = "a __shared__ array";
      site.second.poison();
    }
    if (overrun) {
      current.bid = bid;
      fail((std::string("a thread of the block (not known which) wrote past the end of ") + overrun).c_str());
    }
    if (b.dynamic.bytes) b.dynamic.poison();
  }
  kernel_name = outer_name;
}

void launch(dim3 grid, dim3 block, size_t dynamic_smem, cudaStream_t stream, const void* key,
            std::function<void()> body, const char* name) {
  const uint64_t threads = uint64_t{block.x} * block.y * block.z;
  if (threads == 0 || threads > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
      grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535) {
    set_launch_error(cudaErrorInvalidConfiguration);
    return;
  }
  size_t allowed = kDynamicSharedDefault;
  if (key) {
    std::lock_guard<std::mutex> lock(attributes_mu);
    auto it = max_dynamic_shared.find(key);
    if (it != max_dynamic_shared.end()) allowed = static_cast<size_t>(it->second);
  }
  if (dynamic_smem > allowed || dynamic_smem > shared_optin_bytes()) {
    set_launch_error(cudaErrorInvalidValue);
    return;
  }
  enqueue(stream, [=, body = std::move(body)] { run_grid(grid, block, dynamic_smem, body, name); });
}

}  // namespace emu
