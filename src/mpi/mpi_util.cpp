#include "mpi/mpi_util.h"

#include <stdlib.h>  // on_exit (glibc)

#include <atomic>
#include <climits>
#include <mutex>
#include <sstream>

#include "core/error.h"
#include "pipeline/transport.h"

namespace onestep::pipeline::mpi_detail {

namespace {

std::atomic<bool> g_peer_lost{false};

std::string mpi_error_string(int rc) {
  char buf[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(rc, buf, &len) != MPI_SUCCESS) return "MPI error " + std::to_string(rc);
  return std::string(buf, static_cast<size_t>(len));
}

// Exit handler, registered only when this module initialised MPI. On failure we deliberately skip
// MPI_Finalize (it synchronises with the other ranks, which may be waiting for us): the process then
// exits "improperly" and mpirun aborts the whole job.
void finalize_at_exit(int status, void*) {
  if (status != 0) return;
  int init = 0;
  MPI_Initialized(&init);
  if (init && !mpi_finalized()) MPI_Finalize();
}

}  // namespace

bool peer_was_lost() { return g_peer_lost; }

void peer_lost(const std::string& what) {
  g_peer_lost = true;
  internal_error(what);
}

void check(int rc, const std::string& what) {
  if (rc != MPI_SUCCESS) internal_error("MPI: " + what + ": " + mpi_error_string(rc));
}

bool mpi_finalized() {
  int fin = 0;
  MPI_Finalized(&fin);
  return fin != 0;
}

void ensure_mpi() {
  static std::once_flag once;
  std::call_once(once, [] {
    int init = 0;
    MPI_Initialized(&init);
    if (init) return;  // someone else initialised MPI and owns its finalisation
    int provided = 0;
    check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided), "MPI_Init_thread");
    on_exit(finalize_at_exit, nullptr);
    if (provided < MPI_THREAD_FUNNELED)
      internal_error("MPI: the library provides thread level " + std::to_string(provided) +
                     ", at least MPI_THREAD_FUNNELED is needed");
  });
  if (mpi_finalized()) internal_error("MPI: used after MPI_Finalize");
}

std::string seconds_text(double s) {
  std::ostringstream os;
  os << s;
  return os.str();
}

int tag_upper_bound() {
  void* ub = nullptr;
  int flag = 0;
  check(MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_TAG_UB, &ub, &flag), "MPI_Comm_get_attr(MPI_TAG_UB)");
  return flag ? *static_cast<int*>(ub) : 32767;
}

void check_message(int rank, int stages, int tag_ub, const char* what, int peer, uint32_t tag, int64_t n,
                   bool self_ok) {
  if (peer < 0 || peer >= stages || (peer == rank && !self_ok))
    internal_error("stage " + std::to_string(rank) + ": " + what + " stage " + std::to_string(peer) + " of " +
                   std::to_string(stages));
  if (tag > static_cast<uint32_t>(tag_ub))
    internal_error("stage " + std::to_string(rank) + ": tag " + std::to_string(tag) + " exceeds MPI_TAG_UB " +
                   std::to_string(tag_ub));
  if (n < 0 || n > INT_MAX)
    internal_error("stage " + std::to_string(rank) + ": message of " + std::to_string(n) + " floats (at most 2^31-1)");
}

Clock::time_point deadline_from_now() {
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(peer_timeout_s()));
}

}  // namespace onestep::pipeline::mpi_detail
