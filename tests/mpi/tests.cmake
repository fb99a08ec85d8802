# Extra ctest entries of the mpi area (included by tests/CMakeLists.txt when moe::mpi exists):
# grok1 under `mpirun -np 2/4` against one process, and the error cases (test_grok1_mpi.py; each
# mpirun under `timeout`; skipped, exit 77, when mpirun is not installed). Label `mpi`.
if(NOT TARGET grok1 OR NOT MOE_PYTHON3)
  message(STATUS "moe: grok1 or /usr/bin/python3 missing; the mpirun tests are not registered")
  return()
endif()
foreach(case np2 np4 bad_dimension bad_token rank_fails rank_dies)
  add_test(NAME "mpi.grok1.${case}"
           COMMAND "${MOE_PYTHON3}" "${CMAKE_CURRENT_SOURCE_DIR}/mpi/test_grok1_mpi.py"
                   --grok1 $<TARGET_FILE:grok1> --source "${PROJECT_SOURCE_DIR}"
                   --work "${CMAKE_CURRENT_BINARY_DIR}/mpi_work" --case ${case})
  set_tests_properties("mpi.grok1.${case}" PROPERTIES LABELS "mpi" TIMEOUT 300 SKIP_RETURN_CODE 77
                                                      RESOURCE_LOCK moe_mpi_work)
endforeach()
