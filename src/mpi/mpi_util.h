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

// Buffers of operations that cannot be completed (error path): kept alive forever, since MPI (or a GPU) may
// still write into or read from them until the process ends.
template <class T>
void leak(T&& buffer) {
  new std::decay_t<T>(std::forward<T>(buffer));  // NOLINT: intentional
}

}  // namespace onestep::pipeline::mpi_detail
