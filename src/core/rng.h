// Counter-based randomness: every random number is a pure function of (seed, stream, index), so
// initialisation, data order and sampling never depend on which stage or thread ran first.
#pragma once
#include <cmath>
#include <cstdint>

namespace onestep {

// SplitMix64 finaliser: a strong 64-bit mixing function.
inline uint64_t mix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// Named streams keep unrelated uses of one seed apart.
enum class RngStream : uint64_t { init = 1, data = 2, sample = 3, eval = 4, test = 5 };

class CounterRng {
 public:
  CounterRng(uint64_t seed, RngStream stream, uint64_t index)
      : key_(mix64(mix64(seed ^ (static_cast<uint64_t>(stream) << 56)) ^ index)) {}
  uint64_t next_u64() { return mix64(key_ + counter_++ * 0xd1b54a32d192ed03ULL); }
  // Uniform in [0, 1) with 24 bits.
  float uniform() { return static_cast<float>(next_u64() >> 40) * (1.0f / 16777216.0f); }
  // Uniform integer in [0, n).
  uint64_t below(uint64_t n) { return next_u64() % n; }
  // Standard normal (Box-Muller on two 53-bit uniforms).
  float normal() {
    double u1 = (static_cast<double>(next_u64() >> 11) + 1.0) * (1.0 / 9007199254740993.0);
    double u2 = static_cast<double>(next_u64() >> 11) * (1.0 / 9007199254740992.0);
    return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
  }
  uint64_t counter() const { return counter_; }

 private:
  uint64_t key_;
  uint64_t counter_ = 0;
};

}  // namespace onestep
