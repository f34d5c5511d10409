// Packed per-parameter optimizer state: one float buffer per kind of state, each parameter's slice
// starting on a 16-float boundary (the same rule AdamWGroup uses).
#pragma once
#include <cstdint>
#include <vector>

namespace onestep::optim_detail {

inline int64_t pad16(int64_t n) { return (n + 15) / 16 * 16; }

// off[k] = start of slice k for slices of the given sizes; returns the total length.
inline int64_t pack(const std::vector<int64_t>& sizes, std::vector<int64_t>& off) {
  off.clear();
  int64_t total = 0;
  for (int64_t n : sizes) {
    off.push_back(total);
    total += pad16(n);
  }
  return total;
}

}  // namespace onestep::optim_detail
