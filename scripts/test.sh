#!/usr/bin/env bash
# The whole test suite: installs dependencies, checks formatting, builds with
# clang, AddressSanitizer + UndefinedBehaviorSanitizer and runs every test with
# ctest (ctest itself starts throwaway PostgreSQL and MariaDB servers for the
# tests that need them), then the threaded tests under ThreadSanitizer.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

scripts/install-deps.sh
scripts/check-format.sh

# The sanitizer builds use clang (with lld): at -O0 with the sanitizers it
# compiles this tree in about 0.6x GCC's time. The demo and the benchmarks
# build with the default compiler (GCC), so both compilers' warnings hold.
# The test binaries share one precompiled header (BACKFLOW_PCH), which ccache
# caches only with this sloppiness.
compilers=(-DCMAKE_CXX_COMPILER="${BACKFLOW_TEST_CXX:-clang++-14}" -DBACKFLOW_PCH=ON)
export CCACHE_SLOPPINESS="${CCACHE_SLOPPINESS:-pch_defines,time_macros,include_file_mtime,include_file_ctime}"

build="${BACKFLOW_TEST_BUILD_DIR:-build-asan}"
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Debug -DBACKFLOW_SANITIZE=ON "${compilers[@]}" >/dev/null
cmake --build "$build"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
ctest --test-dir "$build" --output-on-failure -j2 --timeout 600

# ThreadSanitizer on the code that runs threads (loopback servers, HTTP client).
tsan="${BACKFLOW_TSAN_BUILD_DIR:-build-tsan}"
tsan_tests=(testing_test curl_http_client_test http_stream_test webhook_destination_test delivery_test
  engine_test api_test service_test alerts_test parallel_reader_test storage_test
  query_cancel_watcher_test)
cmake -S . -B "$tsan" -G Ninja -DCMAKE_BUILD_TYPE=Debug -DBACKFLOW_TSAN=ON "${compilers[@]}" >/dev/null
cmake --build "$tsan" --target "${tsan_tests[@]}"
pattern="^($(IFS='|'; echo "${tsan_tests[*]}"))\$"
TSAN_OPTIONS="${TSAN_OPTIONS:-halt_on_error=1 second_deadlock_stack=1}" \
  ctest --test-dir "$tsan" --output-on-failure -R "$pattern" --timeout 600
