// CPU emulation (tests/cuda_emu): the one CUB call onestep makes, cub::DeviceRadixSort::SortPairs, with CUB's
// contract: a first call with no scratch only sizes it; the second sorts (key, value) pairs by key, stably (equal
// keys keep their order), on the given stream. Here a std::stable_sort in stream order, on the emulated device
// memory; only the full key width is emulated.
#pragma once
#include <algorithm>
#include <cstddef>
#include <numeric>
#include <vector>

#include "cuda_runtime_api.h"

namespace cub {
struct DeviceRadixSort {
  template <class K, class V>
  static cudaError_t SortPairs(void* temp, size_t& temp_bytes, const K* keys_in, K* keys_out, const V* values_in,
                               V* values_out, int n, int begin_bit = 0, int end_bit = sizeof(K) * 8,
                               cudaStream_t stream = nullptr) {
    if (begin_bit != 0 || end_bit != static_cast<int>(sizeof(K) * 8))
      ::emu::refuse_launch("cub::DeviceRadixSort::SortPairs", "a partial key width is not emulated");
    if (!temp) {
      temp_bytes = 256;  // CUB's own size differs; the caller must only pass back what it was told
      return cudaSuccess;
    }
    if (temp_bytes < 256) ::emu::refuse_launch("cub::DeviceRadixSort::SortPairs", "scratch smaller than asked for");
    for (const void* p : {static_cast<const void*>(keys_in), static_cast<const void*>(keys_out),
                          static_cast<const void*>(values_in), static_cast<const void*>(values_out),
                          static_cast<const void*>(temp)})
      if (!::emu::is_device_address(p))
        ::emu::refuse_launch("cub::DeviceRadixSort::SortPairs", "a pointer argument points to host memory");
    ::emu::launch(dim3(1), dim3(1), 0, stream, nullptr, [=] {
      std::vector<int> order(static_cast<size_t>(n));
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return keys_in[a] < keys_in[b]; });
      std::vector<K> k(static_cast<size_t>(n));
      std::vector<V> v(static_cast<size_t>(n));
      for (int i = 0; i < n; ++i) k[i] = keys_in[order[i]], v[i] = values_in[order[i]];
      std::copy(k.begin(), k.end(), keys_out);
      std::copy(v.begin(), v.end(), values_out);
    }, "cub::DeviceRadixSort::SortPairs");
    return cudaSuccess;
  }
};
}  // namespace cub
