#include "optim/matrix_loop.h"

#include <omp.h>

#include <algorithm>
#include <exception>
#include <numeric>

namespace onestep::optim_detail {

int loop_slots() { return omp_get_max_threads(); }

void for_each_matrix(const std::vector<size_t>& order, MatrixLoop how,
                     const std::function<void(size_t k, int slot)>& task) {
  const int threads = omp_get_max_threads();
  const int64_t n = static_cast<int64_t>(order.size());
  std::vector<std::exception_ptr> err(order.size());
  auto run = [&](int64_t i, int slot) {
    try {
      task(order[i], slot);
    } catch (...) {
      err[i] = std::current_exception();
    }
  };
  if (how == MatrixLoop::shared_out || (threads > 1 && n >= 2 * threads)) {
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t i = 0; i < n; ++i) run(i, omp_get_thread_num());
  } else {
    for (int64_t i = 0; i < n; ++i) run(i, 0);
  }
  for (auto& e : err)
    if (e) std::rethrow_exception(e);
}

std::vector<size_t> largest_first(size_t n, const std::function<int64_t(size_t)>& cost) {
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return cost(a) > cost(b); });
  return order;
}

}  // namespace onestep::optim_detail
