# ONESTEP_CUDA_EMULATION: the CUDA backend (src/kernels/cuda) built as host C++ against the CPU emulation of the
# CUDA runtime, WMMA and cuBLAS in this folder. Each .cu/.cuh is rewritten at build time (rewrite_cuda.py: kernel
# launches and __shared__ declarations) into ${CMAKE_BINARY_DIR}/cuda_emu/kernels/cuda, which comes first on the
# include path so that the rewritten headers are the ones included.
find_package(Python3 REQUIRED COMPONENTS Interpreter)
find_package(Threads REQUIRED)
set(emu_dir ${CMAKE_SOURCE_DIR}/tests/cuda_emu)
add_library(cuda_emu STATIC ${emu_dir}/runtime.cpp ${emu_dir}/streams.cpp ${emu_dir}/launch.cpp ${emu_dir}/cublas.cpp)
target_include_directories(cuda_emu PUBLIC ${emu_dir}/include PRIVATE ${OPENBLAS_INCLUDE_DIR} ${CMAKE_SOURCE_DIR}/src)  # core/env.h
target_link_libraries(cuda_emu PUBLIC ${OPENBLAS_LIB} Threads::Threads)

set(emu_gen ${CMAKE_BINARY_DIR}/cuda_emu)
file(GLOB emu_cuda_files CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/src/kernels/cuda/*.cu ${CMAKE_SOURCE_DIR}/src/kernels/cuda/*.cuh)
set(emu_outputs)
foreach(f ${emu_cuda_files})
  get_filename_component(name ${f} NAME)
  string(REGEX REPLACE "\\.cu$" ".cu.cpp" out ${emu_gen}/kernels/cuda/${name})
  add_custom_command(OUTPUT ${out}
                     COMMAND ${Python3_EXECUTABLE} ${emu_dir}/rewrite_cuda.py ${f} ${out}
                     DEPENDS ${f} ${emu_dir}/rewrite_cuda.py
                     COMMENT "cuda_emu: rewriting ${name}" VERBATIM)
  list(APPEND emu_outputs ${out})
endforeach()
file(MAKE_DIRECTORY ${emu_gen}/kernels/cuda)
file(GLOB emu_host_srcs CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/src/kernels/cuda/*.cpp)
add_library(onestep_cuda STATIC ${emu_outputs} ${emu_host_srcs})
target_include_directories(onestep_cuda BEFORE PUBLIC ${emu_gen} ${CMAKE_SOURCE_DIR}/src)
target_link_libraries(onestep_cuda PUBLIC cuda_emu onestep_core)
# Buffer (core/buffer.h) allocates device memory through the (emulated) runtime.
target_link_libraries(onestep_core PUBLIC cuda_emu)
target_compile_definitions(onestep_cuda PRIVATE __CUDA_ARCH__=900)  # the kernels are "device code": the sm_90 paths
target_compile_options(onestep_cuda PRIVATE -Wno-unknown-pragmas -Wno-subobject-linkage)  # nvcc's #pragma unroll; launches capture kernels of anonymous namespaces

# The emulator's own tests (test_cuda_emu.cpp). GTest is found again here: the main CMakeLists finds it only
# after including this file, and add_test needs enable_testing() first.
if(ONESTEP_BUILD_TESTS)
  enable_testing()
  find_package(GTest REQUIRED)
  add_executable(test_cuda_emu ${emu_dir}/test_cuda_emu.cpp)
  target_link_libraries(test_cuda_emu PRIVATE cuda_emu GTest::gtest_main)
  target_compile_definitions(test_cuda_emu PRIVATE EMU_SOURCE_DIR="${emu_dir}" EMU_PYTHON="${Python3_EXECUTABLE}")
  add_test(NAME cuda_emu.self COMMAND test_cuda_emu)
  # Everything the emulated ctest cases run (scripts/test.sh builds this target): test_cuda, the binary and the
  # NCCL emulation's tests add themselves where they are defined.
  add_custom_target(emulation_tests)
  add_dependencies(emulation_tests test_cuda_emu)
  set_tests_properties(cuda_emu.self PROPERTIES ENVIRONMENT "OMP_NUM_THREADS=2;OMP_WAIT_POLICY=PASSIVE")
endif()
