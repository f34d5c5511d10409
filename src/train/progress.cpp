#include "train/progress.h"

#include <unistd.h>

#include <cstdio>

namespace onestep {

std::string format_duration(double s) {
  char buf[32];
  if (s < 0 || s != s) return "?";
  long t = static_cast<long>(s + 0.5);
  if (t >= 3600) std::snprintf(buf, sizeof buf, "%ldh%02ldm", t / 3600, (t / 60) % 60);
  else std::snprintf(buf, sizeof buf, "%ldm%02lds", t / 60, t % 60);
  return buf;
}

Progress::Progress(int64_t total_steps, int64_t log_every)
    : total_(total_steps), every_(log_every), tty_(isatty(fileno(stdout))) {}

void Progress::step(int64_t step, double loss, double tok_per_s, double elapsed_s, double lr) {
  const bool last = step == total_;
  if (!tty_ && step % every_ != 0 && !last && step != 1) return;
  const double eta = step > 0 ? elapsed_s / step * (total_ - step) : 0.0;
  char buf[256];
  std::snprintf(buf, sizeof buf, "step %6lld/%lld  loss %.4f  lr %.2e  %8.0f tok/s  elapsed %s  eta %s",
                static_cast<long long>(step), static_cast<long long>(total_), loss, lr, tok_per_s,
                format_duration(elapsed_s).c_str(), format_duration(eta).c_str());
  if (tty_) {
    std::printf("\r\033[K%s", buf);
    line_open_ = true;
  } else {
    std::printf("%s\n", buf);
  }
  std::fflush(stdout);
}

void Progress::note(const std::string& line) {
  if (line_open_) std::printf("\n");
  line_open_ = false;
  std::printf("%s\n", line.c_str());
  std::fflush(stdout);
}

void Progress::finish() {
  if (line_open_) std::printf("\n");
  line_open_ = false;
  std::fflush(stdout);
}

}  // namespace onestep
