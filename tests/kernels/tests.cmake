# Extra builds of the kernel tests with other instruction sets than test_kernels' -march=native,
# so that kernels this host would not compile are built and checked here too.
#
# moe_add_kernel_test_build(<name> <ctest prefix> FLAGS ... DEFINES ... SOURCES ...)
function(moe_add_kernel_test_build name prefix)
  cmake_parse_arguments(ARG "" "" "FLAGS;DEFINES;SOURCES" ${ARGN})
  add_executable(${name} ${ARG_SOURCES})
  target_link_libraries(${name} PRIVATE moe::moe moe_support Catch2::Catch2WithMain)
  target_include_directories(${name} PRIVATE "${CMAKE_CURRENT_SOURCE_DIR}")
  target_compile_definitions(${name} PRIVATE ${ARG_DEFINES})
  target_compile_options(
    ${name} PRIVATE ${ARG_FLAGS} -Wall -Wextra -Wpedantic -Wshadow
                    $<$<BOOL:${MOE_WARNINGS_AS_ERRORS}>:-Werror> $<$<CXX_COMPILER_ID:GNU>:-Wno-restrict>)
  target_compile_features(${name} PRIVATE cxx_std_20)
  catch_discover_tests(${name} TEST_PREFIX "${prefix}: " PROPERTIES LABELS "kernels")
endfunction()

# test_kernels_portable: every kernel test compiled WITHOUT -march flags, so the portable xsimd
# path (SSE2 on x86-64) of the matmul kernels is built and checked on every machine.
file(GLOB _kernel_sources CONFIGURE_DEPENDS "${CMAKE_CURRENT_SOURCE_DIR}/kernels/*.cpp")
if(_kernel_sources)
  moe_add_kernel_test_build(test_kernels_portable "kernels-portable" DEFINES MOE_TEST_PORTABLE=1
                            SOURCES ${_kernel_sources})
endif()

# test_kernels_avx2: on a host whose -march=native has AVX-512 (where test_kernels compiles the
# AVX-512 kernels), the matmul tests are built once more for AVX2 + FMA, so the kernels that only
# an AVX2 host runs (the 8-lane xsimd instantiations with their 16-register blocking, the AVX2
# int8-activation kernel) are checked on every CI host too. On an AVX2 host test_kernels already
# is that build.
if(MOE_NATIVE)
  include(CheckCXXSourceCompiles)
  set(CMAKE_REQUIRED_FLAGS "-march=native")
  check_cxx_source_compiles("#ifndef __AVX512F__\n#error no AVX-512\n#endif\nint main() {}"
                            MOE_NATIVE_HAS_AVX512)
  unset(CMAKE_REQUIRED_FLAGS)
endif()
if(MOE_NATIVE AND MOE_NATIVE_HAS_AVX512)  # the cached result may outlive MOE_NATIVE=ON
  moe_add_kernel_test_build(
    test_kernels_avx2 "kernels-avx2" FLAGS -mavx2 -mfma -mf16c
    SOURCES "${CMAKE_CURRENT_SOURCE_DIR}/kernels/test_matmul.cpp"
            "${CMAKE_CURRENT_SOURCE_DIR}/kernels/test_matmul_int8act_avx2.cpp")
endif()
