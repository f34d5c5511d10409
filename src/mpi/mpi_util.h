// Private to src/mpi: what the MPI transport and the NCCL transport share. MPI's start-up and error checks,
// the polling wait with a deadline (a dead or hung peer becomes an error instead of a hang), and the rule for
// buffers an aborted operation may still touch.
#pragma once
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace onestep::pipeline::mpi_detail {

using Clock = std::chrono::steady_clock;

// MPI_Init_thread on first use (see mpi_transport.h for the lifetime rules); internal error after MPI_Finalize.
void ensure_mpi();
bool mpi_finalized();
void check(int rc, const std::string& what);  // internal error naming `what` and MPI's message
// A peer was declared dead or hung: destructors stop waiting for anything in flight.
bool peer_was_lost();
[[noreturn]] void peer_lost(const std::string& what);
std::string seconds_text(double s);
Clock::time_point deadline_from_now();  // now + peer_timeout_s()

// Polls until ready() or the deadline: first ~50 us of polling with yields (a reply that is already on its
// way costs no sleep), then sleeps of 50 us doubling to 250 us, so a waiting rank does not occupy a core
// that another rank may share, yet notices a message soon (with a 1 ms cap, a hop of a ping-pong cost
// ~1 ms: both sides settle into the longest sleep).
template <class Ready>
bool poll_until(Ready ready, Clock::time_point deadline) {
  const auto spin_end = Clock::now() + std::chrono::microseconds(50);
  int64_t sleep_us = 50;
  for (;;) {
    if (ready()) return true;
    const auto now = Clock::now();
    if (now >= deadline) return ready();
    if (now < spin_end) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(sleep_us));
      sleep_us = std::min<int64_t>(sleep_us * 2, 250);
    }
  }
}

// MPI_TAG_UB of MPI_COMM_WORLD (32767, the smallest bound the standard allows, where it is not set).
int tag_upper_bound();
// The checks both MPI-based transports make of a message: peer a stage other than this one (or this one too, when
// self_ok), tag within MPI_TAG_UB, length within an int. Internal errors naming stage `rank`.
void check_message(int rank, int stages, int tag_ub, const char* what, int peer, uint32_t tag, int64_t n,
                   bool self_ok);

// Polls MPI_Testall on reqs[0, n) until all complete (true) or the deadline passes (false), running progress()
// between tests (e.g. reaping finished sends). MPI errors are internal errors naming `what`.
template <class Progress>
bool wait_all(MPI_Request* reqs, int n, Clock::time_point deadline, Progress progress, const char* what) {
  int flag = 0;
  int rc = MPI_SUCCESS;
  const bool ok = poll_until(
      [&] {
        progress();
        rc = MPI_Testall(n, reqs, &flag, MPI_STATUSES_IGNORE);
        return rc != MPI_SUCCESS || flag != 0;
      },
      deadline);
  check(rc, what);
  return ok;
}

// Drops the elements of v for which done(element) is true; the order of the others is not kept.
template <class T, class Done>
void remove_done(std::vector<T>& v, Done done) {
  for (size_t i = 0; i < v.size();) {
    if (done(v[i])) {
      if (i + 1 != v.size()) v[i] = std::move(v.back());
      v.pop_back();
    } else {
      ++i;
    }
  }
}

// True once the request has completed (MPI_Test; an MPI error is an internal error naming `what`).
inline bool test_done(MPI_Request& req, const char* what) {
  int flag = 0;
  check(MPI_Test(&req, &flag, MPI_STATUS_IGNORE), what);
  return flag != 0;
}

// Buffers of operations that cannot be completed (error path): kept alive forever, since MPI (or a GPU) may
// still write into or read from them until the process ends.
template <class T>
void leak(T&& buffer) {
  new std::decay_t<T>(std::forward<T>(buffer));  // NOLINT: intentional
}

}  // namespace onestep::pipeline::mpi_detail
