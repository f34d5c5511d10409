// CPU emulation of CUDA (tests/cuda_emu): the order in which device work runs. By default every operation runs
// when it is issued, on the issuing thread. With CUDA_EMU_STREAMS=async each stream is a worker thread that runs
// its operations in issue order, as a GPU does: the host runs ahead, the streams run side by side, and only
// events, synchronizations and blocking copies order them, so a missing one shows as a wrong or racy result.
#pragma once
#include <functional>

#include "cuda_runtime_api.h"

namespace emu {
bool async_streams();
// Runs op on stream s (nullptr and cudaStreamPerThread: the calling thread's own stream), after everything
// issued to s before; in the default mode, now.
void enqueue(cudaStream_t s, std::function<void()> op);
void wait_stream(cudaStream_t s);  // until everything issued to s so far has run
bool stream_idle(cudaStream_t s);
void wait_all_streams();
cudaStream_t create_stream();
void destroy_stream(cudaStream_t s);  // after its work
}  // namespace emu
