// Tests of the CPU emulation of NCCL (tests/cuda_emu/nccl.cpp) in one process: what a one-rank communicator moves,
// and the misuses that hang or corrupt on a GPU failing loudly. Its multi-process side runs in ctest
// cuda.nccl_pipeline (the nccl transport's pipelines under mpirun, compared with the in-process ones).
#include <gtest/gtest.h>
#include <mpi.h>
#include <nccl.h>

#include <cstdlib>
#include <vector>

#include "cuda_runtime_api.h"

namespace {
// Two emulated devices, set before the runtime's first call reads them (its values are cached).
const bool kEnvironment = setenv("CUDA_EMU_DEVICES", "2", 1) == 0;

class NcclEmu : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(kEnvironment);
    GTEST_FLAG_SET(death_test_style, "threadsafe");  // a fresh process per death test: no fork beside threads
    ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
    ncclUniqueId id;
    ASSERT_EQ(ncclGetUniqueId(&id), ncclSuccess);
    ASSERT_EQ(ncclCommInitRank(&comm, 1, id, 0), ncclSuccess);
    ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
  }
  void TearDown() override {
    if (comm) {
      EXPECT_EQ(ncclCommDestroy(comm), ncclSuccess);
    }
    cudaStreamDestroy(stream);
  }
  float* device_floats(const std::vector<float>& v) {
    float* p = nullptr;
    EXPECT_EQ(cudaMalloc(&p, sizeof(float) * v.size()), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(p, v.data(), sizeof(float) * v.size(), cudaMemcpyHostToDevice), cudaSuccess);
    return p;
  }
  std::vector<float> host_floats(const float* p, size_t n) {
    std::vector<float> v(n);
    EXPECT_EQ(cudaMemcpy(v.data(), p, sizeof(float) * n, cudaMemcpyDeviceToHost), cudaSuccess);
    return v;
  }
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;
};

TEST_F(NcclEmu, SendsToItselfArriveInOrderWithinAGroup) {
  float* a = device_floats({1, 2, 3});
  float* b = device_floats({4, 5});
  float* x = device_floats({0, 0, 0});
  float* y = device_floats({0, 0});
  ASSERT_EQ(ncclGroupStart(), ncclSuccess);
  ASSERT_EQ(ncclSend(a, 3, ncclFloat32, 0, comm, stream), ncclSuccess);
  ASSERT_EQ(ncclSend(b, 2, ncclFloat32, 0, comm, stream), ncclSuccess);
  ASSERT_EQ(ncclRecv(x, 3, ncclFloat32, 0, comm, stream), ncclSuccess);
  ASSERT_EQ(ncclRecv(y, 2, ncclFloat32, 0, comm, stream), ncclSuccess);
  ASSERT_EQ(ncclGroupEnd(), ncclSuccess);
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  EXPECT_EQ(host_floats(x, 3), (std::vector<float>{1, 2, 3}));
  EXPECT_EQ(host_floats(y, 2), (std::vector<float>{4, 5}));
  for (float* p : {a, b, x, y}) cudaFree(p);
}

TEST_F(NcclEmu, NestedGroupsRunAtTheOutermostEnd) {
  float* a = device_floats({7});
  float* x = device_floats({0});
  ASSERT_EQ(ncclGroupStart(), ncclSuccess);
  ASSERT_EQ(ncclGroupStart(), ncclSuccess);
  ASSERT_EQ(ncclSend(a, 1, ncclFloat32, 0, comm, stream), ncclSuccess);
  ASSERT_EQ(ncclGroupEnd(), ncclSuccess);  // inner: the send to itself still waits for its receive
  ASSERT_EQ(ncclRecv(x, 1, ncclFloat32, 0, comm, stream), ncclSuccess);
  ASSERT_EQ(ncclGroupEnd(), ncclSuccess);
  EXPECT_EQ(host_floats(x, 1), std::vector<float>{7});
  cudaFree(a), cudaFree(x);
}

TEST_F(NcclEmu, BadIdsAndUnbalancedGroupsAreErrors) {
  ncclUniqueId junk{};
  ncclComm_t c = nullptr;
  EXPECT_EQ(ncclCommInitRank(&c, 1, junk, 0), ncclInvalidArgument);
  ncclUniqueId id;
  ASSERT_EQ(ncclGetUniqueId(&id), ncclSuccess);
  EXPECT_EQ(ncclCommInitRank(&c, 2, id, 2), ncclInvalidArgument);  // rank outside the communicator
  EXPECT_EQ(ncclGroupEnd(), ncclInvalidUsage);
  int v = 0;
  EXPECT_EQ(ncclGetVersion(&v), ncclSuccess);
  EXPECT_EQ(v, NCCL_VERSION_CODE);
}

TEST_F(NcclEmu, SendToItselfWithoutItsReceiveDies) {
  float* a = device_floats({1});
  EXPECT_DEATH(ncclSend(a, 1, ncclFloat32, 0, comm, stream), "no receive from itself in the same group");
  EXPECT_DEATH(ncclRecv(a, 1, ncclFloat32, 0, comm, stream), "no send to itself in the same group");
  cudaFree(a);
}

TEST_F(NcclEmu, ReceiveShorterThanItsSendDies) {
  float* a = device_floats({1, 2, 3, 4});
  EXPECT_DEATH(
      {
        ncclGroupStart();
        ncclSend(a, 4, ncclFloat32, 0, comm, stream);
        ncclRecv(a, 3, ncclFloat32, 0, comm, stream);
        ncclGroupEnd();
      },
      "ncclRecv of 12 bytes matched a send of 16");
  cudaFree(a);
}

TEST_F(NcclEmu, BuffersOutsideTheCommunicatorsDeviceDie) {
  std::vector<float> host(4, 0.0f);
  EXPECT_DEATH(ncclSend(host.data(), 4, ncclFloat32, 0, comm, stream), "is not memory of device 0");
  float* a = device_floats({1, 2});
  EXPECT_DEATH(ncclSend(a, 3, ncclFloat32, 0, comm, stream), "the buffer \\(12 bytes\\) is not memory of device 0");
  ASSERT_EQ(cudaSetDevice(1), cudaSuccess);
  float* on_1 = device_floats({1});
  EXPECT_DEATH(ncclSend(on_1, 1, ncclFloat32, 0, comm, stream), "is not memory of device 0");
  cudaFree(on_1);
  cudaSetDevice(0);
  EXPECT_DEATH(ncclRecv(a, 1, ncclFloat32, 1, comm, stream), "peer 1 of a communicator of 1 ranks");
  cudaFree(a);
}

// A communicator whose other member never starts it: on a GPU ncclCommInitRank hangs; here it fails at the deadline.
TEST_F(NcclEmu, AMemberThatNeverJoinsDiesAtTheDeadline) {
  EXPECT_DEATH(
      {
        setenv("CUDA_EMU_NCCL_TIMEOUT_S", "0.5", 1);
        MPI_Init(nullptr, nullptr);
        ncclUniqueId id;
        ncclGetUniqueId(&id);
        ncclComm_t c = nullptr;
        ncclCommInitRank(&c, 2, id, 0);
      },
      "a member never joined: nothing within");
}

}  // namespace
