// The Open MPI transport: one rank per stage (rank r runs stage r), built only when MPI is found
// (ONESTEP_HAVE_MPI=1 is then defined for everything linking onestep_mpi).
//
// Lifetime: MPI is initialised on first use (MPI_Init_thread, MPI_THREAD_SERIALIZED requested: one thread
// at a time calls MPI, not necessarily the main one). When this module initialised MPI, it also ends it at
// process exit: a zero exit status finalises (collective: every rank must get there), a non-zero one leaves
// WITHOUT MPI_Finalize on purpose, so that mpirun sees an improper exit and kills the whole job at once
// instead of the others waiting for the dead rank (measured with Open MPI 4.1: mpirun returns non-zero
// within ~1.5 s of the death; finalising there instead blocks the dying rank in MPI_Finalize until the
// others give up). If the application initialises MPI itself, it owns finalisation and must follow the
// same rule.
#pragma once
#include <memory>
#include <string>

#include "pipeline/transport.h"

namespace onestep::pipeline {

// Collective over MPI_COMM_WORLD (duplicates it): every rank must call it at the same point.
// send(): buffered (copied, MPI_Isend, completed requests reaped on every call; never blocks).
// recv(): polls (~50 us of yields, then sleeps of 50 us doubling to 250 us: no busy core); after
//   peer_timeout_s() throws Error(internal, "stage S: no message from stage P (tag T) within N s; the peer
//   died or hung"). A message of the wrong length is consumed and reported as an internal error.
// Destroy the transport before a successful exit: its destructor waits (same deadline) for sends the peers
// have not received yet, so that MPI_Finalize finds nothing in flight. MPI makes progress only inside
// transport calls (no progress thread).
// start_sum(): MPI_Iallreduce(MPI_SUM) on its own communicator; wait() has the same deadline.
// Messages and sums are limited to 2^31-1 elements each.
std::unique_ptr<Transport> make_mpi_transport();

int mpi_world_size();  // initialise MPI if needed
int mpi_rank();        // initialise MPI if needed
// This rank's place among the ranks on its machine (MPI_COMM_TYPE_SHARED), e.g. to pick its GPU. Collective.
struct HostSlot {
  int local_rank = 0, local_ranks = 1;
  std::string host;
};
HostSlot host_slot();
// True when started by a process manager (OMPI_COMM_WORLD_SIZE, PMIX_RANK, PMI_SIZE or PMI_RANK
// is set); needs no MPI.
bool launched_by_mpirun();

}  // namespace onestep::pipeline
