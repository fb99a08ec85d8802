# Extra ctest entries of the io area (included by tests/CMakeLists.txt after test_io is defined):
#   * a fixture-generating setup test (tools/make_grok1_checkpoint.py into the build tree),
#     required by every test_io case, and a cleanup test that deletes the 318 GB-apparent sparse
#     checkpoint afterwards;
#   * the Python test of the generator's byte stream (pickletools listing, both writers agree);
#   * the libFuzzer run of the pickle reader (label `fuzz`, 60 s, skipped without clang/libFuzzer).

set(MOE_IO_PYTHON "${MOE_PYTHON3}")  # Debian's python3 (top-level CMakeLists)
if(NOT MOE_IO_PYTHON)
  find_program(MOE_IO_PYTHON_ANY python3)
  set(MOE_IO_PYTHON "${MOE_IO_PYTHON_ANY}")
endif()

set(MOE_IO_FIXTURES_DIR "${CMAKE_CURRENT_BINARY_DIR}/io_fixtures")

if(TARGET test_io)
  target_compile_definitions(test_io PRIVATE MOE_IO_FIXTURES="${MOE_IO_FIXTURES_DIR}")

  add_test(NAME "io.fixtures: generate checkpoints"
           COMMAND "${MOE_IO_PYTHON}" "${CMAKE_CURRENT_SOURCE_DIR}/io/make_io_fixtures.py"
                   "${MOE_IO_FIXTURES_DIR}")
  set_tests_properties("io.fixtures: generate checkpoints"
                       PROPERTIES FIXTURES_SETUP moe_io_fixtures LABELS io TIMEOUT 300)
  add_test(NAME "io.fixtures: remove the sparse 314B checkpoint"
           COMMAND "${CMAKE_COMMAND}" -E rm -rf "${MOE_IO_FIXTURES_DIR}/full_sparse")
  set_tests_properties("io.fixtures: remove the sparse 314B checkpoint"
                       PROPERTIES FIXTURES_CLEANUP moe_io_fixtures LABELS io)

  # The test cases of test_io are discovered at test time (catch_discover_tests); their names are
  # in ${test_io_TESTS} once the discovery include file has run, so add the fixture dependency
  # from a second include file that ctest reads after it.
  set(_io_props "${CMAKE_CURRENT_BINARY_DIR}/test_io_fixture_properties.cmake")
  file(WRITE "${_io_props}"
       "if(test_io_TESTS)\n"
       "  set_tests_properties(\${test_io_TESTS} PROPERTIES FIXTURES_REQUIRED moe_io_fixtures)\n"
       "endif()\n")
  set_property(DIRECTORY APPEND PROPERTY TEST_INCLUDE_FILES "${_io_props}")
endif()

add_test(NAME "io.generator: byte stream (pickletools)"
         COMMAND "${MOE_IO_PYTHON}" "${PROJECT_SOURCE_DIR}/tools/test_checkpoint_stream.py")
set_tests_properties("io.generator: byte stream (pickletools)"
                     PROPERTIES LABELS io TIMEOUT 300)

# libFuzzer: a separate clang-built project under fuzz/ (the main build uses g++). fuzz/run.sh
# configures, builds and runs it; it exits 77 (skipped) when clang or libFuzzer is missing.
add_test(NAME "io.fuzz: pickle reader (libFuzzer, 60 s)"
         COMMAND "${PROJECT_SOURCE_DIR}/fuzz/run.sh" 60 "${CMAKE_CURRENT_BINARY_DIR}/fuzz")
set_tests_properties("io.fuzz: pickle reader (libFuzzer, 60 s)"
                     PROPERTIES LABELS "io;fuzz" SKIP_RETURN_CODE 77 TIMEOUT 900
                                ENVIRONMENT "MOE_PYTHON=${MOE_IO_PYTHON}")

# Hugging Face checkpoints (tests/io/test_safetensors.cpp, test_hf_config.cpp): a fixture step
# writes tiny checkpoints of each family with tools/make_hf_checkpoint.py; every test_io case
# requires it (a second properties file, read after the one above, names both fixtures); the
# float64 reference (tools/hf_reference.py) checks itself on them; libFuzzer runs the safetensors
# header parser (its own fuzz build directory, so that it never races the pickle run).
set(MOE_HF_FIXTURES_DIR "${MOE_IO_FIXTURES_DIR}/hf")
add_test(NAME "io.fixtures: generate Hugging Face checkpoints"
         COMMAND "${MOE_IO_PYTHON}" "${PROJECT_SOURCE_DIR}/tools/make_hf_checkpoint.py"
                 --fixtures "${MOE_HF_FIXTURES_DIR}")
set_tests_properties("io.fixtures: generate Hugging Face checkpoints"
                     PROPERTIES FIXTURES_SETUP moe_hf_fixtures LABELS io TIMEOUT 300)
# ... and the float64 reference's logits and greedy continuations for them (test_hf_model.cpp).
add_test(NAME "io.fixtures: Hugging Face reference logits"
         COMMAND "${MOE_IO_PYTHON}" "${PROJECT_SOURCE_DIR}/tools/hf_reference.py"
                 --write-references "${MOE_HF_FIXTURES_DIR}")
set_tests_properties("io.fixtures: Hugging Face reference logits"
                     PROPERTIES FIXTURES_SETUP moe_hf_fixtures LABELS io TIMEOUT 300
                                DEPENDS "io.fixtures: generate Hugging Face checkpoints")
add_test(NAME "io.fixtures: remove the sparse Mixtral 8x7B checkpoint"
         COMMAND "${CMAKE_COMMAND}" -E rm -rf "${MOE_HF_FIXTURES_DIR}/mixtral_8x7b_sparse")
set_tests_properties("io.fixtures: remove the sparse Mixtral 8x7B checkpoint"
                     PROPERTIES FIXTURES_CLEANUP moe_hf_fixtures LABELS io)
if(TARGET test_io)
  set(_hf_props "${CMAKE_CURRENT_BINARY_DIR}/test_io_hf_fixture_properties.cmake")
  file(WRITE "${_hf_props}"
       "if(test_io_TESTS)\n"
       "  set_tests_properties(\${test_io_TESTS} PROPERTIES FIXTURES_REQUIRED\n"
       "                       \"moe_io_fixtures;moe_hf_fixtures\")\n"
       "endif()\n")
  set_property(DIRECTORY APPEND PROPERTY TEST_INCLUDE_FILES "${_hf_props}")
endif()
add_test(NAME "io.hf_reference: float64 reference self-checks"
         COMMAND "${MOE_IO_PYTHON}" "${PROJECT_SOURCE_DIR}/tools/hf_reference.py" --self-test
                 "${MOE_HF_FIXTURES_DIR}")
set_tests_properties("io.hf_reference: float64 reference self-checks"
                     PROPERTIES FIXTURES_REQUIRED moe_hf_fixtures LABELS io TIMEOUT 300)
add_test(NAME "io.fuzz: safetensors reader (libFuzzer, 60 s)"
         COMMAND "${PROJECT_SOURCE_DIR}/fuzz/run.sh" 60 "${CMAKE_CURRENT_BINARY_DIR}/fuzz_safetensors"
                 safetensors)
set_tests_properties("io.fuzz: safetensors reader (libFuzzer, 60 s)"
                     PROPERTIES LABELS "io;fuzz" SKIP_RETURN_CODE 77 TIMEOUT 900
                                ENVIRONMENT "MOE_PYTHON=${MOE_IO_PYTHON}")
