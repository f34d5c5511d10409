// Rotary position embedding, Hugging Face rotate_half convention:
//   out[i]       = x[i] * cos(a_i) - x[i + D/2] * sin(a_i)
//   out[i + D/2] = x[i + D/2] * cos(a_i) + x[i] * sin(a_i),    a_i = t * theta^(-2i/D), 0 <= i < D/2.
// The cos/sin table [T, D/2] is computed in double and cached, keyed by (T, D, theta).
#include <cmath>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <vector>

#include "kernels/cpu/ops.h"

namespace onestep::cpu {

namespace {
struct RopeTable {
  std::vector<float> cos, sin;  // [T, D/2]
};

std::shared_ptr<const RopeTable> rope_table(int T, int D, float theta) {
  static std::mutex mu;
  static std::map<std::tuple<int, int, float>, std::shared_ptr<const RopeTable>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto key = std::make_tuple(T, D, theta);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  auto tab = std::make_shared<RopeTable>();
  const int half = D / 2;
  tab->cos.resize(static_cast<size_t>(T) * half);
  tab->sin.resize(static_cast<size_t>(T) * half);
  for (int i = 0; i < half; ++i) {
    const double inv_freq = std::pow(static_cast<double>(theta), -2.0 * i / static_cast<double>(D));
    for (int t = 0; t < T; ++t) {
      const double a = static_cast<double>(t) * inv_freq;
      tab->cos[static_cast<size_t>(t) * half + i] = static_cast<float>(std::cos(a));
      tab->sin[static_cast<size_t>(t) * half + i] = static_cast<float>(std::sin(a));
    }
  }
  cache.emplace(key, tab);
  return tab;
}
}  // namespace

namespace {
// Rotates every head's pairs (i, i + D/2) of every position t by the angle t * theta^(-2i/D): forward writes
// R(a) x (out may equal in: both halves are read before either is written); the backward accumulates the
// transpose R(-a) dout.
template <bool kTranspose>
void rotate(float* out, const float* in, int B, int T, int H, int D, float theta) {
  const auto tab = rope_table(T, D, theta);
  const int half = D / 2;
  const int rows = B * T;
#pragma omp parallel for schedule(static)
  for (int r = 0; r < rows; ++r) {
    const int t = r % T;
    const float* cs = tab->cos.data() + static_cast<int64_t>(t) * half;
    const float* sn = tab->sin.data() + static_cast<int64_t>(t) * half;
    for (int h = 0; h < H; ++h) {
      const int64_t off = (static_cast<int64_t>(r) * H + h) * D;
      const float* a = in + off;
      float* o = out + off;
#pragma omp simd
      for (int i = 0; i < half; ++i) {
        const float a1 = a[i], a2 = a[i + half];
        if constexpr (kTranspose) {
          o[i] += a1 * cs[i] + a2 * sn[i];
          o[i + half] += a2 * cs[i] - a1 * sn[i];
        } else {
          o[i] = a1 * cs[i] - a2 * sn[i];
          o[i + half] = a2 * cs[i] + a1 * sn[i];
        }
      }
    }
  }
}
}  // namespace

void rope_forward(float* out, const float* x, int B, int T, int H, int D, float theta) {
  rotate<false>(out, x, B, T, H, D, theta);
}

void rope_backward(float* dx, const float* dout, int B, int T, int H, int D, float theta) {
  rotate<true>(dx, dout, B, T, H, D, theta);
}

}  // namespace onestep::cpu
