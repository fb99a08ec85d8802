# Extra ctest entries of the train_example area (included by tests/CMakeLists.txt after
# test_train_example is defined):
#   * a fixture-generating setup test: a synthetic corpus and its tokenizer
#     (tests/train_example/make_fixtures.py, scripts/train_tokenizer), required by every case;
#   * the end-to-end runs of the `train` binary (tests/train_example/test_train_cli.py): loss
#     falls, resume equals an uninterrupted run bit for bit, the export runs in `grok1`, and every
#     bad input is a clear error that overwrites nothing.
set(MOE_TRAIN_FIXTURES_DIR "${CMAKE_CURRENT_BINARY_DIR}/train_example_fixtures")

if(TARGET test_train_example AND MOE_PYTHON3)
  target_compile_definitions(test_train_example PRIVATE MOE_TRAIN_FIXTURES="${MOE_TRAIN_FIXTURES_DIR}")
  add_test(NAME "train_example.fixtures: synthetic corpus and tokenizer"
           COMMAND "${MOE_PYTHON3}" "${CMAKE_CURRENT_SOURCE_DIR}/train_example/make_fixtures.py"
                   "${MOE_TRAIN_FIXTURES_DIR}" "${PROJECT_SOURCE_DIR}")
  set_tests_properties("train_example.fixtures: synthetic corpus and tokenizer"
                       PROPERTIES FIXTURES_SETUP moe_train_fixtures LABELS train_example TIMEOUT 120)
  # Test names are known only after catch_discover_tests ran (see tests/io/tests.cmake).
  set(_train_props "${CMAKE_CURRENT_BINARY_DIR}/test_train_example_fixture_properties.cmake")
  file(WRITE "${_train_props}"
       "if(test_train_example_TESTS)\n"
       "  set_tests_properties(\${test_train_example_TESTS} PROPERTIES FIXTURES_REQUIRED moe_train_fixtures)\n"
       "endif()\n")
  set_property(DIRECTORY APPEND PROPERTY TEST_INCLUDE_FILES "${_train_props}")

  if(TARGET train AND TARGET grok1)
    foreach(case learns resume threads interrupt export errors)
      add_test(NAME "train_example.cli: ${case}"
               COMMAND "${MOE_PYTHON3}" "${CMAKE_CURRENT_SOURCE_DIR}/train_example/test_train_cli.py"
                       --train $<TARGET_FILE:train> --grok1 $<TARGET_FILE:grok1>
                       --fixtures "${MOE_TRAIN_FIXTURES_DIR}"
                       --work "${CMAKE_CURRENT_BINARY_DIR}/train_example_cli/${case}" --case ${case})
      set_tests_properties("train_example.cli: ${case}"
                           PROPERTIES FIXTURES_REQUIRED moe_train_fixtures LABELS "train_example;e2e"
                                      TIMEOUT 600)
    endforeach()
  endif()
endif()

if(TARGET test_train_example)
  # The model is example code: its tests include examples/train/ directly.
  target_include_directories(test_train_example PRIVATE "${PROJECT_SOURCE_DIR}/examples/train")
endif()
