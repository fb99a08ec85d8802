# End-to-end runs of the example binaries (included by tests/CMakeLists.txt).
if(NOT TARGET grok1)
  return()
endif()
if(NOT MOE_PYTHON3)
  message(STATUS "moe: no /usr/bin/python3; grok1 end-to-end tests are not registered")
  return()
endif()
set(_work "${CMAKE_CURRENT_BINARY_DIR}/e2e")
set(_script "${CMAKE_CURRENT_SOURCE_DIR}/e2e/test_grok1_cli.py")
foreach(case logits greedy errors demo trained)
  add_test(NAME "grok1.${case}"
           COMMAND "${MOE_PYTHON3}" "${_script}" --grok1 $<TARGET_FILE:grok1>
                   --source "${PROJECT_SOURCE_DIR}" --work "${_work}/${case}"
                   --demo-checkpoint "${MOE_DEMO_CHECKPOINT}" --case ${case})
  set_tests_properties("grok1.${case}" PROPERTIES LABELS "e2e" TIMEOUT 600)
endforeach()
add_test(NAME "grok1.sparse314b: one token through the 314B shapes"
         COMMAND "${MOE_PYTHON3}" "${_script}" --grok1 $<TARGET_FILE:grok1>
                 --source "${PROJECT_SOURCE_DIR}" --work "${_work}/sparse314b" --case sparse314b)
set_tests_properties("grok1.sparse314b: one token through the 314B shapes"
                     PROPERTIES LABELS "e2e;slow" TIMEOUT 3600)
# 13 GB written to MOE_BIG_DIR (default /work/tmp, deleted afterwards); ~10-20 min.
set(MOE_BIG_DIR "/work/tmp" CACHE PATH "Where slow tests write multi-GB checkpoints")
add_test(NAME "grok1.budget: a 13 GB full-width checkpoint under --ram-budget 4G"
         COMMAND "${MOE_PYTHON3}" "${_script}" --grok1 $<TARGET_FILE:grok1>
                 --source "${PROJECT_SOURCE_DIR}" --work "${_work}/budget" --case budget
                 --big-dir "${MOE_BIG_DIR}")
set_tests_properties("grok1.budget: a 13 GB full-width checkpoint under --ram-budget 4G"
                     PROPERTIES LABELS "e2e;slow" TIMEOUT 7200)

# examples/grok1_random: builds a Grok-1-shaped decoder from components with random weights and
# checks that it agrees with make_model() on the first generated token.
if(TARGET grok1_random)
  add_test(NAME "examples.grok1_random" COMMAND grok1_random 8)
  set_tests_properties("examples.grok1_random" PROPERTIES LABELS "e2e" TIMEOUT 300)
endif()

# examples/train_minimal: the smallest training loop (any preset-composed decoder, AdamW); it
# exits non-zero unless the loss fell below 0.5.
if(TARGET train_minimal)
  add_test(NAME "examples.train_minimal" COMMAND train_minimal 150)
  set_tests_properties("examples.train_minimal" PROPERTIES LABELS "e2e;train" TIMEOUT 600)
endif()

# grok1 --perplexity / --activations int8 on the trained model (examples/data/austen-moe) over a
# held-out Austen passage: exact mode equals a float64 reference, int8 activations stay within 2 %
# of its perplexity (tests/e2e/test_grok1_perplexity.py says why).
if(TARGET moe_tokenizer)
  foreach(case exact int8 errors)
    add_test(NAME "grok1.perplexity.${case}"
             COMMAND "${MOE_PYTHON3}" "${CMAKE_CURRENT_SOURCE_DIR}/e2e/test_grok1_perplexity.py"
                     --grok1 $<TARGET_FILE:grok1> --source "${PROJECT_SOURCE_DIR}" --case ${case})
    set_tests_properties("grok1.perplexity.${case}" PROPERTIES LABELS "e2e" TIMEOUT 300)
  endforeach()
endif()
