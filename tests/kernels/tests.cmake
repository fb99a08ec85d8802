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
