# The emulated NCCL (nccl.cpp, include/nccl.h) for the nccl transport in an ONESTEP_CUDA_EMULATION build: linked
# into the binary (ONESTEP_NCCL_LINKED) instead of loaded from libnccl.so.2, and carried over MPI between processes.
add_library(nccl_emu STATIC ${CMAKE_SOURCE_DIR}/tests/cuda_emu/nccl.cpp)
target_include_directories(nccl_emu PRIVATE ${CMAKE_SOURCE_DIR}/tests/cuda_emu)  # streams.h
target_link_libraries(nccl_emu PUBLIC cuda_emu MPI::MPI_CXX)

# Its own tests in one process (the multi-process side: ctest cuda.nccl_pipeline).
if(ONESTEP_BUILD_TESTS)
  add_executable(test_nccl_emu ${CMAKE_SOURCE_DIR}/tests/cuda_emu/test_nccl_emu.cpp)
  target_link_libraries(test_nccl_emu PRIVATE nccl_emu GTest::gtest_main)
  add_test(NAME cuda_emu.nccl COMMAND test_nccl_emu)
  add_dependencies(emulation_tests test_nccl_emu)
endif()
