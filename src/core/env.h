// The environment switches of measurement variants (documented in the README): ONESTEP_ATTENTION,
// ONESTEP_BF16_OPERANDS, ONESTEP_BF16_WEIGHTS, ONESTEP_MPI_PAYLOADS, ONESTEP_NS_PRECISION.
#pragma once
#include <cstdlib>
#include <cstring>

namespace onestep {

// True when environment variable `name` is set to exactly `value`.
inline bool env_is(const char* name, const char* value) {
  const char* v = std::getenv(name);
  return v && std::strcmp(v, value) == 0;
}

}  // namespace onestep
