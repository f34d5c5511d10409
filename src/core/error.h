// Errors as values with context. Every user-facing failure is an Error carrying the process exit code
// that the contract fixes (2 bad input, 3 diverged, 1 internal) and one line naming file, field and
// what was expected.
#pragma once
#include <stdexcept>
#include <string>

namespace onestep {

enum class ExitCode : int { ok = 0, internal = 1, bad_input = 2, diverged = 3 };

class Error : public std::runtime_error {
 public:
  Error(ExitCode code, const std::string& message) : std::runtime_error(message), code_(code) {}
  ExitCode code() const { return code_; }

 private:
  ExitCode code_;
};

// "where: what", e.g. bad_input("configs/tiny.toml", "model.n_heads: must divide d_model (128)").
[[noreturn]] inline void bad_input(const std::string& where, const std::string& what) {
  throw Error(ExitCode::bad_input, where + ": " + what);
}
[[noreturn]] inline void internal_error(const std::string& what) { throw Error(ExitCode::internal, what); }

}  // namespace onestep
