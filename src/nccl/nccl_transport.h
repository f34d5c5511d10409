// The NCCL transport: one process per GPU and one stage per process (mpirun -np P, like the MPI transport), with
// the activations and gradients moving GPU to GPU through NCCL instead of through host memory. Built when MPI, the
// CUDA backend and nccl.h are found (ONESTEP_HAVE_NCCL=1); libnccl.so.2 itself is loaded when the first transport
// is made, so that onestep starts on machines without it (only this transport then refuses, naming the library).
//
// How a message travels (NCCL has no tags and matches sends to receives in issue order, per communicator):
// - Every ordered pair of stages that talks (neighbours both ways, the first and last stage both ways for the tied
//   embedding, every stage to stage 0 for the whole-model gather) has a 2-rank communicator of its own, used in one
//   direction only, with a CUDA stream of its own on each side. Sends to one peer therefore never wait behind
//   receives from it or behind another pair's traffic, whatever order the two sides' schedules interleave them in
//   (a single communicator per pair deadlocks when both sides send before either receives).
// - send(): copies the data into a staging buffer on the caller's stream (the caller may reuse its buffer at once),
//   queues ncclSend on the pair's stream after that copy, then sends a small MPI header (the message's tag and
//   length). Nothing on the host waits for the GPU.
// - The receiver drains every header that has arrived at each call and at once queues ncclRecv into a staging
//   buffer, in header order, which is the sender's send order: NCCL's matching then pairs them correctly. recv()
//   waits (on the host, with the peer timeout) only for the wanted header; the caller's stream then waits for that
//   receive and copies the message out. So a receive queued early never blocks a stage, and a sender's kernel never
//   waits on a receiver that has not yet seen its header for long: any transport call drains it.
// - The all-stage sums (host vectors of doubles) go through the MPI transport.
// Every pointer passed to send/recv is device memory of this process's GPU, ordered on the calling thread's
// default stream (cudaStreamPerThread). The caller selects the GPU (cudaSetDevice) before making the transport.
#pragma once
#include <memory>

#include "pipeline/transport.h"

namespace onestep::pipeline {

// Collective over MPI_COMM_WORLD: every rank must call it at the same point. Throws Error(bad_input) when
// libnccl.so.2 cannot be loaded.
std::unique_ptr<Transport> make_nccl_transport();

}  // namespace onestep::pipeline
