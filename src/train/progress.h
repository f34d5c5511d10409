// Progress reporting: an updating line on a terminal, plain periodic lines otherwise (logs, CI).
#pragma once
#include <string>

namespace onestep {

class Progress {
 public:
  Progress(int64_t total_steps, int64_t log_every);
  // Called after every step; prints when due (every step on a terminal, every log_every steps otherwise).
  void step(int64_t step, double loss, double tok_per_s, double elapsed_s, double lr);
  // A message on its own line (evaluation results, checkpoints), not overwritten.
  void note(const std::string& line);
  void finish();

 private:
  int64_t total_, every_;
  bool tty_;
  bool line_open_ = false;
};

std::string format_duration(double seconds);

}  // namespace onestep
