# End-to-end runs of the moe-run example (examples/moe_run) on Hugging Face-layout checkpoints
# written by tools/make_hf_checkpoint.py, compared with tools/hf_reference.py (included by
# tests/CMakeLists.txt).
if(NOT TARGET moe_run OR NOT MOE_PYTHON3)
  return()
endif()
set(_work "${CMAKE_CURRENT_BINARY_DIR}/e2e_moe_run")
set(_script "${CMAKE_CURRENT_SOURCE_DIR}/e2e/test_moe_run_cli.py")
set(_cases logits greedy errors)
if(TARGET moe_tokenizer)
  list(APPEND _cases tokenizer)  # --prompt needs moe-run built with SentencePiece
endif()
foreach(case IN LISTS _cases)
  add_test(NAME "moe_run.${case}"
           COMMAND "${MOE_PYTHON3}" "${_script}" --moe-run $<TARGET_FILE:moe_run>
                   --source "${PROJECT_SOURCE_DIR}" --work "${_work}/${case}" --case ${case})
  set_tests_properties("moe_run.${case}" PROPERTIES LABELS "e2e" TIMEOUT 600)
endforeach()
add_test(NAME "moe_run.sparse: one token through the Mixtral 8x7B shapes under --ram-budget 4G"
         COMMAND "${MOE_PYTHON3}" "${_script}" --moe-run $<TARGET_FILE:moe_run>
                 --source "${PROJECT_SOURCE_DIR}" --work "${_work}/sparse" --case sparse)
set_tests_properties("moe_run.sparse: one token through the Mixtral 8x7B shapes under --ram-budget 4G"
                     PROPERTIES LABELS "e2e;slow" TIMEOUT 3600)
