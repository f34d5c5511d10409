// A loop over independent per-matrix tasks (Muon's and NorMuon's Newton–Schulz, SOAP's rotations and basis
// refreshes) that either shares the matrices out among the OpenMP threads or runs them one after another with
// every thread on each one's products.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

namespace onestep::optim_detail {

enum class MatrixLoop {
  // Always shared out: each matrix's work runs on one thread (OpenBLAS, LAPACK and nested OpenMP regions are
  // single-threaded inside a parallel region), so the results do not depend on the thread count.
  shared_out,
  // Shared out with at least 2 matrices per thread; otherwise one after another on the calling thread, whose
  // products then use every thread. Small products gain most from sharing out: a 128 x 128 sgemm takes longer on
  // 2 threads than on 1 on the 2-core development machine (0.21 against 0.14 ms).
  shared_out_if_many,
};

// task(k, slot) for every k in `order` (put the largest first: the threads take them in that order). slot, in
// [0, loop_slots()), is the running thread's, for per-thread scratch: no two tasks run at once with the same slot.
// An exception from a task is rethrown after the loop (the first in `order`).
void for_each_matrix(const std::vector<size_t>& order, MatrixLoop how,
                     const std::function<void(size_t k, int slot)>& task);
// How many slots for_each_matrix may use now: the OpenMP thread count.
int loop_slots();
// Grows per-slot scratch to loop_slots() entries, each new one from make(): allocated on the first loop with
// that many threads, reused after.
template <class T, class Make>
void grow_to_slots(std::vector<T>& scratch, Make make) {
  while (scratch.size() < static_cast<size_t>(loop_slots())) scratch.push_back(make());
}

// The indices 0..n-1 sorted by cost(k), largest first (stable).
std::vector<size_t> largest_first(size_t n, const std::function<int64_t(size_t)>& cost);

}  // namespace onestep::optim_detail
