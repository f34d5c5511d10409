// The NCCL transport: one process per GPU and one stage per process (mpirun -np P, like the MPI transport), with
// the activations and gradients moving GPU to GPU through NCCL instead of through host memory. Built when MPI, the
// CUDA backend and nccl.h are found (ONESTEP_HAVE_NCCL=1); libnccl.so.2 itself is loaded when the first transport
// is made, so that onestep starts on machines without it (only this transport then refuses, naming the library).
//
// The protocol is the staged transport's (mpi/staged_transport.h: MPI headers with the tags, payloads matched in
// order per direction, receives queued as soon as their header arrives); this file is its data plane on NCCL:
// - every ordered pair of stages that talks (neighbours both ways, the first and last stage both ways for the tied
//   embedding, every stage to stage 0 for the whole-model gather) has a 2-rank communicator of its own, used in one
//   direction only, with a CUDA stream of its own on each side: sends to a peer never wait behind receives from it
//   or behind another pair's traffic, whatever order the two sides' schedules interleave them in (one communicator
//   per pair would deadlock when both sides send before either receives);
// - a send copies the data into a staging buffer on the caller's stream and queues ncclSend on the pair's stream
//   after that copy; a receive lands in a staging buffer and the caller's stream waits for it, then copies it out.
//   Nothing on the host waits for the GPU.
// Every pointer passed to send/recv is device memory of this process's GPU, ordered on the calling thread's
// default stream (cudaStreamPerThread). The caller selects the GPU (cudaSetDevice) before making the transport.
#pragma once
#include <memory>
#include <vector>

#include "pipeline/transport.h"

namespace onestep::pipeline {

// Collective over MPI_COMM_WORLD: every rank must call it at the same point. Throws Error(bad_input) when
// libnccl.so.2 cannot be loaded.
std::unique_ptr<Transport> make_nccl_transport();

// What one GPU can check of NCCL (scripts/gpu-check.sh, through tests/cuda): the library's version code
// (e.g. 22807 for 2.28.7), and n floats sent by a one-rank communicator to itself on the current GPU, through
// the same loaded entry points the transport uses. Throws Error(bad_input) when libnccl.so.2 does not load.
int nccl_version();
std::vector<float> nccl_loopback(const std::vector<float>& data);

}  // namespace onestep::pipeline
