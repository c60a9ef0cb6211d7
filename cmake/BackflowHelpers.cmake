# backflow_cc_library(NAME name SRCS ... DEPS ...): one static library per area.
function(backflow_cc_library)
  cmake_parse_arguments(ARG "" "NAME" "SRCS;DEPS" ${ARGN})
  add_library(${ARG_NAME} STATIC ${ARG_SRCS})
  target_link_libraries(${ARG_NAME} PUBLIC ${ARG_DEPS})
endfunction()

# backflow_cc_test(NAME name SRCS ... DEPS ... [LABELS ...] [FIXTURES ...]):
# a GoogleTest binary registered with ctest as one test.
function(backflow_cc_test)
  cmake_parse_arguments(ARG "" "NAME;TIMEOUT" "SRCS;DEPS;LABELS;FIXTURES" ${ARGN})
  add_executable(${ARG_NAME} ${ARG_SRCS})
  target_link_libraries(${ARG_NAME} PRIVATE ${ARG_DEPS} GTest::gtest GTest::gmock GTest::gtest_main)
  if(TARGET backflow_test_pch)
    target_precompile_headers(${ARG_NAME} REUSE_FROM backflow_test_pch)
  endif()
  add_test(NAME ${ARG_NAME} COMMAND ${ARG_NAME})
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 300)
  endif()
  set_tests_properties(${ARG_NAME} PROPERTIES TIMEOUT ${ARG_TIMEOUT}
    ENVIRONMENT "BACKFLOW_BINARY=$<TARGET_FILE:backflow>;BACKFLOW_SOURCE_DIR=${PROJECT_SOURCE_DIR};BACKFLOW_TEST_PG_DIR=${PROJECT_BINARY_DIR}/pg-test")
  if(ARG_LABELS)
    set_tests_properties(${ARG_NAME} PROPERTIES LABELS "${ARG_LABELS}")
  endif()
  if(ARG_FIXTURES)
    set_tests_properties(${ARG_NAME} PROPERTIES FIXTURES_REQUIRED "${ARG_FIXTURES}")
  endif()
endfunction()

# backflow_warehouse_e2e_test(NAME name SRCS ... DEPS ... [FIXTURES ...]): an
# end-to-end test of a warehouse source that runs the real backflow binary,
# with the shared helpers of tests/e2e (cli_runner, warehouse_e2e).
function(backflow_warehouse_e2e_test)
  cmake_parse_arguments(ARG "" "NAME" "SRCS;DEPS;FIXTURES" ${ARGN})
  backflow_cc_test(NAME ${ARG_NAME}
    SRCS ${ARG_SRCS} ${PROJECT_SOURCE_DIR}/tests/e2e/cli_runner.cc
         ${PROJECT_SOURCE_DIR}/tests/e2e/warehouse_e2e.cc
    DEPS ${ARG_DEPS} backflow_testing nlohmann_json::nlohmann_json
    FIXTURES ${ARG_FIXTURES})
  target_include_directories(${ARG_NAME} PRIVATE ${PROJECT_SOURCE_DIR}/tests/e2e)
  add_dependencies(${ARG_NAME} backflow)
endfunction()
