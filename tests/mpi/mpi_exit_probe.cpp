// A rank that dies mid-run must take the job down: rank 1 dies (mode "exit": std::exit(1); mode "throw":
// an uncaught onestep::Error) while the other ranks block in recv on a message it never sends.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "core/error.h"
#include "mpi/mpi_transport.h"

int main(int argc, char** argv) {
  using namespace onestep::pipeline;
  const char* mode = argc > 1 ? argv[1] : "exit";
  auto t = make_mpi_transport();
  if (t->stage() == 1) {
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    std::fprintf(stderr, "rank 1: dying (%s)\n", mode);
    if (std::strcmp(mode, "throw") == 0) throw onestep::Error(onestep::ExitCode::internal, "rank 1 failed");
    std::exit(1);
  }
  float x = 0;
  t->recv(1, 7, &x, 1);  // never arrives
  std::fprintf(stderr, "rank %d: unexpectedly received\n", t->stage());
  return 0;
}
