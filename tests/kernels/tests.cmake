# test_kernels_portable: the same kernel tests compiled WITHOUT -march flags, so the portable
# xsimd path (SSE2 on x86-64) of the matmul kernels is built and checked on every machine, next to
# the -march=native build in test_kernels.
file(GLOB _kernel_sources CONFIGURE_DEPENDS "${CMAKE_CURRENT_SOURCE_DIR}/kernels/*.cpp")
if(_kernel_sources)
  add_executable(test_kernels_portable ${_kernel_sources})
  target_link_libraries(test_kernels_portable PRIVATE moe::moe moe_support Catch2::Catch2WithMain)
  target_include_directories(test_kernels_portable PRIVATE "${CMAKE_CURRENT_SOURCE_DIR}")
  target_compile_definitions(test_kernels_portable PRIVATE MOE_TEST_PORTABLE=1)
  target_compile_options(
    test_kernels_portable
    PRIVATE -Wall -Wextra -Wpedantic -Wshadow $<$<BOOL:${MOE_WARNINGS_AS_ERRORS}>:-Werror>
            $<$<CXX_COMPILER_ID:GNU>:-Wno-restrict>)
  target_compile_features(test_kernels_portable PRIVATE cxx_std_20)
  catch_discover_tests(test_kernels_portable TEST_PREFIX "kernels-portable: "
                       PROPERTIES LABELS "kernels")
endif()

# test_kernels_avx2: on a host whose -march=native has AVX-512 (where test_kernels compiles the
# AVX-512 kernels), the matmul tests are built once more for AVX2 + FMA, so the kernels that only
# an AVX2 host runs (the 8-lane xsimd instantiations with their 16-register blocking, the AVX2
# int8-activation kernel) are checked on every CI host too. On an AVX2 host test_kernels already
# is that build.
include(CheckCXXSourceCompiles)
set(CMAKE_REQUIRED_FLAGS "-march=native")
check_cxx_source_compiles("#ifndef __AVX512F__\n#error no AVX-512\n#endif\nint main() {}"
                          MOE_NATIVE_HAS_AVX512)
unset(CMAKE_REQUIRED_FLAGS)
if(MOE_NATIVE AND MOE_NATIVE_HAS_AVX512)
  set(_avx2_sources "${CMAKE_CURRENT_SOURCE_DIR}/kernels/test_matmul.cpp"
                    "${CMAKE_CURRENT_SOURCE_DIR}/kernels/test_matmul_int8act_avx2.cpp")
  add_executable(test_kernels_avx2 ${_avx2_sources})
  target_link_libraries(test_kernels_avx2 PRIVATE moe::moe moe_support Catch2::Catch2WithMain)
  target_include_directories(test_kernels_avx2 PRIVATE "${CMAKE_CURRENT_SOURCE_DIR}")
  target_compile_options(
    test_kernels_avx2
    PRIVATE -mavx2 -mfma -mf16c -Wall -Wextra -Wpedantic -Wshadow
            $<$<BOOL:${MOE_WARNINGS_AS_ERRORS}>:-Werror> $<$<CXX_COMPILER_ID:GNU>:-Wno-restrict>)
  target_compile_features(test_kernels_avx2 PRIVATE cxx_std_20)
  catch_discover_tests(test_kernels_avx2 TEST_PREFIX "kernels-avx2: " PROPERTIES LABELS "kernels")
endif()
